"""SDXL: two text encoders, pooled embeddings and time ids, through generation, every inversion method,
Prompt-to-Prompt and the edit API, on a tiny random SDXL-architecture pipeline built locally (no download)."""

import pytest
import torch
from diffusers import StableDiffusionXLPipeline

from diffusion_lab.conditioning import SDXLConditionedUNet, denoising_unet, is_sdxl, pack_pooled, unpack_pooled
from diffusion_lab.editing import edit_generated, edit_real
from diffusion_lab.generation import initial_noise, text_to_image
from diffusion_lab.inversion import Inversion, invert, reconstruct
from diffusion_lab.latents import encode_images
from diffusion_lab.models.tiny_random import build_tiny_random_pipeline, build_tiny_random_sdxl_pipeline
from diffusion_lab.shapes import random_scene, render
from diffusion_lab.text import PromptError, encode_prompts

ATOL = 1e-4  # the controlled (explicit softmax) and fused attention paths differ by float rounding


@pytest.fixture(scope="module")
def pipe():
    return build_tiny_random_sdxl_pipeline(seed=0)


@pytest.fixture(scope="module")
def image():
    return render(random_scene(5, num_objects=1), size=32).image


def _max_error(a, b):
    return float((a - b).abs().max())


def test_tiny_pipeline_has_the_sdxl_architecture(pipe, tmp_path):
    assert isinstance(pipe, StableDiffusionXLPipeline) and is_sdxl(pipe)
    assert not is_sdxl(build_tiny_random_pipeline(seed=0))
    config = pipe.unet.config
    assert config.addition_embed_type == "text_time" and config.down_block_types[0] == "DownBlock2D"
    assert config.cross_attention_dim == pipe.text_encoder.config.hidden_size + pipe.text_encoder_2.config.hidden_size
    assert type(pipe.text_encoder_2).__name__ == "CLIPTextModelWithProjection"
    assert isinstance(denoising_unet(pipe), SDXLConditionedUNet)
    pipe.save_pretrained(tmp_path)
    loaded = StableDiffusionXLPipeline.from_pretrained(tmp_path)
    torch.testing.assert_close(encode_prompts(loaded, ["a red circle"]), encode_prompts(pipe, ["a red circle"]),
                               atol=1e-6, rtol=0)


def test_packed_condition(pipe):
    """(B, L + 1, D): both encoders' tokens, then the pooled embedding; the empty prompt is zeros (SDXL's null)."""
    packed = encode_prompts(pipe, ["a red circle", ""])
    tokens = pipe.tokenizer.model_max_length
    assert packed.shape == (2, tokens + 1, pipe.unet.config.cross_attention_dim)
    with torch.no_grad():
        embeddings, _, pooled, _ = pipe.encode_prompt(["a red circle"], device="cpu",
                                                      do_classifier_free_guidance=False)
    token_part, pooled_part = unpack_pooled(encode_prompts(pipe, ["a red circle"]),
                                            pipe.text_encoder_2.config.projection_dim)
    assert torch.equal(token_part, embeddings) and torch.equal(pooled_part, pooled)
    assert torch.equal(pack_pooled(token_part, pooled_part), encode_prompts(pipe, ["a red circle"]))
    torch.testing.assert_close(packed[:1], pack_pooled(token_part, pooled_part), atol=1e-6, rtol=0)  # batch rounding
    assert not packed[0, -1, pooled.shape[-1]:].any() and not packed[1].any()
    with pytest.raises(PromptError, match="tokens but the tokenizer allows"):
        encode_prompts(pipe, ["a " * 20])


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_text_to_image_equals_the_diffusers_sdxl_pipeline(pipe, prediction_type):
    """Our sampler with the packed condition equals StableDiffusionXLPipeline's own loop (pooled embeddings,
    time ids, zero negative embeddings, classifier-free guidance), also for a v-prediction SDXL."""
    if prediction_type != "epsilon":
        pipe = build_tiny_random_sdxl_pipeline(seed=0, prediction_type=prediction_type)
    x_T = initial_noise(pipe, 1, seed=2)
    ours = text_to_image(pipe, ["a red circle"], num_steps=4, guidance_scale=5.0, x_T=x_T, progress=False).latents
    reference = pipe("a red circle", num_inference_steps=4, guidance_scale=5.0, latents=x_T.clone(),
                     output_type="latent").images
    assert torch.allclose(ours, reference, rtol=1e-4, atol=1e-4 * float(reference.abs().max()))


