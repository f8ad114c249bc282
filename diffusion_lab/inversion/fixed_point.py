"""DDIM and fixed-point inversion of latents: run a sampler backwards, step by step.

Plain DDIM inversion (Song et al. 2021, arXiv:2010.02502, sec. 4.3; Dhariwal & Nichol 2021) uses the noise predicted
at z_{t_prev} in place of the unknown one at z_t: exact as the step size -> 0, and at guidance w > 1 the small
per-step errors are amplified. Fixed-point inversion (ReNoise, Garibi et al. 2024, arXiv:2403.14602; AIDI, Pan et
al. 2023, arXiv:2309.04907) solves the exact inverse of each sampling step by iterating the noise prediction at the
current estimate of z_t, with Anderson acceleration.

Why fixed-point (rather than EDICT, BDIA or exact-inversion solvers): it inverts the ORDINARY DDIM sampler, so z_T
is reconstructed by plain `sample` at the guidance and null embedding that edits use, and every editor works on it
unchanged; it needs no optimisation and no gradient, only `iterations` extra forward passes per step; and it says
how exact it is (the per-step residual ||F(z) - z||). Its limit: under strong guidance the guided eps_hat varies
fast near t = 0, the iteration stops contracting there and the best iterate is kept; an exact z_T at high w can also
be less Gaussian, hence less editable, than a w = 1 pivot (as ReNoise notes).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor

from diffusion_lab.denoisers import Denoiser
from diffusion_lab.posterior import predict_epsilon
from diffusion_lab.progress import progress_bar
from diffusion_lab.schedules import NoiseSchedule, timestep_pairs

from .step import ddim_inversion_step


@dataclass
class FixedPointSettings:
    """iterations: noise predictions per step after the plain DDIM guess (0 = plain DDIM inversion).
    tolerance: stop a step early once the fixed-point residual (RMS, worst row of the batch) is below this.
    anderson_memory: how many previous iterates Anderson acceleration combines (0 = plain fixed-point iteration)."""

    iterations: int = 5
    tolerance: float = 1e-5
    anderson_memory: int = 2


@dataclass
class LatentTrajectory:
    """latents: (S + 1, B, C, H, W) in sampling order (latents[0] = z_T, latents[-1] = z_0).
    fixed_point_residuals: (S, iterations) RMS residual ||F(z) - z|| per fixed-point iteration (worst row of the
    batch; NaN after an early stop); None for plain DDIM inversion."""

    latents: Tensor
    fixed_point_residuals: Tensor | None = None


def _rms_per_row(x: Tensor) -> Tensor:
    """sqrt(mean(x^2)) over all but the batch dimension: (B, ...) -> (B,)."""
    return x.detach().float().pow(2).flatten(1).mean(dim=1).sqrt()


def anderson_extrapolation(iterates: Sequence[Tensor], images: Sequence[Tensor], memory: int) -> Tensor:
    """The next iterate of x <- F(x) by Anderson acceleration (Anderson 1965; Walker & Ni 2011, type II with
    mixing 1; used for diffusion inversion by AIDI, Pan et al. 2023, arXiv:2309.04907).

    With the last m + 1 iterates x_j, their images F(x_j) and residuals g_j = F(x_j) - x_j:

        gamma   = argmin_gamma || g_k - dG gamma ||^2,      dG = [g_{j+1} - g_j],  dF = [F(x_{j+1}) - F(x_j)]
        x_{k+1} = F(x_k) - dF gamma

    i.e. the combination of recent images whose linearised residual is smallest. Each row of the batch is solved
    on its own (a tiny m x m system, float64, slightly regularised). With one iterate it is the plain F(x_k).
    iterates, images: lists of (B, ...) tensors, oldest first.
    """
    iterates, images = list(iterates)[-(memory + 1):], list(images)[-(memory + 1):]
    if memory < 1 or len(iterates) < 2:
        return images[-1]
    residuals = [(f - x).flatten(1).double() for x, f in zip(iterates, images)]  # each (B, D)
    flat_images = [f.flatten(1).double() for f in images]
    residual_differences = torch.stack([b - a for a, b in zip(residuals, residuals[1:])], dim=-1)  # (B, D, m)
    image_differences = torch.stack([b - a for a, b in zip(flat_images, flat_images[1:])], dim=-1)  # (B, D, m)
    normal = residual_differences.transpose(1, 2) @ residual_differences  # (B, m, m)
    regulariser = 1e-10 * normal.diagonal(dim1=1, dim2=2).mean(dim=1).clamp(min=1e-30)  # (B,)
    normal = normal + regulariser[:, None, None] * torch.eye(normal.shape[-1], dtype=normal.dtype, device=normal.device)
    right = residual_differences.transpose(1, 2) @ residuals[-1].unsqueeze(-1)  # (B, m, 1)
    gamma = torch.linalg.solve(normal, right)  # (B, m, 1)
    extrapolated = flat_images[-1] - (image_differences @ gamma).squeeze(-1)  # (B, D)
    return extrapolated.view_as(images[-1]).to(images[-1].dtype)


@torch.no_grad()
def invert_latents(
    denoiser: Denoiser,
    z_0: Tensor,
    schedule: NoiseSchedule,
    timesteps: Sequence[int] | Tensor,
    fixed_point: FixedPointSettings | None = None,
    progress: bool = True,
) -> LatentTrajectory:
    """Run the sampling process of `denoiser` backwards from z_0 (B, C, H, W), up the DESCENDING `timesteps`.

    For each sampling step (t, t_prev) (from `timestep_pairs`, visited last to first), z_t is found from
    z_{t_prev} with `ddim_inversion_step`; the denoiser is called as denoiser(z, t, step_index) with the index of
    that sampling step, so per-step state (null-text embeddings, attention controllers) lines up with sampling.

    Plain DDIM inversion (fixed_point None or 0 iterations) uses eps_hat(z_{t_prev}, t). Fixed-point inversion
    starts from that guess and solves z_t = F(z_t) with

        F(z) = ddim_inversion_step(z_{t_prev}, eps_hat(z, t)),

    whose fixed point is the exact inverse: the sampling step from z_t lands on z_{t_prev}. Plain iteration
    z <- F(z) (ReNoise's "renoising") converges when F is a contraction; its Lipschitz constant is
    |sqrt(1 - alpha_bar_t) - sqrt(alpha_bar_t / alpha_bar_{t_prev}) sqrt(1 - alpha_bar_{t_prev})| times that of
    eps_hat, small for small steps, larger under strong guidance. Anderson acceleration (`anderson_extrapolation`,
    AIDI's choice) converges much faster and more often. The iterate with the smallest residual ||F(z) - z|| is
    kept (its image F(z) is returned), so a step that stops contracting is never made worse than its best iterate;
    each image of the batch keeps its own best iterate (Anderson solves each row on its own too), so an image gets
    the same inversion alone or in a batch, up to iterates below the tolerance (prompt-to-prompt #47).

    eps_hat at a point z is `predict_epsilon(model_output, z, alpha_bar_t)` (the network's answer at noise level t;
    for epsilon-prediction this is the output itself, as in diffusers' DDIMInverseScheduler; for v-prediction
    diffusers converts with alpha_bar_{t_prev} instead, we keep the level the network was told).
    """
    settings = fixed_point or FixedPointSettings(iterations=0)
    pairs = timestep_pairs(timesteps)
    z = z_0
    inverted = [z_0]  # inversion order: z_0, z_{tau_1}, ..., z_T
    residuals = torch.full((len(pairs), settings.iterations), math.nan)
    description = "fixed-point inversion" if settings.iterations else "DDIM inversion"
    for step_index in progress_bar(reversed(range(len(pairs))), progress, desc=description, total=len(pairs)):
        t, t_prev = pairs[step_index]
        alpha_bar_t, alpha_bar_prev = schedule.alpha_bar(t), schedule.alpha_bar(t_prev)

        def inverse_step_with_noise_at(estimate: Tensor) -> Tensor:  # F(estimate)
            output = denoiser(estimate, t, step_index)  # (B, C, H, W)
            epsilon = predict_epsilon(output, estimate, alpha_bar_t, schedule.prediction_type)
            return ddim_inversion_step(z, epsilon, alpha_bar_prev, alpha_bar_t)

        estimate = inverse_step_with_noise_at(z)  # plain DDIM inversion: eps_hat evaluated at z_{t_prev}
        result = estimate
        best_residual = torch.full((z.shape[0],), math.inf)  # (B,): each image keeps its own best iterate
        iterates, images = [], []
        for k in range(settings.iterations):
            image = inverse_step_with_noise_at(estimate)
            row_residuals = _rms_per_row(image - estimate).cpu()  # (B,)
            residuals[step_index, k] = float(row_residuals.max())
            better = row_residuals < best_residual
            result = torch.where(better.to(image.device).view(-1, *([1] * (image.ndim - 1))), image, result)
            best_residual = torch.minimum(best_residual, row_residuals)
            if float(row_residuals.max()) < settings.tolerance:
                break
            iterates.append(estimate)
            images.append(image)
            estimate = anderson_extrapolation(iterates, images, settings.anderson_memory)
        z = result
        inverted.append(z)
    latents = torch.stack(inverted[::-1])  # (S + 1, B, C, H, W), sampling order
    return LatentTrajectory(latents, residuals if settings.iterations else None)
