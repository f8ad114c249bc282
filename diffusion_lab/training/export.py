"""A run's exports: the diffusers folder with the EMA weights (written atomically, safetensors only) and its
training_info.json; and the way back, a run folder seeded from an export."""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors.torch import load_file

from .ema import ExponentialMovingAverage, restore_weights, swap_in_ema
from .run_folder import atomic_save_file
from .settings import TrainingSettings
from .text_encoder import build_run_pipeline, grow_text_encoder
from .vae import set_scaling_factor


def export_pipeline(pipe, ema, modules, export_dir: str, info: dict) -> None:
    """Write the pipeline with EMA weights to `export_dir` atomically (safetensors only)."""
    saved = swap_in_ema(ema, modules)
    try:
        target = Path(export_dir)
        tmp = Path(tempfile.mkdtemp(prefix=".export-", dir=target.parent))
        set_tokenizer_to_pipeline_encoding(pipe.tokenizer)
        pipe.save_pretrained(tmp, safe_serialization=True)
        (tmp / "training_info.json").write_text(json.dumps(info, indent=1))
        card = target / "README.md"
        if card.exists():
            shutil.copy(card, tmp / "README.md")
        permissions_from_umask(tmp)
        old = target.with_name(target.name + ".old")
        if target.exists():
            os.replace(target, old)
        os.replace(tmp, target)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        restore_weights(modules, saved)


def permissions_from_umask(folder: Path) -> None:
    """Give `folder` and everything in it the permissions the umask gives new files and folders. mkdtemp makes an
    owner-only folder and safetensors owner-only weight files, so an export to a shared course folder could not be
    loaded by its other users."""
    umask = os.umask(0)
    os.umask(umask)
    folder.chmod(0o777 & ~umask)
    for path in folder.rglob("*"):
        path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)


def keep_export_copy(export_dir: str, run_dir: str, step: int, keep: int) -> Path:
    """Copy the export written at `step` to <run_dir>/exports/step-NNNNNN (atomically) and delete all but the
    `keep` latest copies; returns the copy's folder. Each copy loads with load_pipeline like the export itself."""
    if keep < 1:
        raise ValueError(f"keep must be at least 1 to keep a copy of the export, got {keep}")
    folder = Path(run_dir) / "exports"
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"step-{step:06d}"
    tmp = Path(tempfile.mkdtemp(prefix=".copy-", dir=folder))
    shutil.copytree(export_dir, tmp, dirs_exist_ok=True)
    permissions_from_umask(tmp)
    if target.exists():
        shutil.rmtree(target)
    os.replace(tmp, target)
    for old in sorted(folder.glob("step-*"))[:-keep]:
        shutil.rmtree(old)
    return target


