"""Inversions kept in memory: the same image, prompt and settings are inverted once per process.

Editing one real image with several target prompts (a lab panel, batch rows that share an image) needs its inversion
once. Recomputing it is not only slow (null-text: seconds of CPU per image at S = 50) but also not bit-identical:
once the UNet runs traced (runtime/traced_unet.py) the same inversion differs from the first, eager one at about
1e-6, so a later edit's source branch (attention/source_branch.py, keyed on the inversion's numbers) would miss its
recording too. `cached_invert` returns the very same `Inversion` object for equal inputs.

The key holds everything `invert` reads: the pipeline's weights (each parameter's storage and version, so weights
changed in place are a new key), its scheduler config, the image's pixels (or the file's bytes, or the latents'),
the prompt(s) and every setting. An `Inversion` is a few MiB at most (SD 1.5, S = 50, null-text: 3.3 MiB of latents
and 11.5 MiB of embeddings); the cache keeps the `max_items` most recently used.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections import OrderedDict
from pathlib import Path
from typing import Any, Callable, Hashable

import numpy as np
import torch

from .pipeline_level import invert
from .result import Inversion

DEFAULT_MAX_ITEMS = 16


def content_digest(value: Any) -> str:
    """A digest of what an image argument holds: a PIL image's RGB pixels, an array's or a tensor's values, a file's
    bytes; a list or tuple of them digests each."""
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(content_digest(item) for item in value) + "]"
    if isinstance(value, (str, Path)):
        return "file:" + hashlib.sha1(Path(value).read_bytes()).hexdigest()
    if isinstance(value, torch.Tensor):
        tensor = value.detach().cpu().contiguous()
        payload = tensor.reshape(-1).view(torch.uint8).numpy().tobytes()
        return f"tensor{tuple(tensor.shape)}{tensor.dtype}:" + hashlib.sha1(payload).hexdigest()
    if hasattr(value, "convert") and hasattr(value, "size"):  # a PIL image
        value = np.asarray(value.convert("RGB"))
    array = np.ascontiguousarray(np.asarray(value))
    return f"array{array.shape}{array.dtype}:" + hashlib.sha1(array.tobytes()).hexdigest()


def pipeline_fingerprint(pipe) -> tuple:
    """The pipeline's identity for a cache key: each model's parameters (storage and version: an in-place change of
    the weights is a new fingerprint), device and dtype, and the scheduler's config."""
    parts = []
    for name in ("unet", "vae", "text_encoder"):
        module = getattr(pipe, name, None)
        if module is None:
            continue
        parameters = list(module.parameters())
        parts.append((name, id(module), tuple((p.data_ptr(), p._version) for p in parameters),
                      str(parameters[0].device), str(parameters[0].dtype)))
    parts.append(repr(sorted((k, str(v)) for k, v in pipe.scheduler.config.items())))
    return tuple(parts)


def _hashable(value: Any) -> Hashable:
    if isinstance(value, torch.Tensor):
        return content_digest(value)
    if isinstance(value, (list, tuple)):
        return tuple(_hashable(item) for item in value)
    if isinstance(value, dict):
        return tuple(sorted((k, _hashable(v)) for k, v in value.items()))
    if dataclasses.is_dataclass(value) and not isinstance(value, type):  # e.g. a NullTextSettings: by its fields
        return (type(value).__qualname__, _hashable(dataclasses.asdict(value)))
    hash(value)  # TypeError for anything else unhashable: the caller computes without the cache
    return value


class InversionCache:
    """Least-recently-used inversions by key (`cached_invert` builds the key); hits and misses are counted."""

    def __init__(self, max_items: int = DEFAULT_MAX_ITEMS):
        if max_items < 1:
            raise ValueError(f"max_items must be at least 1, got {max_items}")
        self.max_items = max_items
        self.entries: OrderedDict[Hashable, Inversion] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def get_or_compute(self, key: Hashable, compute: Callable[[], Inversion]) -> Inversion:
        if key in self.entries:
            self.entries.move_to_end(key)
            self.hits += 1
            return self.entries[key]
        self.misses += 1
        inversion = compute()
        self.entries[key] = inversion
        while len(self.entries) > self.max_items:
            self.entries.popitem(last=False)
        return inversion

    def clear(self) -> None:
        self.entries.clear()
        self.hits = self.misses = 0

    def __len__(self) -> int:
        return len(self.entries)

    def __repr__(self) -> str:
        return f"InversionCache({len(self)} of {self.max_items}, {self.hits} hits, {self.misses} misses)"


_DEFAULT_CACHE = InversionCache()


def default_inversion_cache() -> InversionCache:
    """The process-wide cache that `cached_invert` uses unless given another."""
    return _DEFAULT_CACHE


def cached_invert(pipe, image, prompt, method: str = "ddim", num_steps: int = 50, guidance_scale: float | None = None,
                  *, cache: InversionCache | None = None, progress: bool = False, **options) -> Inversion:
    """`invert(pipe, image, prompt, method, num_steps, guidance_scale, **options)`, computed once per key in `cache`
    (default: the process-wide one). The progress flag is not part of the key. Settings that cannot be part of a key
    (an unhashable option) compute the inversion without caching it."""
    cache = cache if cache is not None else default_inversion_cache()

    def compute() -> Inversion:
        return invert(pipe, image, prompt, method=method, num_steps=num_steps, guidance_scale=guidance_scale,
                      progress=progress, **options)

    try:
        key = (pipeline_fingerprint(pipe), None if image is None else content_digest(image), _hashable(prompt),
               method, int(num_steps), None if guidance_scale is None else float(guidance_scale),
               _hashable(options))
    except TypeError:
        return compute()
    return cache.get_or_compute(key, compute)
