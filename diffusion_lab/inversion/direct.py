"""Direct inversion (PnP Inversion, Ju et al. 2024, arXiv:2310.01506): DDIM inversion at w = 1 is kept as the pivot
z*_T ... z*_0, and sampling at w puts the SOURCE branch back on it after every step. The reconstruction is the pivot
itself (exact up to the VAE), and the target branches of an edit are left alone: only the attention they take from
the source changes (unlike null-text, whose optimised embedding also steers the targets).
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import Tensor


def source_rectifier(pivot: Tensor, source_rows: int) -> Callable[[int, int, Tensor], Tensor]:
    """`sample`'s on_step_end that applies `rectify_source_branch` to the first `source_rows` rows."""
    return lambda step_index, t_prev, x: rectify_source_branch(pivot, x, step_index, source_rows)


def rectify_source_branch(pivot: Tensor, latents: Tensor, step_index: int, source_rows: int = 1) -> Tensor:
    """Direct inversion's correction (PnP Inversion, Ju et al. 2024, arXiv:2310.01506).

    After sampling step i has taken the source branch from z_t to z^src_{t_prev} (guided, at w), add back the
    distance to the pivot that DDIM inversion at w = 1 recorded:

        z^src_{t_prev} <- z^src_{t_prev} + (z*_{t_prev} - z^src_{t_prev}) = z*_{t_prev}

    so the source branch never drifts (its attention maps, which Prompt-to-Prompt hands to the targets, are those
    of the pivot), while the target rows are not touched: classifier-free guidance at w steers them freely.

    pivot: (S + 1, B, C, h, w) in sampling order (Inversion.latents); latents: (P, C, h, w), the batch after step
    `step_index`, whose first `source_rows` rows are the source branch (B of them, or 1 of an edit batch).
    """
    target = pivot[step_index + 1].to(latents)  # z*_{t_prev}: (B, C, h, w)
    if target.shape[0] not in (1, source_rows):
        raise ValueError(f"the pivot has {target.shape[0]} rows per step, the source branch {source_rows}")
    source = target.expand(source_rows, -1, -1, -1)
    return torch.cat([source, latents[source_rows:]]) if latents.shape[0] > source_rows else source.clone()
