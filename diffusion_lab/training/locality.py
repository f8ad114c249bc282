"""VAE locality fine-tuning: pairs of renders that differ in one object, the four loss terms, the loop."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from ..shapes import edit_scene, render
from .data import images_to_tensor, make_dataset, training_scenes
from .run_folder import atomic_save_file, log_record
from .settings import TrainingSettings
from .vae import vae_psnr


def locality_pairs(count: int, rng: np.random.Generator, size: int = 64, latent_size: int = 16):
    """`count` pairs of renders A, B that differ in ONE object (its colour, shape or size, at random).

    Returns x_A, x_B (N, 3, size, size) in [-1, 1], the latent cells that object touches in A or B
    (N, 1, latent_size, latent_size) bool, and a random dilation radius of 0-2 cells per pair (the
    margin a local-blend mask adds). A local encoder changes only those cells: E(x_A) = E(x_B) elsewhere."""
    scenes = training_scenes(count, seed=int(rng.integers(2**31)))
    images_a, images_b, cells, radii = [], [], [], []
    for scene in scenes:
        index = int(rng.integers(len(scene.objects)))
        kind = ("colour", "shape", "size")[int(rng.integers(3))]
        try:
            other = edit_scene(scene, kind, object_index=index, rng=rng).target
        except ValueError:  # no room for a larger object: recolour it instead
            other = edit_scene(scene, "colour", object_index=index, rng=rng).target
        a, b = render(scene, size), render(other, size)
        touched = torch.from_numpy(a.masks[index] | b.masks[index]).float()[None, None]
        cells.append(F.adaptive_max_pool2d(touched, latent_size)[0] > 0)
        radii.append(int(rng.integers(0, 3)))
        images_a.append(a.image), images_b.append(b.image)
    return images_to_tensor(np.stack(images_a)), images_to_tensor(np.stack(images_b)), torch.stack(cells), radii


def dilate_cells(cells: torch.Tensor, radius: int) -> torch.Tensor:
    """Grow a (N, 1, h, w) bool mask by `radius` cells (a square neighbourhood)."""
    if radius <= 0:
        return cells
    return F.max_pool2d(cells.float(), 2 * radius + 1, stride=1, padding=radius) > 0


def locality_losses(vae, teacher, x_a, x_b, cells) -> dict:
    """The four terms of finetune_vae_locality for one batch of locality_pairs (unweighted).

    - reconstruction: D(E(x)) = x for A and B (MSE + 0.5 L1, as the VAE was trained);
    - locality: E(x_A) and E(x_B) differ only on the object's cells (one cell of margin allowed),
      mean squared difference outside, in units of the teacher's latent variance;
    - paste: D(E(x_A) outside, E(x_B) on the object's cells) = x_B: a local blend of a perfect edit decodes;
    - anchor: E(x) stays near the teacher's (the latent space the UNet was trained in)."""
    x = torch.cat([x_a, x_b])
    z = vae.encode(x).latent_dist.mean
    with torch.no_grad():
        z_teacher = teacher.encode(x).latent_dist.mean
    variance = z_teacher.var()
    z_a, z_b = z.chunk(2)
    decoded = vae.decode(torch.cat([z, torch.where(cells, z_b, z_a)])).sample
    reconstruction, pasted = decoded[: len(x)], decoded[len(x) :]
    outside = ~dilate_cells(cells, 1)
    difference = (z_a - z_b).pow(2) * outside
    return {
        "reconstruction": F.mse_loss(reconstruction, x) + 0.5 * F.l1_loss(reconstruction, x),
        "locality": difference.sum() / (outside.sum() * z.shape[1]).clamp_min(1) / variance,
        "paste": F.mse_loss(pasted, x_b) + 0.5 * F.l1_loss(pasted, x_b),
        "anchor": (z - z_teacher).pow(2).mean() / variance,
    }


def finetune_vae_locality(pipe, settings: TrainingSettings) -> None:
    """Fine-tune the whole VAE so that its latents are LOCAL: an object changed in the image changes
    only that object's latent cells. Prompt-to-Prompt's local blend (and every edit of a real image)
    relies on it: z = m * z_edit + (1 - m) * z_source must decode to the source outside m.

    A small VAE with GroupNorm (statistics over the whole image) and mid-block self-attention learns
    global latents from the reconstruction loss alone (a large blue circle moved the gray background's
    latents by 0.65 latent std). Loss per batch of `locality_pairs`, see `locality_losses`:
    reconstruction + locality_weight * locality + paste_weight * paste + anchor_weight * anchor.
    The teacher (anchor) is the VAE as it comes in; the UNet must be trained further on the new
    latents afterwards (train_unet re-encodes its dataset in a new run folder). Resumable from
    run_dir/vae_locality.safetensors."""
    import copy

    from ..progress import progress_bar

    run_dir = Path(settings.run_dir)
    vae = pipe.vae.to(settings.device)
    state_path, optim_path, meta_path = (run_dir / f"vae_locality{suffix}" for suffix in (".safetensors", "_optim.pt", "_state.json"))
    teacher = copy.deepcopy(vae).eval().requires_grad_(False)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=settings.locality_lr, weight_decay=0.0)
    start = 0
    if state_path.exists():
        if not meta_path.exists():
            raise FileNotFoundError(f"{state_path} has no {meta_path.name} beside it: copy both (the state file records its step)")
        vae.load_state_dict(load_file(str(state_path)))
        start = json.loads(meta_path.read_text())["step"]
        if optim_path.exists():
            optimizer.load_state_dict(torch.load(optim_path, weights_only=True))
    steps = settings.locality_steps
    if start >= steps:
        vae.eval()
        return
    held_out = images_to_tensor(make_dataset(256, seed=settings.seed + 10_000)[0]).to(settings.device)
    rng = np.random.default_rng(settings.seed + 40_000 + start)
    latent_size = pipe.unet.config.sample_size
    vae.requires_grad_(True).train()
    for step in progress_bar(range(start, steps), settings.progress, desc="vae locality"):
        lr = settings.locality_lr * 0.5 * (1 + math.cos(math.pi * step / steps))
        for group in optimizer.param_groups:
            group["lr"] = lr
        x_a, x_b, cells, _ = locality_pairs(settings.locality_batch_size, rng, size=held_out.shape[-1], latent_size=latent_size)
        terms = locality_losses(vae, teacher, x_a.to(settings.device), x_b.to(settings.device), cells.to(settings.device))
        loss = (terms["reconstruction"] + settings.locality_weight * terms["locality"] + settings.paste_weight * terms["paste"]
                + settings.anchor_weight * terms["anchor"])
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        done = step + 1
        if done % settings.log_every == 0 or done == steps:
            log_record(run_dir, {"stage": "vae_locality", "step": done, "lr": lr, **{k: round(v.item(), 5) for k, v in terms.items()}})
        if done % settings.checkpoint_every == 0 or done == steps:
            vae.eval()
            psnr = vae_psnr(vae, held_out)
            vae.train()
            atomic_save_file(vae.state_dict(), state_path)
            torch.save(optimizer.state_dict(), optim_path)
            meta_path.write_text(json.dumps({"step": done, "held_out_psnr": psnr}))
            log_record(run_dir, {"stage": "vae_locality", "step": done, "held_out_psnr": round(psnr, 2)})
    vae.eval()
