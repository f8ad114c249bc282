"""The model-agnostic reverse process: DDIM / DDPM sampling over a timestep subsequence.

Song et al. 2021, "Denoising Diffusion Implicit Models", arXiv:2010.02502 (Algorithm: eq. 12 applied over the
subsequence tau_S > ... > tau_1); Ho et al. 2020, "Denoising Diffusion Probabilistic Models", arXiv:2006.11239.

    for (t, t_prev) in timestep_pairs(timesteps):          # t_prev = next entry, -1 after the last
        model_output = denoiser(x_t, t, step_index)
        x_t = generalized_posterior_step(x_t, model_output, t, t_prev, ...)   # posterior.py
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Sequence

import torch
from torch import Tensor

from diffusion_lab.denoisers import Denoiser
from diffusion_lab.posterior import generalized_posterior_step
from diffusion_lab.progress import progress_bar  # noqa: F401  (re-exported for callers)
from diffusion_lab.schedules import NoiseSchedule, timestep_pairs

@dataclass
class SamplingResult:
    """sample: the final x (B, C, H, W).
    With return_trajectory: trajectory = [x_T, x_{tau_S-1}, ..., final] (len S + 1), predicted_x0 = [x0_hat at
    each step] (len S), noises = the eps_t added at each step (None entries where none was drawn)."""

    sample: Tensor
    trajectory: list[Tensor] | None = None
    predicted_x0: list[Tensor] | None = None
    noises: list[Tensor | None] | None = field(default=None)


@torch.no_grad()
def sample(
    denoiser: Denoiser,
    x_T: Tensor,
    schedule: NoiseSchedule,
    timesteps: Sequence[int] | Tensor,
    eta: float = 0.0,
    variance: str = "eta",
    generator: torch.Generator | None = None,
    callback: Callable[[int, int, Tensor, Tensor], None] | None = None,
    progress: bool = True,
    return_trajectory: bool = False,
    noises: Sequence[Tensor | None] | None = None,
    on_step_end: Callable[[int, int, Tensor], Tensor | None] | None = None,
    clip_sample_range: float | None = None,
) -> SamplingResult:
    """Run the reverse process from x_T (B, C, H, W) down a DESCENDING timestep subsequence.

    `timesteps` may be any suffix of a subsequence: start from an x_t at timesteps[0] (e.g. an inverted or
    partially noised latent). eta / variance: see `posterior.generalized_posterior_step` (eta=0: DDIM,
    deterministic; eta=1: DDPM posterior; variance="sigma_hat": the paper's larger-variance DDPM).
    callback(step_index, t, x_t, x0_hat): called after each denoiser call with the CURRENT x_t and its predicted x_0.
    noises: optional eps_t per step to add instead of drawing them (replays a recorded stochastic trajectory).
    on_step_end(step_index, t_prev, x_prev): may return a tensor that replaces x_prev (e.g. Prompt-to-Prompt's
    local blend).
    """
    x_t = x_T
    trajectory = [x_T] if return_trajectory else None
    predicted_x0: list[Tensor] | None = [] if return_trajectory else None
    added_noises: list[Tensor | None] | None = [] if return_trajectory else None
    pairs = timestep_pairs(timesteps)
    for step_index, (t, t_prev) in enumerate(progress_bar(pairs, progress, desc="sampling")):
        model_output = denoiser(x_t, t, step_index)
        step = generalized_posterior_step(
            x_t,
            model_output,
            t,
            t_prev,
            schedule,
            eta=eta,
            variance=variance,
            noise=None if noises is None else noises[step_index],
            generator=generator,
            clip_sample_range=clip_sample_range,
        )
        if callback is not None:
            callback(step_index, t, x_t, step.pred_original_sample)
        x_t = step.prev_sample
        if on_step_end is not None:
            replaced = on_step_end(step_index, t_prev, x_t)
            x_t = x_t if replaced is None else replaced
        if return_trajectory:
            trajectory.append(x_t)
            predicted_x0.append(step.pred_original_sample)
            added_noises.append(step.noise)
    return SamplingResult(x_t, trajectory, predicted_x0, added_noises)
