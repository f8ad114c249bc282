"""The source branch of a Prompt-to-Prompt edit, recorded once and replayed: a repeated edit runs only its targets.

In P2P (Hertz et al. 2022, arXiv:2208.01626) the source row of the batch [source, target 1, ...] is never changed by
the controller: its latents z_t, its cross-attention maps M_t and its self-attention maps depend only on the source
(prompt or inversion, x_T, steps, guidance), not on the targets. Editing the same source again with other target
words therefore recomputes the same numbers. A `SourceBranch` keeps what the targets read of the source:

    latents[step]              (1, C, h, w)      z_t of the source after each step (what LocalBlend blends with)
    probabilities[step][layer] (heads, HW, keys) the source's conditional attention probabilities, only where an
                                                 edit reads them (cross-attention while a word is replaced, self-
                                                 attention while it is injected)
    means[step][layer]         (HW, keys)        the source's maps averaged over heads, of the layers an
                                                 AttentionStore stores (LocalBlend's mask, the plots)
    image                      (H, W, 3) uint8   the decoded source

and a controller given a SourceBranch (`AttentionController.source_branch`, `source_external`) takes them instead of
computing the source row: the UNet batch holds only the targets (half of the rows for one target).

Memory (float32, 50 steps, P2P's defaults: cross-attention replaced for 0.8 of the steps, self-attention for 0.4 in
maps of side <= 16), as `source_branch_bytes` computes it: shapes-tiny (16x16 latents, 2 heads, 32 tokens, 7 attention
blocks) 47.6 MiB (measured the same); Stable Diffusion 1.5 at 512x512 (64x64 latents, 8 heads, 77 tokens, 16 blocks)
2.77 GiB (1.38 GiB in float16), over `SourceBranchCache`'s default budget of 1 GiB: an SD edit's recording stops at
the budget and is dropped (the edit runs as usual) unless DIFFUSION_LAB_SOURCE_CACHE_MB raises it.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Hashable

import numpy as np
import torch

DEFAULT_MAX_BYTES = 1 << 30  # 1 GiB; DIFFUSION_LAB_SOURCE_CACHE_MB overrides it
DEFAULT_MAX_ENTRIES = 4


@dataclass
class SourceBranch:
    """What the targets of an edit read of its source branch (see the module docstring), recorded during one run.

    max_bytes: recording stops (`overflowed` becomes True, everything is dropped) once the tensors would exceed it.
    """

    max_bytes: int = DEFAULT_MAX_BYTES
    latents: dict[int, torch.Tensor] = field(default_factory=dict)
    probabilities: dict[int, dict[str, torch.Tensor]] = field(default_factory=dict)
    means: dict[int, dict[str, torch.Tensor]] = field(default_factory=dict)
    image: np.ndarray | None = None
    nbytes: int = 0
    overflowed: bool = False

    def _keep(self, table: dict, step: int, name: str | None, tensor: torch.Tensor) -> None:
        if self.overflowed:
            return
        size = tensor.numel() * tensor.element_size()
        if self.nbytes + size > self.max_bytes:
            self.overflowed = True
            self.latents, self.probabilities, self.means, self.nbytes = {}, {}, {}, 0
            return
        kept = tensor.detach().clone()  # the run's tensor may be a view of the whole batch's
        if name is None:
            table[step] = kept
        else:
            table.setdefault(step, {})[name] = kept
        self.nbytes += size

    def add_latents(self, step: int, latents: torch.Tensor) -> None:
        """latents: (1, C, h, w), the source's z after step `step`."""
        self._keep(self.latents, step, None, latents)

    def add_probabilities(self, step: int, layer_name: str, probabilities: torch.Tensor) -> None:
        """probabilities: (heads, HW, keys), the source's conditional attention at this step and layer."""
        self._keep(self.probabilities, step, layer_name, probabilities)

    def add_means(self, step: int, layer_name: str, maps: torch.Tensor) -> None:
        """maps: (HW, keys), the source's maps averaged over heads, as AttentionStore.record sums them."""
        self._keep(self.means, step, layer_name, maps)

    def final_latents(self) -> torch.Tensor:
        """(1, C, h, w) the source's z_0."""
        return self.latents[max(self.latents)]

    def complete(self, num_steps: int) -> bool:
        return not self.overflowed and sorted(self.latents) == list(range(num_steps)) and self.image is not None