def set_tokenizer_to_pipeline_encoding(tokenizer) -> None:
    """Pad and truncate the fast tokenizer's backend to model_max_length, as the pipeline's every call does.

    tokenizer.json records the backend's padding and truncation as they were left by the last call, so an
    export written before any prompt was encoded had them null and one written after had them fixed at 32:
    two byte-different files for one model. Setting them here makes every export write the same file."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:  # a slow (Python) tokenizer keeps no such state
        return
    backend.enable_truncation(max_length=tokenizer.model_max_length)
    backend.enable_padding(length=tokenizer.model_max_length, pad_id=tokenizer.pad_token_id,
                           pad_token=tokenizer.pad_token)


def export_from_run(settings: TrainingSettings) -> int:
    """Export the EMA weights of the latest checkpoint in settings.run_dir to settings.export_dir; returns its step."""
    run_dir = Path(settings.run_dir)
    pipe = build_run_pipeline(settings)  # as many text layers as the run's weights: the export's config says so
    pipe.vae.load_state_dict(load_file(str(run_dir / "vae.safetensors")))
    pipe.vae.eval()
    set_scaling_factor(pipe, settings)  # the one the UNet was trained with (vae_state.json)
    if (run_dir / "vae_decoder.safetensors").exists():
        pipe.vae.load_state_dict(load_file(str(run_dir / "vae_decoder.safetensors")))
    if (run_dir / "vae_locality.safetensors").exists():  # the whole VAE, fine-tuned for local latents (same scale)
        pipe.vae.load_state_dict(load_file(str(run_dir / "vae_locality.safetensors")))
    modules = {"unet": pipe.unet, "text_encoder": pipe.text_encoder}
    ema = ExponentialMovingAverage(modules, settings.ema_decay)
    ema.shadow = load_file(str(run_dir / "unet_text_ema.safetensors"))
    step = json.loads((run_dir / "unet_state.json").read_text())["step"]
    export_pipeline(pipe, ema, modules, settings.export_dir, run_training_info(run_dir, step))
    return step


def run_training_info(run_dir, unet_steps: int) -> dict:
    """training_info.json of an export of run_dir at `unet_steps`: the steps of every stage behind it."""
    run_dir = Path(run_dir)
    info = {"unet_steps": unet_steps}
    for key, name in (("vae_steps", "vae_state.json"), ("vae_decoder_steps", "vae_decoder_state.json"),
                      ("vae_locality_steps", "vae_locality_state.json")):
        if (run_dir / name).exists():
            info[key] = json.loads((run_dir / name).read_text())["step"]
    return info


def seed_run_from_export(settings: TrainingSettings, export_dir: str) -> int:
    """Start a run folder from an exported pipeline (e.g. the shipped shapes-tiny) to train it further.

    The exported EMA weights become both the raw and the EMA weights; there is no optimizer state, so
    train_unet warms Adam up again. The exported VAE is written as the run's VAE (its encoder defines the
    latent space) and as its fine-tuned decoder. Returns the UNet step recorded in training_info.json.
    settings.text_layers > 0 first grows the exported text encoder to that many layers, in the raw and the
    EMA weights alike (grow_text_encoder: identity at the start, so the seeded run computes what the export does)."""
    from ..models.loading import BUILTIN_MODELS, load_pipeline

    run_dir = Path(settings.run_dir)
    if (run_dir / "unet_state.json").exists():
        raise FileExistsError(f"{run_dir} already holds a run; seed an empty folder")
    pipe = load_pipeline(export_dir, device="cpu")  # a clear ModelNotFoundError before anything is written
    run_dir.mkdir(parents=True, exist_ok=True)
    info_path = Path(BUILTIN_MODELS.get(str(export_dir), export_dir)) / "training_info.json"
    info = json.loads(info_path.read_text()) if info_path.exists() else {}
    step = int(info.get("unet_steps", 0))
    text_encoder = pipe.text_encoder  # the cached pipeline's own module is left as it is
    if settings.text_layers:
        torch.manual_seed(settings.seed)  # the new layers' other weights (q, k, v, fc1) are random: reproducibly
        text_encoder = grow_text_encoder(text_encoder, settings.text_layers)
    weights = {f"{n}.{k}": v for n, m in {"unet": pipe.unet, "text_encoder": text_encoder}.items() for k, v in m.state_dict().items()}
    atomic_save_file(weights, run_dir / "unet_text.safetensors")
    atomic_save_file({k: v.float() if v.dtype.is_floating_point else v for k, v in weights.items()}, run_dir / "unet_text_ema.safetensors")
    (run_dir / "unet_state.json").write_text(json.dumps({"step": step, "settings": asdict(settings), "seeded_from": str(export_dir)}))
    atomic_save_file(pipe.vae.state_dict(), run_dir / "vae.safetensors")
    # The exported VAE is final in the seeded run (_fit_vae trains neither stage further): the UNet lives in its latents.
    (run_dir / "vae_state.json").write_text(json.dumps({"step": int(info.get("vae_steps", 0)), "seeded_from": str(export_dir),
                                                      "scaling_factor": pipe.vae.config.scaling_factor}))
    atomic_save_file(pipe.vae.state_dict(), run_dir / "vae_decoder.safetensors")
    decoder_steps = int(info.get("vae_decoder_steps", 0))
    (run_dir / "vae_decoder_state.json").write_text(json.dumps({"step": decoder_steps, "seeded_from": str(export_dir)}))
    if "vae_locality_steps" in info:  # its whole VAE was fine-tuned for locality: so is the run's
        atomic_save_file(pipe.vae.state_dict(), run_dir / "vae_locality.safetensors")
        (run_dir / "vae_locality_state.json").write_text(json.dumps({"step": int(info["vae_locality_steps"]), "seeded_from": str(export_dir)}))
    return step
