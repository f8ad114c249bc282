"""Loading (built-in and SD-architecture folders), the word-level tokenizer, and a training smoke run."""

import json
import os
import stat
from pathlib import Path

import pytest
import torch

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
    with pytest.raises(ModelNotFoundError, match="a folder but not a diffusers pipeline: it has no model_index.json"):
        load_pipeline(str(tmp_path), device="cpu")


@pytest.mark.parametrize("typo", ["shapes_tiny", "Shapes-Tiny", "shape-tiny"])
def test_a_misspelt_model_name_fails_at_once_and_names_the_built_in_model(typo):
    """A name that is no folder and no 'owner/name' hub id is refused before from_pretrained (whose hub requests
    retried for half a minute offline, then named no close match)."""
    with pytest.raises(ModelNotFoundError, match="Did you mean 'shapes-tiny'"):
        load_pipeline(typo, device="cpu")


def test_the_built_in_model_is_recorded_by_its_name_not_its_folder():
    """What an inversion saved from it records (Inversion.model_name): 'shapes-tiny', not this machine's path."""
    from diffusion_lab.inversion.pipeline_level import pipeline_name

    assert pipeline_name(load_pipeline("shapes-tiny", device="cpu")) == "shapes-tiny"


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
    # the export written during training records every stage behind it, as --stage export does
    info = json.loads((tmp_path / "export" / "training_info.json").read_text())
    assert info == {"unet_steps": 4, "vae_steps": settings.vae_steps}


def test_export_keep_holds_the_last_exports_of_a_run(tmp_path):
    """--export-keep 2 with an export every step: the last two exports stay in run/exports/step-N, each loadable
    and recording its own step; the export folder holds the latest."""
    from diffusion_lab.training import train_unet, train_vae

    settings = tiny_training_settings(tmp_path, export_every=1, export_keep=2, eval_every=0)
    pipe = build_untrained_pipeline(seed=0)
    train_vae(pipe, settings)
    train_unet(pipe, settings)
    kept = sorted(p.name for p in (tmp_path / "run" / "exports").iterdir())
    assert kept == ["step-000002", "step-000003"]
    # every folder and file of an export is readable by others as the umask allows (tests run with umask 022 or
    # stricter; mkdtemp and safetensors alone make them owner-only)
    umask = os.umask(0)
    os.umask(umask)
    for folder in (tmp_path / "export", tmp_path / "run" / "exports" / "step-000003"):
        for path in [folder, *folder.rglob("*")]:
            wanted = (0o777 if path.is_dir() else 0o666) & ~umask
            assert stat.S_IMODE(path.stat().st_mode) == wanted, path
    for name, step in zip(kept, (2, 3)):
        assert json.loads((tmp_path / "run" / "exports" / name / "training_info.json").read_text())["unet_steps"] == step
    earlier, latest = (load_pipeline(str(tmp_path / "run" / "exports" / name), device="cpu") for name in kept)
    exported = load_pipeline(str(tmp_path / "export"), device="cpu")
    assert all(torch.equal(latest.unet.state_dict()[k], v) for k, v in exported.unet.state_dict().items())
    assert any(not torch.equal(earlier.unet.state_dict()[k], v) for k, v in exported.unet.state_dict().items())


def test_training_batches_depend_on_the_step_alone_also_from_worker_processes():
    """Batch k is the same whether built in this process, in two DataLoader workers, or by a run resumed
    at step 3 (so an interrupted run sees the batches an uninterrupted one would); it carries the grounding
    regions of its own captions."""
    from diffusion_lab.training import (
        TrainingBatches, TrainingSettings, object_coverage, training_batch_loader, training_scenes, word_regions,
    )

    scenes = training_scenes(20, seed=0)
    coverage = object_coverage(scenes, latent_size=16)
    tokenizer = build_untrained_pipeline(seed=0).tokenizer
    settings = TrainingSettings(batch_size=4, grounding_weight=0.01, position_caption_rate=0.5, seed=3)

    def batches(start, stop, workers):
        made = TrainingBatches(scenes, coverage, tokenizer, settings, (4, 16, 16), 1000, start, stop)
        return list(training_batch_loader(made, workers))

    here, in_workers, resumed = batches(0, 6, 0), batches(0, 6, 2), batches(3, 6, 0)
    assert [b["step"] for b in here] == [b["step"] for b in in_workers] == list(range(6))
    for a, b in zip(here, in_workers):
        assert a["prompts"] == b["prompts"]
        for key in ("index", "input_ids", "noise", "timesteps", "regions", "kinds"):
            assert torch.equal(a[key], b[key]), key
    for a, b in zip(here[3:], resumed):
        assert a["prompts"] == b["prompts"] and torch.equal(a["noise"], b["noise"])
    assert here[0]["prompts"] != here[1]["prompts"]  # steps differ
    regions, kinds = word_regions(here[2]["prompts"], coverage[here[2]["index"]], here[2]["input_ids"].shape[1],
                                  here[2]["timesteps"], settings.grounding_max_timestep)
    assert torch.equal(regions, here[2]["regions"]) and torch.equal(kinds, here[2]["kinds"])


