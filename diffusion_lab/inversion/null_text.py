"""Null-text optimisation (Mokady et al. 2022, arXiv:2211.09794): DDIM inversion at w = 1 is the "pivot"; then,
step by step, optimise the UNCONDITIONAL text embedding so that guided sampling at w (7.5) lands back on the pivot.
The per-step embeddings are part of the result.

Negative-prompt inversion (Miyake et al. 2023, arXiv:2305.16807) is its optimisation-free approximation: sample
with the SOURCE prompt's embedding as the unconditional one (null-text's optimum is approximately the source
embedding); it needs no code of its own (latent_level.invert_with_model).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
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
    """The inner loop of null-text inversion; the defaults are diffusion-lab's faster loop, `NullTextSettings.paper()`
    is Mokady et al. 2022 (official code `null_optimization`), generalised from its 50 steps to S steps:

    inner_steps: at most this many Adam steps per timestep (paper: N = 10).
    learning_rate, learning_rate_decay: the rate at sampling step i is learning_rate * (1 - decay * i / S)
        (paper: 1e-2 * (1 - i / 100) at S = 50, i.e. decay 0.5: the rate ends at half).
    early_stop_epsilon, early_stop_growth: a timestep's inner loop stops once the loss is below
        threshold_i = epsilon + growth * i / S (paper: 1e-5 + 2e-5 i at S = 50, i.e. growth 1e-3).
    final_fraction, final_threshold_scale: in the last ceil(final_fraction * S) sampling steps the threshold is
        multiplied by final_threshold_scale (paper: no such steps). The last step's loss IS the error of the
        reconstructed z_0, so a tight threshold there buys fidelity where it shows.
    check_first: stop BEFORE an Adam step whose loss is already below the threshold, and reuse that forward's
        unconditional output for the sampling step; the guided step after the loop calls the UNet on the
        unconditional branch only (the conditional output of the timestep is known). Paper (False): compute the
        loss, step, then stop if the loss was below the threshold; the sampling step after the loop is a fresh
        guided (batch-2) call.
    """

    inner_steps: int = 6
    learning_rate: float = 0.1
    learning_rate_decay: float = 0.5
    early_stop_epsilon: float = 3e-5
    early_stop_growth: float = 3e-3
    final_fraction: float = 0.1
    final_threshold_scale: float = 1 / 6  # the last 10%: half the paper's threshold
    check_first: bool = True

    @classmethod
    def paper(cls, **changes) -> "NullTextSettings":
        """Mokady et al. 2022's settings (Algorithm 1 with the official code's numbers), with `changes` applied."""
        settings = cls(inner_steps=10, learning_rate=1e-2, learning_rate_decay=0.5, early_stop_epsilon=1e-5,
                       early_stop_growth=1e-3, final_fraction=0.0, final_threshold_scale=1.0, check_first=False)
        return replace(settings, **changes)

    @classmethod
    def preset(cls, name: str, **changes) -> "NullTextSettings":
        """"fast" (the defaults) or "paper", with `changes` applied."""
        if name not in NULL_TEXT_PRESETS:
            raise ValueError(f"unknown null-text settings {name!r}; choose one of {', '.join(NULL_TEXT_PRESETS)}")
        return cls.paper(**changes) if name == "paper" else replace(cls(), **changes)

    def threshold(self, step_index: int, num_steps: int) -> float:
        """The early-stopping threshold of sampling step `step_index` of `num_steps`."""
        threshold = self.early_stop_epsilon + self.early_stop_growth * step_index / num_steps
        final_steps = math.ceil(self.final_fraction * num_steps - 1e-9)
        return threshold * (self.final_threshold_scale if step_index >= num_steps - final_steps else 1.0)


NULL_TEXT_PRESETS = ("fast", "paper")


@dataclass
class NullTextResult:
    """uncond_embeddings: (S, B, L, D), the optimised unconditional embedding of each sampling step.
    losses: (S, inner_steps) batch-summed MSE before each Adam step (NaN after an early stop); with check_first the
    last loss of a step that stopped early is the loss of its final embedding (no Adam step followed it)."""

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
        e_i      = argmin_e || step(z_bar, eps_w(e), t -> t_prev) - z*_{t_prev} ||^2      (at most inner_steps Adam steps)
        z_bar    = step(z_bar, eps_w(e_i), t -> t_prev)

    where `step` is the DDIM sampling step (generalized_posterior_step, eta = 0). e starts from the previous
    step's optimum (from `uncond_embeddings` (1 | B, L, D) at i = 0). Each image of the batch has its own
    embedding and the loss is the SUM of per-image mean squared errors, so every image sees exactly its own
    gradient (as if optimised alone); early stopping waits for the slowest image of the batch.
    Gradients flow to the embedding only (torch.autograd.grad), never into the model's weights.

    `NullTextSettings.paper()` is the paper's loop. The default `NullTextSettings()` is the same method (the
    per-step unconditional embedding optimised with Adam so that guided sampling retraces the pivot) with other
    numbers and one change of order: at most 6 Adam steps per timestep with a 10x larger learning rate (0.1: the
    paper's 1e-2 barely moves the loss per step on shapes-tiny, so z_bar drifts off the pivot and every later step
    runs all its Adam steps), a threshold
    3x the paper's for the first 90% of the steps and half the paper's for the last 10% (the last step's loss
    is the reconstruction's error), and the threshold checked before each Adam step, whose forward then also
    serves the sampling step. Why these numbers: README, "Null-text inversion, faster"
    (`python pipelines/bench_inversion.py --null-text-compare`).
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
        threshold = settings.threshold(step_index, num_steps)
        embedding = embedding.detach().requires_grad_(True)
        optimizer = torch.optim.Adam([embedding], lr=learning_rate)
        with torch.no_grad():
            cond_output = model.conditional_output(z_bar, t, condition)  # (B, C, H, W)
        uncond_output = None  # eps(z_bar, t, empty=final embedding), when a forward already computed it
        for inner in range(settings.inner_steps):
            with torch.enable_grad():
                output = model.conditional_output(z_bar, t, embedding)
                guided = classifier_free_guidance(output, cond_output, guidance_scale)
                z_prev = generalized_posterior_step(z_bar, guided, t, t_prev, schedule).prev_sample
                per_image = F.mse_loss(z_prev, target, reduction="none").flatten(1).mean(dim=1)  # (B,)
                loss = per_image.sum()
            losses[step_index, inner] = float(loss.detach())
            below = float(per_image.detach().max()) < threshold
            if settings.check_first and below:
                uncond_output = output.detach()
                break
            with torch.enable_grad():
                (gradient,) = torch.autograd.grad(loss, [embedding])
            optimizer.zero_grad(set_to_none=True)
            embedding.grad = gradient
            optimizer.step()
            if below:
                break
        if hasattr(bar, "set_postfix"):
            bar.set_postfix(loss=f"{float(loss.detach()):.2e}", inner=inner + 1)
        embedding = embedding.detach()
        optimized.append(embedding.clone())
        with torch.no_grad():
            if not settings.check_first:  # the paper's loop: one guided (batch-2) call
                guided = model.denoiser(condition, embedding, guidance_scale)(z_bar, t, step_index)
            else:
                if uncond_output is None:
                    uncond_output = model.conditional_output(z_bar, t, embedding)
                guided = classifier_free_guidance(uncond_output, cond_output, guidance_scale)
            z_bar = generalized_posterior_step(z_bar, guided, t, t_prev, schedule).prev_sample
    return NullTextResult(torch.stack(optimized), losses)
