"""The VAE stages: training on fresh renders, fine-tuning the decoder with the encoder frozen, the held-out PSNR,
and the scaling factor of the latent space (1 / std of the trained encoder's latents)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from .data import images_to_tensor, make_dataset
from .run_folder import atomic_save_file, log_record
from .settings import TrainingSettings


def train_vae(pipe, settings: TrainingSettings) -> None:
    """Train pipe.vae on fresh renders (resumable from run_dir/vae.safetensors), then set scaling_factor.

    Loss: MSE + 0.5 L1 on a sample z ~ q(z | x), plus vae_kl_weight * KL(q(z | x) || N(0, I))."""
    Path(settings.run_dir).mkdir(parents=True, exist_ok=True)
    _fit_vae(pipe.vae.to(settings.device), settings, decoder_only=False)
    set_scaling_factor(pipe, settings)


def finetune_vae_decoder(pipe, settings: TrainingSettings) -> None:
    """Fine-tune the VAE decoder (and post_quant_conv) on deterministic latents, the encoder frozen.

    The UNet is trained on z_0 = E(x).mean, so the decoder only ever sees means: training it on exactly
    those (rather than on samples of the posterior) sharpens small objects without moving the latent
    space, so a UNet already trained on this encoder stays valid. Resumable from
    run_dir/vae_decoder.safetensors (a whole VAE state dict whose encoder equals vae.safetensors).
    """
    _fit_vae(pipe.vae.to(settings.device), settings, decoder_only=True)


def _fit_vae(vae, settings: TrainingSettings, decoder_only: bool) -> None:
    """The loop behind train_vae and finetune_vae_decoder: fresh renders each step, cosine lr, resumable
    checkpoints with the held-out PSNR in <name>_state.json. Leaves the VAE in eval mode, all parameters trainable."""
    from ..progress import progress_bar

    run_dir = Path(settings.run_dir)
    stage = "vae_decoder" if decoder_only else "vae"  # also the prefix of its checkpoint files
    steps, base_lr = (settings.decoder_steps, settings.decoder_lr) if decoder_only else (settings.vae_steps, settings.vae_lr)
    state_path, optim_path, meta_path = run_dir / f"{stage}.safetensors", run_dir / f"{stage}_optim.pt", run_dir / f"{stage}_state.json"
    trainable = list(vae.decoder.parameters()) + list(vae.post_quant_conv.parameters()) if decoder_only else list(vae.parameters())
    optimizer = torch.optim.AdamW(trainable, lr=base_lr, weight_decay=0.0)
    start = 0
    if state_path.exists():
        vae.load_state_dict(load_file(str(state_path)))
        meta = json.loads(meta_path.read_text())
        start = meta["step"]
        if meta.get("seeded_from"):  # a run seeded from an export: its VAE is final (the UNet lives in its latents)
            vae.eval()
            return
        if optim_path.exists():
            optimizer.load_state_dict(torch.load(optim_path, weights_only=True))
    if start >= steps:
        vae.eval()
        return
    held_out = images_to_tensor(make_dataset(256, seed=settings.seed + 10_000)[0]).to(settings.device)
    rng = np.random.default_rng(settings.seed + (30_000 if decoder_only else 0) + start)
    for p in vae.parameters():
        p.requires_grad_(not decoder_only)
    for p in trainable:
        p.requires_grad_(True)
    vae.train(not decoder_only)  # fine-tuning: the frozen encoder stays in eval mode
    for step in progress_bar(range(start, steps), settings.progress, desc=stage.replace("_", " ")):
        lr = base_lr * 0.5 * (1 + math.cos(math.pi * step / steps))
        for group in optimizer.param_groups:
            group["lr"] = lr
        images, _ = make_dataset(settings.vae_batch_size, seed=int(rng.integers(2**31)))
        x = images_to_tensor(images).to(settings.device)
        if decoder_only:  # the frozen encoder's mean, no KL term
            with torch.no_grad():
                z, kl_term = vae.encode(x).latent_dist.mean, 0.0
        else:
            posterior = vae.encode(x).latent_dist
            z, kl_term = posterior.sample(), settings.vae_kl_weight * posterior.kl().mean()
        reconstruction = vae.decode(z).sample
        loss = F.mse_loss(reconstruction, x) + 0.5 * F.l1_loss(reconstruction, x) + kl_term
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        done = step + 1
        if done % settings.log_every == 0 or done == steps:
            log_record(run_dir, {"stage": stage, "step": done, "loss": round(loss.item(), 5), "lr": lr})
        if done % settings.checkpoint_every == 0 or done == steps:
            vae.eval()
            psnr = vae_psnr(vae, held_out)
            vae.train(not decoder_only)
            atomic_save_file(vae.state_dict(), state_path)
            torch.save(optimizer.state_dict(), optim_path)
            meta_path.write_text(json.dumps({"step": done, "held_out_psnr": psnr}))
            log_record(run_dir, {"stage": stage, "step": done, "held_out_psnr": round(psnr, 2)})
    for p in vae.parameters():
        p.requires_grad_(True)
    vae.eval()


@torch.no_grad()
def vae_psnr(vae, images: torch.Tensor, batch_size: int = 64) -> float:
    """Mean PSNR (dB, images in [0, 1]) of the VAE round trip with deterministic latents."""
    values = []
    for i in range(0, len(images), batch_size):
        x = images[i : i + batch_size]
        y = vae.decode(vae.encode(x).latent_dist.mean).sample.clamp(-1, 1)
        mse = ((y - x) / 2).pow(2).flatten(1).mean(1)
        values.append(10 * torch.log10(1.0 / mse.clamp_min(1e-10)))
    return float(torch.cat(values).mean())


@torch.no_grad()
def set_scaling_factor(pipe, settings: TrainingSettings) -> None:
    """scaling_factor = 1 / std of the trained encoder's latents, measured once and kept in vae_state.json:
    the UNet's latent space is this scale, whatever later stages (decoder, locality) do to the VAE."""
    meta_path = Path(settings.run_dir) / "vae_state.json"
    meta = json.loads(meta_path.read_text()) if meta_path.exists() else {}
    if "scaling_factor" not in meta:
        x = images_to_tensor(make_dataset(512, seed=settings.seed + 20_000)[0]).to(settings.device)
        meta["scaling_factor"] = float(1.0 / pipe.vae.encode(x).latent_dist.mean.std())
        if meta_path.exists():
            meta_path.write_text(json.dumps(meta))
    pipe.vae.register_to_config(scaling_factor=meta["scaling_factor"])
