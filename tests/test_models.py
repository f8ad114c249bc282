"""Loading (built-in and SD-architecture folders), the word-level tokenizer, and a training smoke run."""

import json
from pathlib import Path

import pytest

from diffusion_lab.models import ModelNotFoundError, load_pipeline
from diffusion_lab.models.loading import BUILTIN_MODELS
from diffusion_lab.models.shapes_tiny import build_tokenizer, build_untrained_pipeline
from diffusion_lab.shapes import caption, random_scene, vocabulary
from diffusion_lab.text import PromptError, check_prompt, encode_prompts, tokenize_prompts


def test_word_level_tokenizer_one_token_per_word():
    tokenizer = build_tokenizer()
    for seed in range(20):
        text = caption(random_scene(seed), include_position=True)
        ids = check_prompt(tokenizer, text)
        assert len(ids) == len(text.split()) + 2  # bos + words + eos
        assert tokenizer.convert_ids_to_tokens(ids[1:-1]) == text.split()
    assert set(vocabulary()) <= set(tokenizer.get_vocab())


def test_unknown_word_error_lists_the_vocabulary():
    tokenizer = build_tokenizer()
    with pytest.raises(PromptError, match=r"'tiger'.*not in this model's vocabulary.*circle.*square"):
        check_prompt(tokenizer, "a red tiger on a gray background")


def test_prompt_too_long_error():
    tokenizer = build_tokenizer()
    long_prompt = " and ".join(["a large red circle"] * 8)
    with pytest.raises(PromptError, match="tokens but the tokenizer allows 32"):
        tokenize_prompts(tokenizer, [long_prompt])


def test_missing_checkpoint_error(tmp_path):
    with pytest.raises(ModelNotFoundError, match="no model folder"):
        load_pipeline(str(tmp_path / "does-not-exist"), device="cpu")


def test_untrained_pipeline_round_trip_through_from_pretrained(tmp_path):
    pipe = build_untrained_pipeline(seed=0)
    pipe.save_pretrained(tmp_path, safe_serialization=True)
    assert not list(tmp_path.rglob("*.bin")), "weights must be safetensors only"
    loaded = load_pipeline(str(tmp_path), device="cpu")
    assert type(loaded.unet).__name__ == "UNet2DConditionModel"
    assert type(loaded.text_encoder).__name__ == "CLIPTextModel"
    assert loaded.scheduler.config.clip_sample is False
    embeddings = encode_prompts(loaded, ["a red circle", "a small blue star on a navy background"])
    assert embeddings.shape == (2, 32, 64)
    assert load_pipeline(str(tmp_path), device="cpu") is loaded, "loading must be cached"


@pytest.mark.skipif(not (BUILTIN_MODELS["shapes-tiny"] / "model_index.json").exists(), reason="shapes-tiny weights not exported yet")
def test_builtin_model_loads_offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    pipe = load_pipeline("shapes-tiny", device="cpu")
    assert pipe.unet.config.sample_size == 16
    assert pipe.vae.config.scaling_factor != 0.18215
    ids = tokenize_prompts(pipe.tokenizer, ["a large red circle on a gray background"])
    assert ids.shape == (1, pipe.tokenizer.model_max_length)
    info = BUILTIN_MODELS["shapes-tiny"] / "training_info.json"
    assert json.loads(info.read_text())["unet_steps"] > 0


def tiny_training_settings(tmp_path, **changes):
    """Settings for a training run of a few steps on a handful of scenes, in tmp_path."""
    from diffusion_lab.training import TrainingSettings

    settings = dict(
        run_dir=str(tmp_path / "run"), export_dir=str(tmp_path / "export"), vae_steps=2, vae_batch_size=2,
        num_scenes=16, unet_steps=3, batch_size=4, checkpoint_every=2, export_every=3, eval_every=3,
        eval_samples=2, log_every=1, progress=False,
    )
    return TrainingSettings(**{**settings, **changes})


def test_training_smoke_run(tmp_path):
    """A few steps of both stages, a resume, and an atomic export that loads back."""
    from diffusion_lab.training import train_unet, train_vae

    settings = tiny_training_settings(tmp_path)
    pipe = build_untrained_pipeline(seed=0)
    train_vae(pipe, settings)
    train_unet(pipe, settings)
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert any(r["stage"] == "unet" and r["step"] == 3 for r in log)
    assert any(r["stage"] == "eval" for r in log)
    # Resume: a longer run continues from step 3, not from 0.
    settings.unet_steps = 4
    train_unet(build_untrained_pipeline(seed=0), settings)
    steps = [json.loads(line)["step"] for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines() if '"unet"' in line]
    assert steps[-1] == 4 and steps.count(1) == 1
    exported = load_pipeline(str(tmp_path / "export"), device="cpu")
    assert exported.unet.config.sample_size == 16


