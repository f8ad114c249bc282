"""The tiny random Stable Diffusion pipeline: real architecture, built offline, deterministic, fast."""

import time
from pathlib import Path

import pytest
import torch
from diffusers import StableDiffusionPipeline

from diffusion_lab.models.tiny_random import build_tiny_random_pipeline



@pytest.fixture(scope="module")
def pipe():
    return build_tiny_random_pipeline(seed=0)


def unet_output(pipe, batch=2):
    generator = torch.Generator().manual_seed(0)
    sample = torch.randn(batch, 4, 16, 16, generator=generator)
    tokens, width = pipe.tokenizer.model_max_length, pipe.unet.config.cross_attention_dim
    text = torch.randn(batch, tokens, width, generator=generator)
    with torch.no_grad():
        return pipe.unet(sample, 500, encoder_hidden_states=text).sample


def test_components_are_configured_like_stable_diffusion(pipe):
    assert isinstance(pipe, StableDiffusionPipeline)
    assert pipe.safety_checker is None and pipe.feature_extractor is None
    config = pipe.scheduler.config
    assert type(pipe.scheduler).__name__ == "DDIMScheduler"
    assert (config.beta_schedule, config.beta_start, config.beta_end) == ("scaled_linear", 0.00085, 0.012)
    assert (config.set_alpha_to_one, config.steps_offset, config.clip_sample) == (False, 1, False)
    assert config.prediction_type == "epsilon"
    scheduler = type(pipe.scheduler).from_config(config)
    scheduler.set_timesteps(50)
    assert scheduler.timesteps[0] == 981 and scheduler.timesteps[-1] == 1  # SD's "leading" grid
    unet_config = pipe.unet.config
    assert unet_config.down_block_types == ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D")
    assert unet_config.cross_attention_dim == pipe.text_encoder.config.hidden_size == 32
    assert pipe.text_encoder.config.max_position_embeddings == pipe.tokenizer.model_max_length == 16
    assert pipe.vae_scale_factor == 2


def test_tokenizer_is_clip_bpe_with_split_words(pipe):
    tokenizer = pipe.tokenizer
    assert type(tokenizer).__name__ == "CLIPTokenizer"
    assert tokenizer.tokenize("a cat") == ["a</w>", "cat</w>"]
    assert tokenizer.tokenize("a tiger") == ["a</w>", "ti", "ger</w>"]
    assert tokenizer.tokenize("zebra") == ["z", "e", "b", "r", "a</w>"]  # unknown words: letter by letter
    ids = tokenizer("a cat", padding="max_length", max_length=tokenizer.model_max_length).input_ids
    assert ids[0] == tokenizer.bos_token_id and ids[3] == tokenizer.eos_token_id and len(ids) == 16


def test_deterministic_from_seed_and_global_rng_untouched(pipe):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    again = build_tiny_random_pipeline(seed=0)
    assert torch.equal(torch.rand(3), expected)  # building did not consume the global RNG
    assert torch.equal(unet_output(again), unet_output(pipe))
    other = build_tiny_random_pipeline(seed=1)
    assert not torch.equal(unet_output(other), unet_output(pipe))


def test_v_prediction():
    pipe = build_tiny_random_pipeline(prediction_type="v_prediction")
    assert pipe.scheduler.config.prediction_type == "v_prediction"
    with pytest.raises(ValueError, match="prediction_type"):
        build_tiny_random_pipeline(prediction_type="sample")


def test_unet_is_fast_and_pipeline_runs(pipe):
    unet_output(pipe)  # warm up
    start = time.perf_counter()
    for _ in range(5):
        unet_output(pipe)
    per_call = (time.perf_counter() - start) / 5
    assert per_call < 0.5, f"a batch-2 UNet call at 16x16 took {per_call * 1000:.0f} ms (measured ~20 ms)"
    images = pipe("a tiger", num_inference_steps=2, guidance_scale=7.5, output_type="np").images
    assert images.shape == (1, 32, 32, 3)


def test_save_and_load_round_trip(pipe, tmp_path):
    pipe.save_pretrained(tmp_path)
    files = [p for p in Path(tmp_path).rglob("*") if p.is_file()]
    assert any(p.suffix == ".safetensors" for p in files)
    assert not any(p.suffix in (".bin", ".pt", ".pth", ".ckpt") for p in files)
    loaded = StableDiffusionPipeline.from_pretrained(tmp_path)
    assert torch.equal(unet_output(loaded), unet_output(pipe))
    assert loaded.tokenizer.tokenize("a tiger on a couch") == pipe.tokenizer.tokenize("a tiger on a couch")
    assert loaded.tokenizer.model_max_length == 16
    assert loaded.scheduler.config.steps_offset == 1 and loaded.scheduler.config.clip_sample is False
    ids = pipe.tokenizer(["a cat"], padding="max_length", max_length=16, return_tensors="pt").input_ids
    with torch.no_grad():
        assert torch.equal(loaded.text_encoder(ids)[0], pipe.text_encoder(ids)[0])


def test_tiny_sdxl_is_deterministic_and_leaves_the_global_rng_alone():
    from diffusion_lab.models.tiny_random import build_tiny_random_sdxl_pipeline

    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    first, again = build_tiny_random_sdxl_pipeline(seed=0), build_tiny_random_sdxl_pipeline(seed=0)
    assert torch.equal(torch.rand(3), expected)  # building draws nothing from the global RNG
    for name in ("unet", "text_encoder", "text_encoder_2", "vae"):
        for a, b in zip(getattr(first, name).parameters(), getattr(again, name).parameters()):
            assert torch.equal(a, b), name
    assert first.vae.config.scaling_factor == 0.13025 and first.tokenizer_2.model_max_length == 16
    with pytest.raises(ValueError, match="prediction_type"):
        build_tiny_random_sdxl_pipeline(prediction_type="sample")