def test_training_with_worker_processes_trains_as_without(tmp_path):
    """The same weights after three steps with batches built in two worker processes as in the training process."""
    from diffusion_lab.training import train_unet, train_vae

    weights = []
    for workers in (0, 2):
        settings = tiny_training_settings(tmp_path / f"w{workers}", data_workers=workers, eval_every=0, export_dir=None,
                                          grounding_weight=0.01)
        pipe = build_untrained_pipeline(seed=0)
        train_vae(pipe, settings)
        train_unet(pipe, settings)
        weights.append({k: v.clone() for k, v in pipe.unet.state_dict().items()})
    assert all(torch.equal(weights[0][k], weights[1][k]) for k in weights[0])


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


def _train_cli():
    """pipelines/train_shapes_tiny.py as a module (it is a script, not part of the package)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("train_shapes_tiny", Path(__file__).resolve().parents[1] / "pipelines" / "train_shapes_tiny.py")
    cli = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(cli)
    return cli


def test_train_cli_runs_the_locality_stage_before_the_unet(tmp_path):
    """pipelines/train_shapes_tiny.py: --stage locality fine-tunes the VAE; --stage unet then caches the latents of
    THAT encoder (not of the VAE before it, nor a stale cache), also when continued without --locality-steps."""
    import torch
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from diffusion_lab.training import encode_dataset, encoder_fingerprint, make_dataset

    cli = _train_cli()
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


def test_grow_text_encoder_is_identity_then_learns():
    """grow_text_encoder: a new layer adds exactly zero at first (same last_hidden_state on shapes prompts), moves
    the output after one optimizer step, and growing again copies the trained layer; shrinking is refused."""
    import torch

    from diffusion_lab.training import grow_text_encoder, tokenize

    pipe = build_untrained_pipeline(seed=0)
    prompts = [caption(random_scene(seed), include_position=True) for seed in range(6)]
    ids = tokenize(pipe.tokenizer, prompts + ["a small red circle and a large blue square", ""])
    old = pipe.text_encoder.eval()
    grown = grow_text_encoder(old, 1).eval()
    assert (old.config.num_hidden_layers, grown.config.num_hidden_layers) == (0, 1)
    with torch.no_grad():
        before = old(ids).last_hidden_state
        assert torch.allclose(grown(ids).last_hidden_state, before, atol=1e-6)
    optimizer = torch.optim.AdamW(grown.encoder.layers[0].parameters(), lr=1e-3)  # only the new layer: it must learn
    target = torch.randn(before.shape, generator=torch.Generator().manual_seed(0))
    (grown(ids).last_hidden_state - target).pow(2).mean().backward()
    optimizer.step()
    with torch.no_grad():
        after = grown(ids).last_hidden_state
        assert not torch.allclose(after, before, atol=1e-4)
        assert torch.allclose(grow_text_encoder(grown, 2)(ids).last_hidden_state, after, atol=1e-6)
    with pytest.raises(ValueError, match="not shrink"):
        grow_text_encoder(grow_text_encoder(grown, 2), 1)


def test_train_cli_seeds_a_run_with_a_grown_text_encoder(tmp_path, capsys):
    """--stage seed --text-layers 1 grows the exported text encoder (raw and EMA weights alike, computing what the
    export does); --stage unet reads the layer count from the run and trains it; --stage export writes a config of
    1 layer that load_pipeline loads and samples from."""
    import torch
    from safetensors.torch import load_file

    from diffusion_lab.generation import text_to_image
    from diffusion_lab.training import text_layers_of_run, tokenize

    cli = _train_cli()
    source, run, export = tmp_path / "source", tmp_path / "run", tmp_path / "export"
    build_untrained_pipeline(seed=0).save_pretrained(source, safe_serialization=True)
    (source / "training_info.json").write_text(json.dumps({"unet_steps": 2, "vae_steps": 2}))
    cli.main(["--stage", "seed", "--run-dir", str(run), "--seed-from", str(source), "--text-layers", "1"])
    assert text_layers_of_run(run) == 1
    raw, ema = load_file(str(run / "unet_text.safetensors")), load_file(str(run / "unet_text_ema.safetensors"))
    assert raw.keys() == ema.keys() and all(torch.equal(raw[k], ema[k]) for k in raw)
    exported = load_pipeline(str(source), device="cpu")
    seeded = build_untrained_pipeline(seed=1, text_layers=1).text_encoder.eval()
    seeded.load_state_dict({k[len("text_encoder.") :]: v for k, v in raw.items() if k.startswith("text_encoder.")})
    ids = tokenize(exported.tokenizer, ["a small red circle and a large blue square", ""])
    with torch.no_grad():
        assert torch.allclose(seeded(ids).last_hidden_state, exported.text_encoder(ids).last_hidden_state, atol=1e-6)
    common = ["--run-dir", str(run), "--num-scenes", "4", "--batch-size", "2", "--checkpoint-every", "1", "--log-every", "1",
              "--eval-every", "0", "--progress", "false"]
    with pytest.raises(SystemExit):  # layers are grown only when seeding
        cli.main(["--stage", "unet", *common, "--unet-steps", "4", "--text-layers", "2"])
    cli.main(["--stage", "unet", *common, "--unet-steps", "4"])
    log = [json.loads(line) for line in (run / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if r["stage"] == "unet"] == [3, 4]
    trained = load_file(str(run / "unet_text.safetensors"))
    assert trained["text_encoder.encoder.layers.0.self_attn.out_proj.weight"].abs().max() > 0  # the new layer learns
    # --text-layer-lr-scale 0 freezes the text encoder's layers (their own optimizer group) while the rest trains on
    cli.main(["--stage", "unet", *common, "--unet-steps", "6", "--text-layer-lr-scale", "0"])
    frozen = load_file(str(run / "unet_text.safetensors"))
    layer_keys = [k for k in frozen if k.startswith("text_encoder.encoder.layers.")]
    assert layer_keys and all(torch.equal(frozen[k], trained[k]) for k in layer_keys)
    assert not all(torch.equal(frozen[k], trained[k]) for k in frozen if k.startswith("unet."))
    # Adam state saved with one parameter group (before the layers had their own) is refused with a message, not a crash
    one_group = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))]).state_dict()
    torch.save(one_group, run / "unet_optim.pt")
    cli.main(["--stage", "unet", *common, "--unet-steps", "7"])
    assert "Adam starts afresh" in capsys.readouterr().out
    assert json.loads((run / "unet_state.json").read_text())["step"] == 7
    cli.main(["--stage", "export", "--run-dir", str(run), "--export-dir", str(export)])
    assert json.loads((export / "text_encoder" / "config.json").read_text())["num_hidden_layers"] == 1
    pipe = load_pipeline(str(export), device="cpu")
    assert pipe.text_encoder.config.num_hidden_layers == 1
    images = text_to_image(pipe, ["a small red circle and a large blue square"], num_steps=2, progress=False).images
    assert images.shape == (1, 64, 64, 3)
    assert json.loads((export / "training_info.json").read_text())["unet_steps"] == 7


def test_words_the_model_was_never_trained_on_are_refused_with_the_reason(model_without_positions):
    """A model folder whose training_info.json lists "untrained_words" refuses them with its reason (the built-in
    model did so for position words until it was trained on them at 37,072 steps); the shipped model takes them."""
    from diffusion_lab.editing import EditError, PromptEdit
    from diffusion_lab.generation import text_to_image
    from diffusion_lab.text import PromptError, check_prompt

    assert check_prompt(load_pipeline("shapes-tiny").tokenizer, "a red circle at the top left")  # trained on them
    pipe = load_pipeline(str(model_without_positions))
    with pytest.raises(PromptError, match=r"'top', 'left' were never used in this model's training: .*positions.* Leave them out"):
        text_to_image(pipe, ["a red circle at the top left on a white background"], num_steps=1)
    with pytest.raises(EditError, match="never used"):
        PromptEdit("a red circle in the center", ["a blue circle in the center"], edit="replace").check(pipe.tokenizer)
    check_prompt(pipe.tokenizer, "a red circle on a white background")  # every other word is fine


def test_the_built_in_model_puts_the_object_where_the_caption_says():
    """The README's position caption works as written (issue 21): the analyzer finds the red circle in the named
    cell. pipelines/evaluate_model.py --positions 300 measures the rate over random captions (0.977)."""
    from diffusion_lab.generation import text_to_image
    from diffusion_lab.shapes.analyzer import analyze

    pipe = load_pipeline("shapes-tiny")
    cells = {"top left": ("top", "left"), "top right": ("top", "right"), "bottom left": ("bottom", "left"),
             "bottom right": ("bottom", "right"), "center": ("middle", "center")}
    prompts = [f"a large red circle at the {phrase} on a white background" for phrase in cells]
    images = text_to_image(pipe, prompts, num_steps=20, seed=0, progress=False).images
    found = [[(o.shape, o.colour, o.position) for o in analyze(image).objects] for image in images]
    assert found == [[("circle", "red", cell)] for cell in cells.values()]


def test_importing_a_pipeline_class_shows_no_torchvision_notice():
    """transformers 5.2x tells everyone who imports diffusers' pipelines to install torchvision (which breaks beside
    the course's CPU torch wheel); importing diffusion_lab first drops exactly that notice."""
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "TRANSFORMERS_VERBOSITY"}

    def stderr_of(code: str) -> str:
        return subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True).stderr

    without = stderr_of("from diffusers import StableDiffusionPipeline")
    if "requires torchvision" not in without:
        pytest.skip("this transformers does not log the torchvision notice (nothing to drop)")
    with_package = stderr_of("import diffusion_lab\nfrom diffusers import StableDiffusionPipeline\n"
                             "import logging\nlogging.getLogger('transformers.utils.import_utils').warning('kept')")
    assert "requires torchvision" not in with_package
    assert "kept" in with_package  # other transformers warnings still show