class SourceBranchCache:
    """A few recorded source branches by key, least recently used dropped first, at most `max_bytes` in all.

    The key (editing.source_branch_key) holds everything the source branch depends on: the weights, the source's
    text and unconditional embeddings, x_T, the timesteps, guidance, the inversion's tensors and which attention
    the edit reads; any change of it is a miss (and a fresh edit, recorded anew).
    """

    def __init__(self, max_bytes: int | None = None, max_entries: int = DEFAULT_MAX_ENTRIES):
        if max_bytes is None:
            megabytes = os.environ.get("DIFFUSION_LAB_SOURCE_CACHE_MB", "").strip()
            try:
                max_bytes = int(float(megabytes) * (1 << 20)) if megabytes else DEFAULT_MAX_BYTES
            except ValueError:
                raise ValueError(f"DIFFUSION_LAB_SOURCE_CACHE_MB={megabytes!r}: give a number of megabytes (0: off)") from None
        self.max_bytes, self.max_entries = int(max_bytes), int(max_entries)
        self.entries: "OrderedDict[Hashable, SourceBranch]" = OrderedDict()
        self.hits = self.misses = 0

    @property
    def nbytes(self) -> int:
        return sum(entry.nbytes for entry in self.entries.values())

    def get(self, key: Hashable) -> SourceBranch | None:
        entry = self.entries.get(key)
        if entry is None:
            self.misses += 1
            return None
        self.entries.move_to_end(key)
        self.hits += 1
        return entry

    def new_recording(self) -> SourceBranch | None:
        """An empty SourceBranch to record into (None when the cache is off: max_bytes 0)."""
        return SourceBranch(self.max_bytes) if self.max_bytes > 0 and self.max_entries > 0 else None

    def put(self, key: Hashable, branch: SourceBranch) -> None:
        if branch.overflowed or branch.nbytes > self.max_bytes:
            return
        self.entries[key] = branch
        self.entries.move_to_end(key)
        while len(self.entries) > self.max_entries or self.nbytes > self.max_bytes:
            self.entries.popitem(last=False)

    def clear(self) -> None:
        self.entries.clear()

    def __repr__(self) -> str:
        return (f"SourceBranchCache({len(self.entries)} of {self.max_entries} entries, {self.nbytes / 2**20:.1f} of "
                f"{self.max_bytes / 2**20:.0f} MiB, {self.hits} hits, {self.misses} misses)")


_DEFAULT_CACHE: SourceBranchCache | None = None


def default_source_cache() -> SourceBranchCache:
    """The process-wide cache edit_generated / edit_real / run_edit use unless given another (or False)."""
    global _DEFAULT_CACHE
    if _DEFAULT_CACHE is None:
        _DEFAULT_CACHE = SourceBranchCache()
    return _DEFAULT_CACHE


def source_branch_bytes(num_steps: int, layers: list[tuple[int, int, bool]], tokens: int, latent_shape: tuple,
                        cross_fraction: float = 0.8, self_fraction: float = 0.4, self_max_side: int = 16,
                        stored_max_queries: int = 32 * 32, bytes_per_number: int = 4) -> int:
    """Bytes of a SourceBranch: layers are (heads, map side, is_cross) per attention layer of the UNet.

    Cross-attention probabilities for cross_fraction of the steps, self-attention for self_fraction in layers of
    side <= self_max_side, head-averaged cross maps of layers with <= stored_max_queries positions every step,
    and the latents every step."""
    total = 0
    cross_steps, self_steps = int(cross_fraction * num_steps), int(self_fraction * num_steps)
    for heads, side, is_cross in layers:
        queries = side * side
        if is_cross:
            total += cross_steps * heads * queries * tokens
            if queries <= stored_max_queries:
                total += num_steps * queries * tokens
        elif side <= self_max_side:
            total += self_steps * heads * queries * queries
    total += num_steps * int(np.prod(latent_shape))
    return total * bytes_per_number
