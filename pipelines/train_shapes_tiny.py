"""Train shapes-tiny from scratch (or resume): VAE, then UNet + text encoder.

    python pipelines/train_shapes_tiny.py --run-dir train_runs/shapes-tiny \
        --export-dir diffusion_lab/models/shapes-tiny

Everything is resumable: rerun the same command after an interruption and training continues from
the last checkpoint in --run-dir. Runs on a GPU when there is one (--device auto).

A run seeded with --text-layers N (below, --stage seed) has its text encoder grown to N causal transformer
layers (the shipped one has 1), identity at the start (diffusion_lab.training.grow_text_encoder); every
later stage reads the run's layer count from its weights. --text-layer-lr-scale K trains those layers at K times
--lr (3 for the shipped model's layer, grown from zero).

To train the shipped model further (its EMA weights; Adam warms up again):

    python pipelines/train_shapes_tiny.py --stage seed --run-dir train_runs/more --seed-from shapes-tiny
    python pipelines/train_shapes_tiny.py --stage unet --run-dir train_runs/more --unet-steps 27000 --lr 1e-4 --min-lr 1e-4 \
        --ema-decay 0.998 --grounding-weight 0.01 --text-layer-lr-scale 3

--export-keep N keeps the last N exports in <run-dir>/exports/step-NNNNNN besides the latest in --export-dir, so
that an earlier step can be evaluated (pipelines/evaluate_model.py --model <folder>) and shipped when a later one
regresses.

--locality-steps N fine-tunes the whole VAE for local latents first (finetune_vae_locality); the UNet
stage then trains on the re-encoded dataset (pipelines/checkpoints/shapes-tiny-locality/README.md: the run behind
the 19,000-step model the shipped one grew from). A run folder with a locality-tuned VAE always trains in its latents.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import fields
from pathlib import Path

import torch

from diffusion_lab.models import ModelNotFoundError
from diffusion_lab.training import (
    TrainingSettings,
    build_run_pipeline,
    export_from_run,
    finetune_vae_decoder,
    finetune_vae_locality,
    seed_run_from_export,
    train_unet,
    train_vae,
    training_data,
)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    for f in fields(TrainingSettings):
        if f.name == "extra":
            continue
        flag = "--" + f.name.replace("_", "-")
        default = f.default
        if isinstance(default, bool):
            parser.add_argument(flag, type=lambda s: s.lower() in ("1", "true", "yes"), default=default)
        elif default is None:
            parser.add_argument(flag, default=None)
        else:
            parser.add_argument(flag, type=type(default), default=default)
    parser.add_argument("--stage", choices=["vae", "decoder", "locality", "unet", "all", "export", "seed", "data"],
                        default="all",
                        help="'export' writes the latest checkpoint's EMA weights to --export-dir and exits; "
                             "'seed' starts an empty --run-dir from the pipeline in --seed-from (to train it further); "
                             "'data' renders and encodes the UNet stage's dataset into the run folder's cache and exits")
    parser.add_argument("--seed-from", default="shapes-tiny", help="with --stage seed: a built-in name or a diffusers folder")
    args = parser.parse_args(argv)
    settings = TrainingSettings(**{f.name: getattr(args, f.name) for f in fields(TrainingSettings) if f.name != "extra"})
    if settings.device == "auto":
        settings.device = "cuda" if torch.cuda.is_available() else "cpu"
    if settings.threads:
        torch.set_num_threads(settings.threads)
    start = time.time()
    if args.stage == "seed":
        try:
            step = seed_run_from_export(settings, args.seed_from)
        except (FileExistsError, ModelNotFoundError, ValueError) as error:  # ValueError: a shrinking --text-layers
            parser.error(str(error))
        print(json.dumps({"seeded": settings.run_dir, "from": args.seed_from, "unet_steps": step}), flush=True)
        return
    Path(settings.run_dir).mkdir(parents=True, exist_ok=True)
    if args.stage == "export":
        if not settings.export_dir:
            parser.error("--stage export needs --export-dir")
        try:
            step = export_from_run(settings)
        except ValueError as error:  # --text-layers that disagrees with the run's weights
            parser.error(str(error))
        print(json.dumps({"exported_step": step, "to": settings.export_dir}), flush=True)
        return
    try:
        pipe = build_run_pipeline(settings)  # as many text encoder layers as the run's weights
    except ValueError as error:  # --text-layers that disagrees with them
        parser.error(str(error))
    train_vae(pipe, settings)
    print(json.dumps({"vae_done_s": round(time.time() - start, 1), "scaling_factor": pipe.vae.config.scaling_factor}), flush=True)
    if args.stage in ("decoder", "locality", "unet", "all", "data"):
        finetune_vae_decoder(pipe, settings)  # trains up to --decoder-steps; else loads the run's fine-tuned decoder, if any
    if args.stage in ("locality", "unet", "all", "data") and (settings.locality_steps or (Path(settings.run_dir) / "vae_locality.safetensors").exists()):
        # trains up to --locality-steps; a run that has a locality-tuned VAE always uses it (its latent space)
        finetune_vae_locality(pipe, settings)  # a new encoder: the UNet stage then re-encodes its dataset
    if args.stage == "data":
        scenes, latents, coverage = training_data(pipe, settings)
        print(json.dumps({"scenes": len(scenes), "latents": list(latents.shape),
                          "coverage": None if coverage is None else list(coverage.shape)}), flush=True)
    if args.stage in ("unet", "all"):
        train_unet(pipe, settings)
    print(json.dumps({"total_s": round(time.time() - start, 1)}), flush=True)


if __name__ == "__main__":
    main()