def test_builtin_model_loads_without_loading_bars_and_leaves_them_on(tmp_path):
    """The built-in model loads in well under a second: no 'Loading pipeline components' bar. A checkpoint folder
    (here a tiny random one) still shows it, and loading the built-in model leaves the libraries' bars as they were."""
    import os
    import subprocess
    import sys

    build_untrained_pipeline(seed=0).save_pretrained(tmp_path, safe_serialization=True)
    env = {k: v for k, v in os.environ.items() if k != "DIFFUSION_LAB_NO_PROGRESS"}
    code = ("import sys\nfrom diffusion_lab.models import load_pipeline\n"
            "from diffusers.utils import logging\n"
            "load_pipeline(sys.argv[1], device='cpu')\n"
            "print('bars on after' if logging.is_progress_bar_enabled() else 'bars off after')\n")

    def run(model: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-c", code, model], env=env, capture_output=True, text=True, check=True)

    folder = run(str(tmp_path))
    assert "Loading pipeline components" in folder.stderr  # the control: a checkpoint folder shows its bar
    builtin = run("shapes-tiny")
    assert "Loading pipeline components" not in builtin.stderr
    assert "bars on after" in builtin.stdout


def test_an_export_writes_the_same_tokenizer_file_whatever_was_encoded_before(tmp_path):
    """tokenizer.json records the backend's last padding/truncation; the export sets them to the pipeline's, so a
    fresh tokenizer and one that has just encoded a prompt save the same bytes, and the committed file."""
    from pathlib import Path

    from diffusion_lab.models.shapes_tiny import build_tokenizer
    from diffusion_lab.training.export import set_tokenizer_to_pipeline_encoding

    fresh, used = build_tokenizer(), build_tokenizer()
    used("a red circle", padding="max_length", max_length=used.model_max_length, truncation=True)
    files = []
    for name, tokenizer in (("fresh", fresh), ("used", used)):
        set_tokenizer_to_pipeline_encoding(tokenizer)
        tokenizer.save_pretrained(tmp_path / name)
        files.append((tmp_path / name / "tokenizer.json").read_text())
    committed = Path(__file__).parents[1] / "diffusion_lab" / "models" / "shapes-tiny" / "tokenizer" / "tokenizer.json"
    assert files[0] == files[1] == committed.read_text()
