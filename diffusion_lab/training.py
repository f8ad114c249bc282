"""Training shapes-tiny: a VAE on renders, then the UNet and text encoder on cached latents.

Recipe (see the model card for the measured effect of each choice):
- VAE: MSE + L1 reconstruction with a tiny KL weight, so latents are nearly deterministic; the UNet
  is trained on `latent_dist.mean` (cached once), scaled by `vae.config.scaling_factor` = 1 / std.
- UNet: epsilon prediction on the Stable Diffusion schedule (scaled_linear, 1000 steps), as DDPM
  (Ho et al. 2020) with
  - offset noise 0.1 (the background colour otherwise leaks from x_T, whose SNR is not zero),
  - min-SNR-gamma loss weighting, gamma = 5 (Hang et al. 2023, arXiv:2303.09556), which speeds up
    convergence by not over-weighting the low-noise steps,
  - 10% empty captions, so classifier-free guidance (Ho & Salimans 2022) works,
  - EMA of the weights (decay 0.999); the EMA weights are what ships,
  - optionally (grounding_weight > 0) a token grounding loss on the cross-attention maps, as in
    TokenCompose (Wang et al. 2024, arXiv:2312.03626): the renderer knows where every object is, so
    each attribute word is told to put its attention on its own object (and the background colour
    word on the background). Prompt-to-Prompt then finds the layout in the maps of every layer.
Text encoder: shipped with no transformer layer (each word embedded without context); a seeded run can be
grown by identity-initialised causal layers (grow_text_encoder), and its layer count is read from its weights.
Checkpoints are safetensors (weights) plus a weights_only torch file (optimizer state) in a run
folder, so training resumes exactly; `export_pipeline` writes the diffusers folder atomically.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from .attention.controllers import AttentionController
from .attention.processor import register_attention_control
from .posterior import forward_marginal_sample
from .shapes import analyze, caption, edit_scene, random_scene, render


# ---------------------------------------------------------------------------------------------- data
def training_scenes(num_scenes: int, seed: int, object_weights=(0.5, 0.4, 0.1)) -> list:
    """`num_scenes` random scenes with 1, 2 or 3 objects in the proportions `object_weights`, from `seed`."""
    rng = np.random.default_rng(seed)
    probabilities = np.asarray(object_weights) / sum(object_weights)
    return [random_scene(rng, num_objects=int(rng.choice(len(object_weights), p=probabilities)) + 1) for _ in range(num_scenes)]


def make_dataset(num_scenes: int, seed: int, size: int = 64, object_weights=(0.5, 0.4, 0.1), progress: bool = False):
    """Render `num_scenes` random scenes: returns (images uint8 (N, H, W, 3), scenes)."""
    from .progress import progress_bar

    scenes = training_scenes(num_scenes, seed, object_weights)
    images = np.empty((num_scenes, size, size, 3), np.uint8)
    for i in progress_bar(range(num_scenes), progress, desc="render"):
        images[i] = render(scenes[i], size).image
    return images, scenes


def images_to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float (N, 3, H, W) in [-1, 1], the VAE's input range."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def training_captions(
    scenes, rng: np.random.Generator, drop_attribute: float = 0.1, drop_caption: float = 0.1, position_rate: float = 0.0
) -> list[str]:
    """Captions as training sees them: attributes left out at random, some captions empty (for CFG), and
    with probability `position_rate` a caption that names every object's grid cell ("at the top left").
    Scenes of three objects never name positions: their caption would pass the text encoder's 32 tokens.

    With position_rate 0 the random draws are those of runs made before positions were trained."""
    out = []
    for scene in scenes:
        if rng.random() < drop_caption:
            out.append("")
        else:
            with_position = position_rate > 0 and rng.random() < position_rate and len(scene.objects) <= 2
            out.append(caption(scene, include_position=with_position, drop_probability=drop_attribute, rng=rng))
    return out


def tokenize(tokenizer, prompts: list[str]) -> torch.Tensor:
    return tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt").input_ids


# ----------------------------------------------------------------------------------------- settings
@dataclass
class TrainingSettings:
    run_dir: str = "train_runs/shapes-tiny"
    export_dir: Optional[str] = None  # diffusers folder written with the EMA weights
    seed: int = 0
    device: str = "cpu"
    threads: int = 0  # 0: leave torch's default
    # VAE
    vae_steps: int = 4000
    vae_batch_size: int = 32
    vae_lr: float = 1e-3
    vae_kl_weight: float = 1e-6
    # VAE decoder fine-tuning with the encoder frozen: sharper images, same latent space (the UNet stays valid)
    decoder_steps: int = 0
    decoder_lr: float = 5e-4
    # VAE locality fine-tuning (finetune_vae_locality): the whole VAE, then the UNet must follow
    locality_steps: int = 0
    locality_batch_size: int = 16  # pairs
    locality_lr: float = 2e-4
    locality_weight: float = 1.0
    paste_weight: float = 1.0
    anchor_weight: float = 0.01
    # UNet + text encoder
    num_scenes: int = 30000
    unet_steps: int = 9000
    batch_size: int = 64
    lr: float = 1e-3
    min_lr: float = 1e-4
    warmup_steps: int = 200
    offset_noise: float = 0.1
    min_snr_gamma: float = 5.0
    caption_dropout: float = 0.1
    attribute_dropout: float = 0.1
    position_caption_rate: float = 0.0  # share of captions that name each object's grid cell ("at the top left")
    ema_decay: float = 0.999
    # --stage seed: grow the exported text encoder to this many transformer layers (grow_text_encoder; 0: keep its layers)
    text_layers: int = 0
    # learning rate of the text encoder's transformer layers relative to --lr (a layer grown from zero learns slowly)
    text_layer_lr_scale: float = 1.0
    grounding_weight: float = 0.0  # > 0: add the token grounding loss of the cross-attention maps (see grounding_loss)
    grounding_max_timestep: int = 1000  # ground only the noise levels t < this (layout is unknowable from pure noise)
    checkpoint_every: int = 250
    export_every: int = 500
    eval_every: int = 1000
    eval_samples: int = 64
    log_every: int = 50
    max_minutes: float = 0.0  # > 0: stop the UNet stage (with a checkpoint) after this much wall time
    data_workers: int = 0  # > 0: build the UNet stage's batches in this many worker processes (TrainingBatches)
    progress: bool = True
    extra: dict = field(default_factory=dict)


def _log(run_dir: Path, record: dict) -> None:
    record = {"time": round(time.time(), 1), **record}
    with open(run_dir / "log.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")
    print(json.dumps(record), flush=True)


def _atomic_save_file(tensors: dict, path: Path, metadata: Optional[dict] = None) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp), metadata=metadata)
    os.replace(tmp, path)


def encoder_fingerprint(vae) -> str:
    """A short hash of what defines the latent space: the encoder, quant_conv and the scaling factor.
    A latent cache made by another encoder (e.g. before a locality fine-tune) is never reused."""
    import hashlib

    digest = hashlib.sha256(repr(float(vae.config.scaling_factor)).encode())
    for name, tensor in sorted(vae.state_dict().items()):
        if name.startswith(("encoder.", "quant_conv.")):
            digest.update(name.encode())
            digest.update(tensor.detach().float().cpu().numpy().tobytes())
    return digest.hexdigest()[:16]


def _cache_fingerprint(path: Path) -> Optional[str]:
    """The encoder_fingerprint a latent cache was written with (None: no cache, or one from before fingerprints)."""
    if not path.exists():
        return None
    with safe_open(str(path), framework="pt") as f:
        return (f.metadata() or {}).get("encoder_fingerprint")


# ------------------------------------------------------------------------------------------------ VAE
def train_vae(pipe, settings: TrainingSettings) -> None:
    """Train pipe.vae on fresh renders (resumable from run_dir/vae.safetensors), then set scaling_factor.

    Loss: MSE + 0.5 L1 on a sample z ~ q(z | x), plus vae_kl_weight * KL(q(z | x) || N(0, I))."""
    Path(settings.run_dir).mkdir(parents=True, exist_ok=True)
    _fit_vae(pipe.vae.to(settings.device), settings, decoder_only=False)
    _set_scaling_factor(pipe, settings)


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
    from .progress import progress_bar

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
            _log(run_dir, {"stage": stage, "step": done, "loss": round(loss.item(), 5), "lr": lr})
        if done % settings.checkpoint_every == 0 or done == steps:
            vae.eval()
            psnr = vae_psnr(vae, held_out)
            vae.train(not decoder_only)
            _atomic_save_file(vae.state_dict(), state_path)
            torch.save(optimizer.state_dict(), optim_path)
            meta_path.write_text(json.dumps({"step": done, "held_out_psnr": psnr}))
            _log(run_dir, {"stage": stage, "step": done, "held_out_psnr": round(psnr, 2)})
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
def _set_scaling_factor(pipe, settings: TrainingSettings) -> None:
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


# --------------------------------------------------------------------------------------- VAE locality
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

    from .progress import progress_bar

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
            _log(run_dir, {"stage": "vae_locality", "step": done, "lr": lr, **{k: round(v.item(), 5) for k, v in terms.items()}})
        if done % settings.checkpoint_every == 0 or done == steps:
            vae.eval()
            psnr = vae_psnr(vae, held_out)
            vae.train()
            _atomic_save_file(vae.state_dict(), state_path)
            torch.save(optimizer.state_dict(), optim_path)
            meta_path.write_text(json.dumps({"step": done, "held_out_psnr": psnr}))
            _log(run_dir, {"stage": "vae_locality", "step": done, "held_out_psnr": round(psnr, 2)})
    vae.eval()


# -------------------------------------------------------------------------------------- text encoder
def grow_text_encoder(text_encoder, num_layers: int):
    """A CLIPTextModel with `num_layers` transformer layers that computes exactly what `text_encoder` does.

    The existing weights (embeddings, layers, final layer norm) are copied; each new layer is appended with
    the output projections of its attention (self_attn.out_proj) and of its MLP (mlp.fc2) zeroed. CLIP layers
    are pre-LayerNorm residual blocks, h + attn(ln1(h)) then h + mlp(ln2(h)), so a new layer adds exactly
    zero: training resumes from the same function, and the gradient into the zeroed projections is not
    zero, so the layer starts learning at once. The layers are causal: a word sees the words before it
    ("circle" the "red" of "a red circle"), which a 0-layer encoder cannot."""
    import copy

    from transformers import CLIPTextModel

    old_layers = text_encoder.config.num_hidden_layers
    if num_layers < old_layers:
        raise ValueError(f"the text encoder has {old_layers} layers: it can grow, not shrink to {num_layers}")
    config = copy.deepcopy(text_encoder.config)
    config.num_hidden_layers = num_layers
    grown = CLIPTextModel(config)
    missing, unexpected = grown.load_state_dict(text_encoder.state_dict(), strict=False)
    new_prefixes = tuple(f"encoder.layers.{i}." for i in range(old_layers, num_layers))  # transformers 5: no text_model.
    if unexpected or not all(key.startswith(new_prefixes) for key in missing):  # not a CLIPTextModel of this layout
        raise RuntimeError(f"cannot grow this text encoder: missing {missing[:3]}, unexpected {unexpected[:3]}")
    with torch.no_grad():
        for layer in grown.encoder.layers[old_layers:]:
            for projection in (layer.self_attn.out_proj, layer.mlp.fc2):
                projection.weight.zero_()
                projection.bias.zero_()
    parameter = next(text_encoder.parameters())
    return grown.to(device=parameter.device, dtype=parameter.dtype).train(text_encoder.training)


TEXT_LAYER_PREFIX = "text_encoder.encoder.layers."  # a layer's weights in a run file (transformers 5 key names)


def text_layers_of_run(run_dir) -> Optional[int]:
    """The number of transformer layers of a run's text encoder, read from its weights (None: no weights yet).

    A run grown at seeding keeps no config of its own: its weights are the record, so every stage builds
    the pipeline that loads them (counts the distinct `text_encoder.encoder.layers.<i>.`)."""
    for name in ("unet_text.safetensors", "unet_text_ema.safetensors"):
        path = Path(run_dir) / name
        if path.exists():
            with safe_open(str(path), framework="pt") as f:
                return len({key[len(TEXT_LAYER_PREFIX) :].split(".")[0] for key in f.keys() if key.startswith(TEXT_LAYER_PREFIX)})
    return None


def build_run_pipeline(settings: TrainingSettings):
    """The untrained pipeline whose architecture fits settings.run_dir: its text encoder has as many layers as
    the run's weights (settings.text_layers for a run that has none yet, i.e. one trained from scratch).

    Layers are grown only when seeding (seed_run_from_export): a --text-layers that disagrees with an existing
    run's weights is an error, not a silent rebuild."""
    from .models.shapes_tiny import build_untrained_pipeline

    layers = text_layers_of_run(settings.run_dir)
    if layers is not None and settings.text_layers and settings.text_layers != layers:
        raise ValueError(f"{settings.run_dir} has a text encoder of {layers} layers, not {settings.text_layers}: "
                         "--text-layers grows a run only when seeding it (--stage seed into an empty folder)")
    return build_untrained_pipeline(seed=settings.seed, text_layers=settings.text_layers if layers is None else layers)


