"""Null-text optimisation (Mokady et al. 2022, arXiv:2211.09794): DDIM inversion at w = 1 is the "pivot"; then,
step by step, optimise the UNCONDITIONAL text embedding so that guided sampling at w (7.5) lands back on the pivot.
The per-step embeddings are part of the result.

Negative-prompt inversion (Miyake et al. 2023, arXiv:2305.16807) is its optimisation-free approximation: sample
with the SOURCE prompt's embedding as the unconditional one (null-text's optimum is approximately the source
embedding); it needs no code of its own (latent_level.invert_with_model).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from diffusion_lab.denoisers import classifier_free_guidance
from diffusion_lab.posterior import generalized_posterior_step
from diffusion_lab.progress import progress_bar
from diffusion_lab.schedules import timestep_pairs

from .model import ConditionalModel


@dataclass
class NullTextSettings:
    """Mokady et al. 2022 (official code `null_optimization`), generalised from its 50 steps to S steps:

    inner_steps: Adam steps per timestep (N = 10).
    learning_rate, learning_rate_decay: the rate at sampling step i is learning_rate * (1 - decay * i / S)
        (official: 1e-2 * (1 - i / 100) at S = 50, i.e. decay 0.5: the rate ends at half).
    early_stop_epsilon, early_stop_growth: stop a timestep's inner loop once the loss is below
        epsilon + growth * i / S (official: 1e-5 + 2e-5 i at S = 50, i.e. growth 1e-3).
    """

    inner_steps: int = 10
    learning_rate: float = 1e-2
    learning_rate_decay: float = 0.5
    early_stop_epsilon: float = 1e-5
    early_stop_growth: float = 1e-3


@dataclass
class NullTextResult:
    """uncond_embeddings: (S, B, L, D), the optimised unconditional embedding of each sampling step.
    losses: (S, inner_steps) batch-summed MSE before each Adam step (NaN after an early stop)."""

    uncond_embeddings: Tensor
    losses: Tensor


def optimize_null_text(
    model: ConditionalModel,
    pivot: Tensor,
    timesteps: Sequence[int] | Tensor,
    text_embeddings: Tensor,
    uncond_embeddings: Tensor,
    guidance_scale: float,
    settings: NullTextSettings | None = None,
    progress: bool = True,
) -> NullTextResult:
    """Null-text optimisation (Mokady et al. 2022, Algorithm 1) around a w = 1 DDIM-inversion pivot.

    pivot: (S + 1, B, C, H, W) in sampling order (pivot[0] = z*_T, pivot[-1] = z*_0). For each sampling step i,
    from (t, t_prev), starting at z_bar = z*_T:

        eps_w(e) = eps(z_bar, t, empty=e) + w (eps(z_bar, t, prompt) - eps(z_bar, t, empty=e))
        e_i      = argmin_e || step(z_bar, eps_w(e), t -> t_prev) - z*_{t_prev} ||^2      (inner_steps Adam steps)
        z_bar    = step(z_bar, eps_w(e_i), t -> t_prev)

    where `step` is the DDIM sampling step (generalized_posterior_step, eta = 0). e starts from the previous
    step's optimum (from `uncond_embeddings` (1 | B, L, D) at i = 0). Each image of the batch has its own
    embedding and the loss is the SUM of per-image mean squared errors, so every image sees exactly its own
    gradient (as if optimised alone); early stopping waits for the slowest image of the batch.
    Gradients flow to the embedding only (torch.autograd.grad), never into the model's weights.
    """
    settings = settings or NullTextSettings()
    schedule = model.schedule
    pairs = timestep_pairs(timesteps)
    num_steps, batch_size = len(pairs), pivot.shape[1]
    if pivot.shape[0] != num_steps + 1:
        raise ValueError(f"the pivot has {pivot.shape[0]} latents, expected {num_steps + 1} for {num_steps} steps")
    embedding = uncond_embeddings.detach().float().expand(batch_size, *uncond_embeddings.shape[1:]).clone()
    condition = text_embeddings.detach()
    optimized, losses = [], torch.full((num_steps, settings.inner_steps), math.nan)
    z_bar = pivot[0]  # (B, C, H, W)
    bar = progress_bar(range(num_steps), progress, desc="null-text optimisation")
    for step_index in bar:
        t, t_prev = pairs[step_index]
        target = pivot[step_index + 1]  # z*_{t_prev}
        learning_rate = settings.learning_rate * (1.0 - settings.learning_rate_decay * step_index / num_steps)
        threshold = settings.early_stop_epsilon + settings.early_stop_growth * step_index / num_steps
        embedding = embedding.detach().requires_grad_(True)
        optimizer = torch.optim.Adam([embedding], lr=learning_rate)
        with torch.no_grad():
            cond_output = model.conditional_output(z_bar, t, condition)  # (B, C, H, W)
        for inner in range(settings.inner_steps):
            with torch.enable_grad():
                uncond_output = model.conditional_output(z_bar, t, embedding)
                guided = classifier_free_guidance(uncond_output, cond_output, guidance_scale)
                z_prev = generalized_posterior_step(z_bar, guided, t, t_prev, schedule).prev_sample
                per_image = F.mse_loss(z_prev, target, reduction="none").flatten(1).mean(dim=1)  # (B,)
                loss = per_image.sum()
                (gradient,) = torch.autograd.grad(loss, [embedding])
            optimizer.zero_grad(set_to_none=True)
            embedding.grad = gradient
            optimizer.step()
            losses[step_index, inner] = float(loss.detach())
            if float(per_image.detach().max()) < threshold:
                break
        if hasattr(bar, "set_postfix"):
            bar.set_postfix(loss=f"{float(loss.detach()):.2e}", inner=inner + 1)
        embedding = embedding.detach()
        optimized.append(embedding.clone())
        with torch.no_grad():
            guided = model.denoiser(condition, embedding, guidance_scale)(z_bar, t, step_index)
            z_bar = generalized_posterior_step(z_bar, guided, t, t_prev, schedule).prev_sample
    return NullTextResult(torch.stack(optimized), losses)