def test_decoder_finetune_keeps_the_latent_space(tmp_path):
    """Decoder fine-tuning moves only the decoder; export_from_run ships it with the original encoder."""
    import torch
    from safetensors.torch import load_file

    from diffusion_lab.training import export_from_run, finetune_vae_decoder, train_unet, train_vae

    settings = tiny_training_settings(tmp_path, decoder_steps=2, num_scenes=8, unet_steps=1, batch_size=2,
                                      checkpoint_every=1, export_every=1, eval_every=0)
    pipe = build_untrained_pipeline(seed=0)
    train_vae(pipe, settings)
    before = {k: v.clone() for k, v in pipe.vae.state_dict().items()}
    finetune_vae_decoder(pipe, settings)
    after = pipe.vae.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before if k.startswith(("encoder.", "quant_conv.")))
    assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith("decoder."))
    assert all(p.requires_grad for p in pipe.vae.parameters())  # frozen only while fine-tuning
    saved = load_file(str(tmp_path / "run" / "vae_decoder.safetensors"))
    assert all(torch.equal(saved[k], after[k]) for k in after)
    train_unet(pipe, settings)
    export_from_run(settings)
    exported = load_pipeline(str(tmp_path / "export"), device="cpu")
    assert all(torch.equal(exported.vae.state_dict()[k], after[k]) for k in after)


def test_seed_a_run_from_an_export_and_train_on(tmp_path):
    """A run folder seeded from an exported pipeline resumes at its step with a fresh optimizer."""
    import torch

    from diffusion_lab.training import export_from_run, seed_run_from_export, train_unet, train_vae

    settings = tiny_training_settings(tmp_path, unet_steps=2, eval_every=0)
    pipe = build_untrained_pipeline(seed=0)
    train_vae(pipe, settings)
    train_unet(pipe, settings)
    export_from_run(settings)
    # vae_steps above the export's: the seeded VAE must still stay as it is (the UNet lives in its latents)
    more = tiny_training_settings(tmp_path, run_dir=str(tmp_path / "more"), unet_steps=3, eval_every=0, vae_steps=50)
    assert seed_run_from_export(more, str(tmp_path / "export")) == 2
    assert json.loads((tmp_path / "more" / "vae_state.json").read_text())["step"] == settings.vae_steps  # the export's
    with pytest.raises(FileExistsError):
        seed_run_from_export(more, str(tmp_path / "export"))
    pipe2 = build_untrained_pipeline(seed=1)
    train_vae(pipe2, more)  # loads the exported VAE, trains nothing
    exported = load_pipeline(str(tmp_path / "export"), device="cpu")
    assert all(torch.equal(pipe2.vae.state_dict()[k], v) for k, v in exported.vae.state_dict().items())
    train_unet(pipe2, more)
    log = [json.loads(line) for line in (tmp_path / "more" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if r["stage"] == "unet"] == [3]
    assert log[-1]["lr"] < more.lr * 0.1  # Adam warms up again: step 1 of the 200-step warm-up


def test_locality_finetune_makes_latents_local_and_ships(tmp_path):
    """finetune_vae_locality lowers the locality term on held-out pairs, resumes, keeps the scaling factor,
    and export_from_run ships the fine-tuned VAE (training_info names its steps)."""
    import numpy as np
    import torch
    from safetensors.torch import load_file

    from diffusion_lab.training import (
        export_from_run, finetune_vae_locality, locality_losses, locality_pairs, train_unet, train_vae,
    )

    settings = tiny_training_settings(tmp_path, vae_steps=4, vae_batch_size=4, locality_steps=12, locality_batch_size=4,
                                      locality_lr=1e-3, locality_weight=10.0, num_scenes=8, unet_steps=1, batch_size=2,
                                      checkpoint_every=6, export_every=1, eval_every=0)
    pipe = build_untrained_pipeline(seed=0)
    train_vae(pipe, settings)
    scale = pipe.vae.config.scaling_factor
    x_a, x_b, cells, radii = locality_pairs(6, np.random.default_rng(0))
    assert x_a.shape == x_b.shape == (6, 3, 64, 64) and cells.shape == (6, 1, 16, 16) and cells.dtype == torch.bool
    assert all(0 <= r <= 2 for r in radii) and bool(cells.any()) and not bool(cells.all())
    assert not torch.equal(x_a, x_b)
    teacher = build_untrained_pipeline(seed=0).vae
    teacher.load_state_dict(pipe.vae.state_dict())
    with torch.no_grad():
        before = locality_losses(pipe.vae, teacher, x_a, x_b, cells)
    assert before["anchor"].item() < 1e-8 and before["locality"].item() > 0
    finetune_vae_locality(pipe, settings)
    with torch.no_grad():
        after = locality_losses(pipe.vae, teacher, x_a, x_b, cells)
    assert after["locality"].item() < 0.5 * before["locality"].item()
    assert after["anchor"].item() > 0  # the encoder moved
    assert not pipe.vae.training and all(p.requires_grad for p in pipe.vae.parameters())
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if r["stage"] == "vae_locality" and "held_out_psnr" in r] == [6, 12]
    # resume: more steps continue from 12; the checkpoint is what the pipeline holds
    settings.locality_steps = 13
    again = build_untrained_pipeline(seed=0)
    train_vae(again, settings)
    finetune_vae_locality(again, settings)
    steps = [json.loads(line)["step"] for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines() if "vae_locality" in line]
    assert steps[-1] == 13 and steps.count(1) == 1
    saved = load_file(str(tmp_path / "run" / "vae_locality.safetensors"))
    assert all(torch.equal(saved[k], v) for k, v in again.vae.state_dict().items())
    train_unet(again, settings)
    export_from_run(settings)
    exported = load_pipeline(str(tmp_path / "export"), device="cpu")
    assert all(torch.equal(exported.vae.state_dict()[k], v) for k, v in saved.items())
    assert exported.vae.config.scaling_factor == scale  # the UNet's latent scale, not re-measured on the new encoder
    info = json.loads((tmp_path / "export" / "training_info.json").read_text())
    assert info["vae_locality_steps"] == 13