# ----------------------------------------------------------------------------------------------- UNet
@torch.no_grad()
def encode_dataset(vae, images: np.ndarray, device: str, batch_size: int = 128, progress: bool = False) -> torch.Tensor:
    from .progress import progress_bar

    out = []
    for i in progress_bar(range(0, len(images), batch_size), progress, desc="encode"):
        x = images_to_tensor(images[i : i + batch_size]).to(device)
        out.append((vae.encode(x).latent_dist.mean * vae.config.scaling_factor).cpu())
    return torch.cat(out)


def min_snr_weights(alphas_cumprod: torch.Tensor, timesteps: torch.Tensor, gamma: float) -> torch.Tensor:
    """Loss weight min(SNR_t, gamma) / SNR_t for epsilon prediction, SNR_t = alpha_bar_t / (1 - alpha_bar_t)."""
    alpha_bar = alphas_cumprod[timesteps]
    snr = alpha_bar / (1 - alpha_bar)
    return torch.clamp(snr, max=gamma) / snr


# ------------------------------------------------------------------------------------------ grounding
def object_coverage(scenes, latent_size: int = 16, image_size: int = 64, progress: bool = False) -> torch.Tensor:
    """Per scene and object, the share of each latent cell its mask covers: (N, MAX_OBJECTS, h, h) float16."""
    from .progress import progress_bar
    from .shapes import MAX_OBJECTS

    factor = image_size // latent_size
    out = torch.zeros(len(scenes), MAX_OBJECTS, latent_size, latent_size, dtype=torch.float16)
    for i in progress_bar(range(len(scenes)), progress, desc="masks"):
        masks = torch.from_numpy(render(scenes[i], image_size).masks).float()  # (objects, H, W)
        out[i, : len(masks)] = F.avg_pool2d(masks[:, None], factor)[:, 0].half()
    return out


