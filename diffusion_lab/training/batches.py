"""The UNet stage's data: the latents (and the objects' cell coverage) cached in the run folder, and the batches
drawn from them, each a function of (seed, step) alone."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from .data import images_to_tensor, make_dataset, tokenize, training_captions, training_scenes
from .grounding import object_coverage, word_regions
from .run_folder import atomic_save_file
from .settings import TrainingSettings


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


@torch.no_grad()
def encode_dataset(vae, images: np.ndarray, device: str, batch_size: int = 128, progress: bool = False) -> torch.Tensor:
    from ..progress import progress_bar

    out = []
    for i in progress_bar(range(0, len(images), batch_size), progress, desc="encode"):
        x = images_to_tensor(images[i : i + batch_size]).to(device)
        out.append((vae.encode(x).latent_dist.mean * vae.config.scaling_factor).cpu())
    return torch.cat(out)


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
        atomic_save_file({"latents": latents}, cache, metadata={"encoder_fingerprint": fingerprint})
        del images
    coverage = None
    if grounds_words(settings):
        coverage_cache = run_dir / f"coverage_{settings.num_scenes}_{settings.seed}.safetensors"
        if coverage_cache.exists():
            coverage = load_file(str(coverage_cache))["coverage"]
        else:
            coverage = object_coverage(scenes, latent_size=latents.shape[-1], progress=settings.progress)
            atomic_save_file({"coverage": coverage}, coverage_cache)
    return scenes, latents, coverage


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


def grounds_words(settings: TrainingSettings) -> bool:
    """Whether the run adds a grounding loss (so its batches need the objects' coverage)."""
    return settings.grounding_weight > 0 or settings.position_grounding_weight > 0