def test_train_cli_runs_the_locality_stage_before_the_unet(tmp_path):
    """pipelines/train_shapes_tiny.py: --stage locality fine-tunes the VAE; --stage unet then caches the latents of
    THAT encoder (not of the VAE before it, nor a stale cache), also when continued without --locality-steps."""
    import importlib.util

    import torch
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from diffusion_lab.training import encode_dataset, encoder_fingerprint, make_dataset

    spec = importlib.util.spec_from_file_location("train_shapes_tiny", Path(__file__).resolve().parents[1] / "pipelines" / "train_shapes_tiny.py")
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    run = tmp_path / "run"
    common = ["--run-dir", str(run), "--vae-steps", "2", "--vae-batch-size", "2", "--locality-steps", "2",
              "--locality-batch-size", "2", "--checkpoint-every", "1", "--log-every", "1", "--progress", "false"]
    cli.main(["--stage", "locality", *common])
    assert json.loads((run / "vae_locality_state.json").read_text())["step"] == 2
    assert not (run / "unet_state.json").exists()
    stale = torch.zeros(4, 4, 16, 16)  # a latent cache some other encoder left in the folder: never reused
    save_file({"latents": stale}, str(run / "latents_4_0.safetensors"))
    unet = ["--num-scenes", "4", "--batch-size", "2", "--eval-every", "0"]
    cli.main(["--stage", "unet", *common, *unet, "--unet-steps", "1"])
    pipe = build_untrained_pipeline(seed=0)
    pipe.vae.load_state_dict(load_file(str(run / "vae_locality.safetensors")))
    pipe.vae.register_to_config(scaling_factor=json.loads((run / "vae_state.json").read_text())["scaling_factor"])
    cached = load_file(str(run / "latents_4_0.safetensors"))["latents"]
    assert torch.allclose(cached, encode_dataset(pipe.vae.eval(), make_dataset(4, seed=0)[0], "cpu"), atol=1e-5)
    with safe_open(str(run / "latents_4_0.safetensors"), framework="pt") as f:
        assert f.metadata()["encoder_fingerprint"] == encoder_fingerprint(pipe.vae)
    # Continuing without --locality-steps still trains in the locality-tuned VAE's latent space (the cache is kept).
    cli.main(["--stage", "unet", "--run-dir", str(run), "--vae-steps", "2", "--vae-batch-size", "2", "--checkpoint-every", "1",
              "--log-every", "1", "--progress", "false", *unet, "--unet-steps", "2"])
    assert json.loads((run / "unet_state.json").read_text())["step"] == 2
    assert torch.equal(load_file(str(run / "latents_4_0.safetensors"))["latents"], cached)