OBJECT_WORD, BACKGROUND_WORD = 1, 2  # the kinds of supervised tokens of word_regions


def word_regions(
    prompts: list[str],
    coverage: torch.Tensor,
    num_tokens: int,
    timesteps: torch.Tensor | None = None,
    max_timestep: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Where each token of each prompt belongs, for the grounding loss.

    coverage: (B, MAX_OBJECTS, h, w), the objects' cell coverage of each prompt's scene. timesteps (B,) and
    max_timestep: rows noised to t >= max_timestep supervise no word (near pure noise the layout is not yet
    decided, so there is nothing to ground). Returns
    regions (B, tokens, h, w) in [0, 1] (an attribute word: its object's coverage; the background
    colour word: 1 - all objects' coverage) and kinds (B, tokens) int: 0 for tokens without a region,
    OBJECT_WORD or BACKGROUND_WORD. Token i + 1 is word i (bos first): the word-level tokenizer of
    shapes-tiny gives every word exactly one token.
    """
    from .shapes import BACKGROUND_OWNER, word_owners

    batch, _, h, w = coverage.shape
    regions = torch.zeros(batch, num_tokens, h, w)
    kinds = torch.zeros(batch, num_tokens, dtype=torch.long)
    for b, prompt in enumerate(prompts):
        for i, owner in enumerate(word_owners(prompt)):
            if owner is None or i + 1 >= num_tokens:
                continue
            if owner == BACKGROUND_OWNER:
                regions[b, i + 1] = (1 - coverage[b].float().sum(0)).clamp_min(0)
                kinds[b, i + 1] = BACKGROUND_WORD
            else:
                regions[b, i + 1] = coverage[b, owner].float()
                kinds[b, i + 1] = OBJECT_WORD
    if timesteps is not None and max_timestep is not None:
        kinds[timesteps.cpu() >= max_timestep] = 0
    return regions, kinds


def grounding_loss(maps: list[torch.Tensor], regions: torch.Tensor, kinds: torch.Tensor) -> torch.Tensor:
    """Token grounding loss of TokenCompose (Wang et al. 2024, arXiv:2312.03626), per layer and word:

        L = mean over layers l and supervised words w of (1 - sum_{p in M_w} A^l_w(p) / sum_p A^l_w(p))^2

    A^l_w(p) is the cross-attention probability of word w at position p in layer l (averaged over
    heads), M_w the word's region at that layer's size: every cell its object touches for an
    attribute word, every cell at least half background for the background word. L = 0 when all of
    each word's attention lies on its region.

    maps: (B, heads, HW, tokens) per cross-attention layer (square maps); regions (B, tokens, h, w)
    from word_regions, kinds (B, tokens).
    """
    supervised = kinds > 0
    if not supervised.any():
        return sum(m.sum() for m in maps) * 0.0
    losses, region_at_side = [], {}
    for attention in maps:
        side = math.isqrt(attention.shape[2])
        if side not in region_at_side:  # several layers share a map size
            pooled = F.adaptive_avg_pool2d(regions, side).flatten(2).to(attention.device)  # (B, tokens, HW)
            is_background = (kinds == BACKGROUND_WORD)[..., None].to(attention.device)
            region_at_side[side] = torch.where(is_background, pooled >= 0.5, pooled > 0)
        region = region_at_side[side]
        per_word = attention.mean(1).transpose(1, 2)  # (B, heads, HW, tokens) -> (B, tokens, HW)
        inside = (per_word * region).sum(-1) / per_word.sum(-1).clamp_min(1e-8)  # (B, tokens)
        losses.append(((1 - inside) ** 2)[supervised.to(attention.device)].mean())
    return torch.stack(losses).mean()


class CrossAttentionRecorder(AttentionController):
    """Keeps the cross-attention probabilities of one UNet call, graph included, for grounding_loss.

    Installed with `register_attention_control` around a training forward (no classifier-free
    guidance batch: every row is conditional); self-attention keeps diffusers' fused kernel."""

    def __init__(self, batch_size: int):
        super().__init__()
        self.set_batch_layout(batch_size, has_uncond=False)
        self.maps: list[torch.Tensor] = []

    def controls_layer(self, layer_name: str, place_in_unet: str, is_cross: bool) -> bool:
        return is_cross

    def forward(self, conditional, is_cross, place_in_unet, layer_name):
        self.maps.append(conditional)  # (B, heads, HW, tokens)
        return conditional


class ExponentialMovingAverage:
    def __init__(self, modules: dict, decay: float):
        self.decay = decay
        self.shadow = {f"{name}.{k}": v.detach().clone().float() for name, m in modules.items() for k, v in m.state_dict().items()}

    @torch.no_grad()
    def update(self, modules: dict, step: int) -> None:
        decay = min(self.decay, (1 + step) / (10 + step))
        shadows, values = [], []
        for name, m in modules.items():
            for k, v in m.state_dict().items():
                s = self.shadow[f"{name}.{k}"]
                if v.dtype.is_floating_point:
                    shadows.append(s)
                    values.append(v.float())
                else:
                    s.copy_(v)
        torch._foreach_lerp_(shadows, values, 1 - decay)  # s <- decay * s + (1 - decay) * v, one kernel per group

    def copy_to(self, modules: dict) -> None:
        for name, m in modules.items():
            m.load_state_dict({k[len(name) + 1 :]: v for k, v in self.shadow.items() if k.startswith(name + ".")})


class TrainingBatches(torch.utils.data.IterableDataset):
    """The UNet stage's batches for steps [start, stop), each a function of (seed, step) alone.

    Batch k holds the scene indices, the captions as training sees them (training_captions), their
    token ids, the timesteps t ~ U{0, T-1}, the noise eps ~ N(0, I) plus offset noise, and, for the
    grounding loss, each token's region (word_regions). Because batch k does not depend on the batches
    before it, a resumed run sees the batches an uninterrupted one would, and DataLoader worker processes
    can build them in parallel (worker w builds steps start + w, start + w + W, ...; the DataLoader
    hands them out in step order). On a GPU, building the batches in the training process (captions,
    tokenizing, the word regions) takes longer than the UNet's step; `settings.data_workers` moves it out.
    """

    def __init__(self, scenes, coverage, tokenizer, settings: TrainingSettings, latent_shape, num_train_timesteps: int,
                 start: int, stop: int):
        super().__init__()
        self.scenes, self.coverage, self.tokenizer, self.settings = scenes, coverage, tokenizer, settings
        self.latent_shape, self.num_train_timesteps = tuple(latent_shape), num_train_timesteps
        self.start, self.stop = start, stop

    def __len__(self) -> int:
        return max(0, self.stop - self.start)

    def batch(self, step: int) -> dict:
        s = self.settings
        rng = np.random.default_rng([s.seed, step])
        generator = torch.Generator().manual_seed(int(rng.integers(2**62)))
        index = rng.integers(0, len(self.scenes), s.batch_size)
        prompts = training_captions([self.scenes[i] for i in index.tolist()], rng, s.attribute_dropout,
                                    s.caption_dropout, s.position_caption_rate)
        shape = (s.batch_size, *self.latent_shape)
        noise = torch.randn(shape, generator=generator)
        noise = noise + s.offset_noise * torch.randn(shape[:2] + (1, 1), generator=generator)  # offset noise
        timesteps = torch.randint(0, self.num_train_timesteps, (s.batch_size,), generator=generator)
        input_ids = tokenize(self.tokenizer, prompts)
        batch = {"step": step, "index": torch.from_numpy(index), "input_ids": input_ids, "noise": noise,
                 "timesteps": timesteps, "prompts": prompts}
        if self.coverage is not None:
            batch["regions"], batch["kinds"] = word_regions(prompts, self.coverage[torch.from_numpy(index)],
                                                            input_ids.shape[1], timesteps, s.grounding_max_timestep)
        return batch

    def __iter__(self):
        info = torch.utils.data.get_worker_info()
        worker, workers = (0, 1) if info is None else (info.id, info.num_workers)
        for step in range(self.start + worker, self.stop, workers):
            yield self.batch(step)


def training_batch_loader(batches: TrainingBatches, workers: int):
    """`batches` in step order, built in `workers` processes (0: in this one)."""
    if workers <= 0:
        return iter(batches)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # the tokenizer is used in forked workers
    return iter(torch.utils.data.DataLoader(batches, batch_size=None, num_workers=workers, prefetch_factor=4,
                                            worker_init_fn=_one_thread))


def _one_thread(worker_id: int) -> None:
    torch.set_num_threads(1)  # a worker's tensors are small; many workers with many threads each fight for the cores


def training_data(pipe, settings: TrainingSettings):
    """The UNet stage's dataset, cached in the run folder: (scenes, latents (N, C, h, w), coverage or None).

    Latents are the VAE encoder's (re-encoded when the run's encoder changed: the cache keeps its
    fingerprint); the objects' cell coverage (object_coverage) only where the grounding loss needs it."""
    run_dir = Path(settings.run_dir)
    vae = pipe.vae.to(settings.device)
    cache = run_dir / f"latents_{settings.num_scenes}_{settings.seed}.safetensors"
    fingerprint = encoder_fingerprint(vae)
    if _cache_fingerprint(cache) == fingerprint:
        scenes = training_scenes(settings.num_scenes, seed=settings.seed)
        latents = load_file(str(cache))["latents"]
    else:
        if cache.exists():
            print(f"{cache.name} was encoded by another VAE encoder than this run's: encoding the dataset again", flush=True)
        images, scenes = make_dataset(settings.num_scenes, seed=settings.seed, progress=settings.progress)
        latents = encode_dataset(vae, images, settings.device, progress=settings.progress)
        _atomic_save_file({"latents": latents}, cache, metadata={"encoder_fingerprint": fingerprint})
        del images
    coverage = None
    if settings.grounding_weight > 0:
        coverage_cache = run_dir / f"coverage_{settings.num_scenes}_{settings.seed}.safetensors"
        if coverage_cache.exists():
            coverage = load_file(str(coverage_cache))["coverage"]
        else:
            coverage = object_coverage(scenes, latent_size=latents.shape[-1], progress=settings.progress)
            _atomic_save_file({"coverage": coverage}, coverage_cache)
    return scenes, latents, coverage


def train_unet(pipe, settings: TrainingSettings) -> None:
    """Train pipe.unet and pipe.text_encoder on cached latents (resumable from run_dir).

    The pipeline must have the run's text encoder layers (build_run_pipeline builds it so)."""
    from .progress import progress_bar

    run_dir = Path(settings.run_dir)
    run_layers = text_layers_of_run(run_dir)
    if run_layers is not None and run_layers != pipe.text_encoder.config.num_hidden_layers:
        raise ValueError(f"{run_dir} has a text encoder of {run_layers} layers but the pipeline's has "
                         f"{pipe.text_encoder.config.num_hidden_layers}: build it with build_run_pipeline(settings)")
    device = settings.device
    unet, text_encoder, vae = pipe.unet.to(device), pipe.text_encoder.to(device), pipe.vae.to(device)
    modules = {"unet": unet, "text_encoder": text_encoder}
    params = list(unet.parameters()) + list(text_encoder.parameters())
    layer_params = list(text_encoder.encoder.layers.parameters())
    layer_ids = {id(p) for p in layer_params}
    groups = [{"params": [p for p in params if id(p) not in layer_ids]}]
    if layer_params:  # a second group only where there are layers: runs without them keep their optimizer state
        groups.append({"params": layer_params})
    lr_scales = [1.0, settings.text_layer_lr_scale][: len(groups)]
    optimizer = torch.optim.AdamW(groups, lr=settings.lr, weight_decay=0.01)
    state_path, ema_path = run_dir / "unet_text.safetensors", run_dir / "unet_text_ema.safetensors"
    optim_path, meta_path = run_dir / "unet_optim.pt", run_dir / "unet_state.json"
    ema = ExponentialMovingAverage(modules, settings.ema_decay)
    start = warmup_start = 0
    if state_path.exists():
        weights = load_file(str(state_path))
        for name, m in modules.items():
            m.load_state_dict({k[len(name) + 1 :]: v for k, v in weights.items() if k.startswith(name + ".")})
        ema.shadow = {k: v.to(device) for k, v in load_file(str(ema_path)).items()}
        start = json.loads(meta_path.read_text())["step"]
        restored = False
        if optim_path.exists():
            try:
                optimizer.load_state_dict(torch.load(optim_path, weights_only=True))
                restored = True
            except ValueError as error:  # saved before the text layers had a parameter group of their own
                print(f"{optim_path.name} does not fit this optimizer ({error}): Adam starts afresh", flush=True)
        if not restored:  # weights without optimizer state (e.g. brought back from another machine): warm Adam up again
            warmup_start = start
    if start >= settings.unet_steps:
        ema.copy_to(modules)
        return

    scenes, latents, coverage = training_data(pipe, settings)
    latents = latents.to(device)  # (N, C, h, w): small enough to live on the device
    alphas_cumprod = pipe.scheduler.alphas_cumprod.to(device)
    num_train_timesteps = len(alphas_cumprod)
    batches = TrainingBatches(scenes, coverage, pipe.tokenizer, settings, latents.shape[1:], num_train_timesteps,
                              start, settings.unet_steps)
    loader = training_batch_loader(batches, settings.data_workers)
    unet.train()
    text_encoder.train()
    bar = progress_bar(range(start, settings.unet_steps), settings.progress, desc="unet")
    started = time.time()
    for step in bar:
        batch = next(loader)
        if batch["step"] != step:  # DataLoader hands out its workers' batches in turn: step order
            raise RuntimeError(f"the batch loader gave step {batch['step']} at step {step}")
        progress = max(0, step - settings.warmup_steps) / max(1, settings.unet_steps - settings.warmup_steps)
        lr = settings.min_lr + (settings.lr - settings.min_lr) * 0.5 * (1 + math.cos(math.pi * progress))  # cosine
        if step - warmup_start < settings.warmup_steps:  # linear warm-up (at the start, or after a fresh optimizer)
            lr *= (step - warmup_start + 1) / settings.warmup_steps
        for group, scale in zip(optimizer.param_groups, lr_scales):
            group["lr"] = lr * scale
        z0 = latents[batch["index"].to(device)]
        text = text_encoder(batch["input_ids"].to(device))[0]
        noise, t = batch["noise"].to(device), batch["timesteps"].to(device)
        zt = forward_marginal_sample(z0, alphas_cumprod[t], noise)  # q(z_t | z_0), one alpha_bar_t per row
        recorder = CrossAttentionRecorder(len(z0)) if coverage is not None else None
        with register_attention_control(unet, recorder) if recorder is not None else contextlib.nullcontext():
            prediction = unet(zt, t, encoder_hidden_states=text).sample
        per_sample = (prediction.float() - noise).pow(2).flatten(1).mean(1)
        denoising_loss = (per_sample * min_snr_weights(alphas_cumprod, t, settings.min_snr_gamma).float()).mean()
        loss = denoising_loss
        if coverage is not None:
            grounding = grounding_loss(recorder.maps, batch["regions"].to(device), batch["kinds"].to(device))
            loss = denoising_loss + settings.grounding_weight * grounding
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        ema.update(modules, step)
        done = step + 1
        out_of_time = settings.max_minutes > 0 and time.time() - started > 60 * settings.max_minutes
        if done % settings.log_every == 0 or out_of_time:
            record = {"stage": "unet", "step": done, "loss": round(denoising_loss.item(), 5), "lr": round(lr, 6),
                      "seconds": round(time.time() - started, 1)}
            if coverage is not None:
                record["grounding_loss"] = round(grounding.item(), 4)
            _log(run_dir, record)
        if done % settings.checkpoint_every == 0 or done == settings.unet_steps or out_of_time:
            _atomic_save_file({f"{n}.{k}": v for n, m in modules.items() for k, v in m.state_dict().items()}, state_path)
            _atomic_save_file(ema.shadow, ema_path)
            torch.save(optimizer.state_dict(), optim_path)
            meta_path.write_text(json.dumps({"step": done, "settings": asdict(settings)}))
        if settings.export_dir and (done % settings.export_every == 0 or done == settings.unet_steps or out_of_time):
            export_pipeline(pipe, ema, modules, settings.export_dir, run_training_info(run_dir, done))
        if settings.eval_every and (done % settings.eval_every == 0 or done == settings.unet_steps):
            metrics = evaluate_one_object(pipe, ema, modules, settings)
            _log(run_dir, {"stage": "eval", "step": done, **metrics})
        if out_of_time:
            _log(run_dir, {"stage": "unet", "step": done, "stopped": f"max_minutes={settings.max_minutes} reached"})
            break
    ema.copy_to(modules)
    unet.eval()
    text_encoder.eval()


def _swap_in_ema(ema, modules):
    saved = {name: {k: v.detach().clone() for k, v in m.state_dict().items()} for name, m in modules.items()}
    ema.copy_to(modules)
    return saved


def _restore(modules, saved):
    for name, m in modules.items():
        m.load_state_dict(saved[name])


def export_pipeline(pipe, ema, modules, export_dir: str, info: dict) -> None:
    """Write the pipeline with EMA weights to `export_dir` atomically (safetensors only)."""
    saved = _swap_in_ema(ema, modules)
    try:
        target = Path(export_dir)
        tmp = Path(tempfile.mkdtemp(prefix=".export-", dir=target.parent))
        pipe.save_pretrained(tmp, safe_serialization=True)
        (tmp / "training_info.json").write_text(json.dumps(info, indent=1))
        card = target / "README.md"
        if card.exists():
            shutil.copy(card, tmp / "README.md")
        old = target.with_name(target.name + ".old")
        if target.exists():
            os.replace(target, old)
        os.replace(tmp, target)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        _restore(modules, saved)


def one_object_accuracy(images: np.ndarray, scenes) -> dict:
    """Per-attribute accuracy of the analyzer on images generated from one-object captions."""
    correct = {"shape": 0, "colour": 0, "size": 0, "background": 0, "count": 0}
    for image, scene in zip(images, scenes):
        analysis = analyze(image)
        correct["background"] += analysis.background == scene.background
        correct["count"] += len(analysis.objects) == 1
        if analysis.objects:
            found, want = analysis.objects[0], scene.objects[0]
            correct["shape"] += found.shape == want.shape
            correct["colour"] += found.colour == want.colour
            correct["size"] += found.size == want.size
    return {k: round(v / len(scenes), 3) for k, v in correct.items()}


def evaluate_one_object(pipe, ema, modules, settings: TrainingSettings) -> dict:
    saved = _swap_in_ema(ema, modules)
    for m in modules.values():
        m.eval()
    try:
        rng = np.random.default_rng(12345)
        scenes = [random_scene(rng, num_objects=1) for _ in range(settings.eval_samples)]
        from .generation import text_to_image

        images = text_to_image(pipe, [caption(s) for s in scenes], num_steps=25, guidance_scale=5.0, seed=0, progress=False).images
        return one_object_accuracy(images, scenes)
    finally:
        _restore(modules, saved)
        for m in modules.values():
            m.train()


def export_from_run(settings: TrainingSettings) -> int:
    """Export the EMA weights of the latest checkpoint in settings.run_dir to settings.export_dir; returns its step."""
    run_dir = Path(settings.run_dir)
    pipe = build_run_pipeline(settings)  # as many text layers as the run's weights: the export's config says so
    pipe.vae.load_state_dict(load_file(str(run_dir / "vae.safetensors")))
    pipe.vae.eval()
    _set_scaling_factor(pipe, settings)  # the one the UNet was trained with (vae_state.json)
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
    from .models.loading import BUILTIN_MODELS, load_pipeline

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
    _atomic_save_file(weights, run_dir / "unet_text.safetensors")
    _atomic_save_file({k: v.float() if v.dtype.is_floating_point else v for k, v in weights.items()}, run_dir / "unet_text_ema.safetensors")
    (run_dir / "unet_state.json").write_text(json.dumps({"step": step, "settings": asdict(settings), "seeded_from": str(export_dir)}))
    _atomic_save_file(pipe.vae.state_dict(), run_dir / "vae.safetensors")
    # The exported VAE is final in the seeded run (_fit_vae trains neither stage further): the UNet lives in its latents.
    (run_dir / "vae_state.json").write_text(json.dumps({"step": int(info.get("vae_steps", 0)), "seeded_from": str(export_dir),
                                                      "scaling_factor": pipe.vae.config.scaling_factor}))
    _atomic_save_file(pipe.vae.state_dict(), run_dir / "vae_decoder.safetensors")
    decoder_steps = int(info.get("vae_decoder_steps", 0))
    (run_dir / "vae_decoder_state.json").write_text(json.dumps({"step": decoder_steps, "seeded_from": str(export_dir)}))
    if "vae_locality_steps" in info:  # its whole VAE was fine-tuned for locality: so is the run's
        _atomic_save_file(pipe.vae.state_dict(), run_dir / "vae_locality.safetensors")
        (run_dir / "vae_locality_state.json").write_text(json.dumps({"step": int(info["vae_locality_steps"]), "seeded_from": str(export_dir)}))
    return step