def test_replace_with_identical_prompts_reproduces_the_source(pipe):
    result = edit_generated(pipe, "a red circle", ["a red circle"], num_steps=3, seed=1, progress=False)
    assert torch.equal(result.latents[0], result.latents[1])
    alone = text_to_image(pipe, ["a red circle"], num_steps=3, guidance_scale=7.5, seed=1, progress=False)
    torch.testing.assert_close(result.latents[:1], alone.latents, atol=ATOL * float(alone.latents.abs().max()), rtol=0)
    swap = edit_generated(pipe, "a red circle", ["a blue circle"], num_steps=3, seed=1, progress=False)
    assert _max_error(swap.latents[1], swap.latents[0]) > 1e-3
    layers = [name for name in pipe.unet.attn_processors if name.endswith("attn2.processor")]
    assert layers and all(not name.startswith("down_blocks.0") for name in layers)  # SDXL: no attention at first
    maps = swap.controller.average_cross_attention(resolution=8)  # derived from attn_processors, side s / 2
    assert maps.shape == (8, 8, pipe.tokenizer.model_max_length)


def test_inversion_round_trip_at_guidance_one(pipe, image):
    """DDIM inversion at w = 1 gets closer with more steps and fixed-point closer still (a random UNet is rough);
    edit-friendly inversion and direct inversion reconstruct exactly."""
    z_0 = encode_images(pipe, image)
    error = lambda inversion: _max_error(reconstruct(pipe, inversion, output_type="latents", progress=False), z_0)  # noqa: E731
    coarse = invert(pipe, image, "a red circle", "ddim", num_steps=5, progress=False)
    fine = invert(pipe, image, "a red circle", "ddim", num_steps=20, progress=False)
    fixed = invert(pipe, image, "a red circle", "fixed_point", num_steps=20, guidance_scale=1.0,
                   fixed_point_iterations=4, progress=False)
    assert error(coarse) > error(fine) > error(fixed)
    assert error(invert(pipe, image, "a red circle", "direct", num_steps=4, progress=False)) == 0.0
    friendly = invert(pipe, image, "a red circle", "edit_friendly", num_steps=5, guidance_scale=1.0, progress=False)
    assert error(friendly) < 1e-4 * max(1.0, float(z_0.abs().max()))


def test_null_text_negative_prompt_and_the_edit_api(pipe, image, tmp_path):
    null_text = invert(pipe, image, "a red circle", "null_text", num_steps=3, inner_steps=3, early_stop_epsilon=0.0,
                       progress=False)
    losses = null_text.diagnostics["null_text_losses"]
    assert (losses[:, -1] < losses[:, 0]).all()  # the packed unconditional condition is optimised ...
    pooled_width = pipe.text_encoder_2.config.projection_dim
    start = encode_prompts(pipe, [""])
    assert _max_error(null_text.uncond_embeddings[-1, :, -1, :pooled_width], start[:, -1, :pooled_width]) > 0
    assert not null_text.uncond_embeddings[:, :, -1, pooled_width:].any()  # ... pooled included, padding untouched
    negative = invert(pipe, image, "a red circle", "negative_prompt", num_steps=3, progress=False)
    assert torch.equal(negative.uncond_embeddings[0], negative.text_embeddings)
    loaded = Inversion.load(null_text.save(tmp_path / "xl"))
    source = reconstruct(pipe, loaded, output_type="latents", progress=False)
    result = edit_real(pipe, loaded, target_prompts=["a blue circle"], progress=False)
    torch.testing.assert_close(result.latents[:1], source, atol=ATOL * max(1.0, float(source.abs().max())), rtol=0)
    real = edit_real(pipe, image, "a red circle", ["a red circle"], inversion_method="negative_prompt", num_steps=3,
                     progress=False)
    assert torch.equal(real.latents[0], real.latents[1])


def test_load_pipeline_recognises_an_sdxl_folder(pipe, tmp_path):
    from diffusion_lab.models.loading import clear_pipeline_cache, load_pipeline

    pipe.save_pretrained(tmp_path / "xl")
    try:
        loaded = load_pipeline(str(tmp_path / "xl"), device="cpu", dtype="float32")
        assert isinstance(loaded, StableDiffusionXLPipeline) and type(loaded.scheduler).__name__ == "DDIMScheduler"
        assert not any(p.requires_grad for p in loaded.text_encoder_2.parameters())
    finally:
        clear_pipeline_cache()
