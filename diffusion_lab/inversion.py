"""Inversion: find the latent trajectory z_T -> ... -> z_0 that the sampler would follow to produce a GIVEN image.

Editing a real image needs its "noise": the z_T (and, for guided sampling, more) from which sampling with the
source prompt gives the image back. Then a new prompt, or Prompt-to-Prompt's attention control, changes what the
same sampling produces. Five methods, all built on the same sampling step (posterior.py) and sampler (sampling.py):

    ddim             DDIM inversion (Song et al. 2021, arXiv:2010.02502, sec. 4.3; Dhariwal & Nichol 2021):
                     run the deterministic (eta = 0) DDIM step backwards, using eps_hat(z_{t-1}, t) in place of
                     the unknown eps_hat(z_t, t). Exact as the step size -> 0; at guidance w > 1 the small
                     per-step errors are amplified and reconstruction breaks.
    null_text        Null-text inversion (Mokady et al. 2022, arXiv:2211.09794): DDIM inversion at w = 1 is the
                     "pivot"; then, step by step, optimise the UNCONDITIONAL text embedding so that guided
                     sampling at w (7.5) lands back on the pivot. The per-step embeddings are part of the result.
    negative_prompt  Negative-prompt inversion (Miyake et al. 2023, arXiv:2305.16807): DDIM inversion at w = 1,
                     and sample with the SOURCE prompt's embedding as the "unconditional" one. Then
                     eps_uncond = eps_cond, guidance changes nothing for the source, and the w = 1 pivot is
                     retraced; no optimisation (null-text's optimum is approximately the source embedding).
    fixed_point      Fixed-point inversion (ReNoise, Garibi et al. 2024, arXiv:2403.14602; AIDI, Pan et al. 2023,
                     arXiv:2309.04907): solve the exact inverse of each sampling step by iterating the noise
                     prediction at the current estimate of z_t. See `invert_latents`.
    direct           Direct inversion (PnP Inversion, Ju et al. 2024, arXiv:2310.01506): DDIM inversion at w = 1
                     is kept as the pivot z*_T ... z*_0, and sampling at w puts the SOURCE branch back on it after
                     every step (`rectify_source_branch`). The reconstruction is the pivot itself (exact up to the
                     VAE), and the target branches of an edit are left alone: only the attention they take from the
                     source changes (unlike null-text, whose optimised embedding also steers the targets).
    edit_friendly    Edit-friendly DDPM inversion (Huberman-Spiegelglas et al. 2024, arXiv:2304.06140), for
                     eta > 0: every x_t drawn independently from q(x_t | x_0), and the noise map z_t of each
                     stochastic sampling step recorded so that it lands exactly on x_{t-1} (inversion_ddpm.py).

The step itself (`ddim_inversion_step`) is the lecture's DDIM update read from t_{prev} up to t:

    x0_hat = (z_{t_prev} - sqrt(1 - alpha_bar_{t_prev}) eps_hat) / sqrt(alpha_bar_{t_prev})
    z_t    = sqrt(alpha_bar_t) x0_hat + sqrt(1 - alpha_bar_t) eps_hat           (generalized posterior mean, sigma=0)

Only eta = 0 is invertible by running the step backwards: with eta > 0 every sampling step adds fresh noise
sigma_t eps_t that the image does not determine; edit-friendly inversion instead CHOOSES those noises and records them.

Layers:
  * latent level, model-agnostic (works with `ClosedFormDenoiser` in pixel space, no VAE): `ConditionalModel`,
    `invert_latents`, `optimize_null_text`, `invert_with_model`, `reconstruct_with_model`;
  * pipeline level (any Stable-Diffusion-architecture pipeline): `invert` (one entry point for all methods) and
    `ddim_inversion`, `null_text_inversion`, `negative_prompt_inversion`, `fixed_point_inversion`, returning an
    `Inversion` that holds everything sampling needs, saved as safetensors + JSON; `reconstruct`.

Trajectories are stored in SAMPLING order, like `SamplingResult.trajectory`: latents[0] = z_T is the input of
sampling step 0, latents[i] the input of step i, latents[-1] = z_0 the encoded image.
"""

from __future__ import annotations

import json
import math
import time
import warnings
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from diffusion_lab.denoisers import Denoiser, GuidedDenoiser, TextConditionedDenoiser, classifier_free_guidance
from diffusion_lab.posterior import (
    generalized_posterior_mean,
    generalized_posterior_step,
    predict_epsilon,
    x0_from_epsilon,
)
from diffusion_lab.progress import progress_bar
from diffusion_lab.sampling import sample
from diffusion_lab.schedules import NoiseSchedule, timestep_pairs

METHODS = ("ddim", "null_text", "negative_prompt", "fixed_point", "direct", "edit_friendly")
# Guidance each method inverts for when none is given: DDIM inversion is only reliable at w = 1; the others exist
# to make the usual text-to-image guidance (7.5) work.
DEFAULT_GUIDANCE = {"ddim": 1.0, "null_text": 7.5, "negative_prompt": 7.5, "fixed_point": 7.5, "direct": 7.5,
                    "edit_friendly": 3.5}
FORMAT_VERSION = 1
ETA_ERROR = (
    "only eta = 0 (deterministic DDIM) is invertible by DDIM inversion: with eta > 0 every sampling step adds fresh "
    "noise sigma_t eps_t that the image does not determine. Invert and reconstruct with eta=0 (or, for a stochastic "
    "run you generated yourself, replay its recorded noises: sample(..., return_trajectory=True).noises)"
)


def check_eta(eta: float) -> None:
    """Raise the ValueError that explains why only eta = 0 can be inverted."""
    if eta != 0:
        raise ValueError(f"eta={eta}: {ETA_ERROR}")


# ----------------------------------------------------------------------------------------------------------------
# The inversion step
# ----------------------------------------------------------------------------------------------------------------


def ddim_inversion_step(
    z_prev: Tensor, epsilon: Tensor, alpha_bar_prev: float | Tensor, alpha_bar_t: float | Tensor
) -> Tensor:
    """One DDIM step run backwards, from the less noisy z_{t_prev} up to z_t, for a given noise estimate eps_hat:

        x0_hat = (z_{t_prev} - sqrt(1 - alpha_bar_{t_prev}) eps_hat) / sqrt(alpha_bar_{t_prev})     (x0_from_epsilon)
        z_t    = sqrt(alpha_bar_t) x0_hat + sqrt(1 - alpha_bar_t) eps_hat         (generalized_posterior_mean, sigma=0)

    It is the exact inverse of the sampling step z_t -> z_{t_prev} (DDIM eq. 12, eta = 0) when eps_hat is the
    noise predicted AT z_t; plain DDIM inversion approximates that by the prediction at z_{t_prev}.
    z_prev, epsilon: (B, C, H, W); alpha_bar_prev belongs to z_prev (t_prev = -1: the schedule's final alpha_bar).
    """
    x0_hat = x0_from_epsilon(z_prev, epsilon, alpha_bar_prev)  # (B, C, H, W)
    return generalized_posterior_mean(x0_hat, epsilon, alpha_bar_t, 0.0)  # (B, C, H, W)


# ----------------------------------------------------------------------------------------------------------------
# What inversion needs from a model
# ----------------------------------------------------------------------------------------------------------------


class StepwiseGuidedDenoiser:
    """Classifier-free guidance around `conditional_output(x_t, t, condition)` with a per-step unconditional condition
    (`unconditional[step_index]`), for models other than a UNet (a UNet uses TextConditionedDenoiser)."""

    def __init__(self, conditional_output, condition, unconditional: Sequence[Any], guidance_scale: float) -> None:
        self.conditional_output = conditional_output
        self.condition = condition
        self.unconditional = unconditional
        self.guidance_scale = guidance_scale

    def __call__(self, x_t: Tensor, t: int, step_index: int = 0) -> Tensor:
        guided = GuidedDenoiser(
            self.conditional_output, self.condition, self.unconditional[step_index], self.guidance_scale
        )
        return guided(x_t, t, step_index)


class ConditionalModel:
    """A conditional diffusion model as inversion sees it, without VAE or tokenizer.

    conditional_output(x_t, t, condition) -> model_output (B, C, H, W) in schedule.prediction_type; it must be
        differentiable in `condition` for null-text inversion (a UNet is, in its text embeddings).
    make_denoiser(condition, unconditional, guidance_scale) -> Denoiser with classifier-free guidance, where
        `unconditional` is one condition or a sequence of them indexed by step_index. Defaults to
        GuidedDenoiser / StepwiseGuidedDenoiser around `conditional_output`.
    Use `ConditionalModel.from_pipeline(pipe)` for a Stable-Diffusion pipeline, or e.g.
    `ConditionalModel(closed_form.predict, schedule)` for the exact denoiser (conditions are labels, None = all).
    """

    def __init__(
        self,
        conditional_output: Callable[[Tensor, int, Any], Tensor],
        schedule: NoiseSchedule,
        make_denoiser: Callable[[Any, Any, float], Denoiser] | None = None,
    ) -> None:
        self.conditional_output = conditional_output
        self.schedule = schedule
        self._make_denoiser = make_denoiser

    def denoiser(self, condition: Any, unconditional: Any, guidance_scale: float) -> Denoiser:
        if self._make_denoiser is not None:
            return self._make_denoiser(condition, unconditional, guidance_scale)
        if isinstance(unconditional, (list, tuple)):
            return StepwiseGuidedDenoiser(self.conditional_output, condition, unconditional, guidance_scale)
        return GuidedDenoiser(self.conditional_output, condition, unconditional, guidance_scale)

    @classmethod
    def from_pipeline(cls, pipe) -> "ConditionalModel":
        """The pipeline's UNet; conditions are text embeddings (B, L, D); one batched UNet call per guided step.
        (For SDXL the UNet is wrapped so that it also gets pooled embeddings and time ids: conditioning.py.)"""
        from diffusion_lab.conditioning import denoising_unet

        unet = denoising_unet(pipe)

        def conditional_output(x_t: Tensor, t: int, text_embeddings: Tensor) -> Tensor:
            return TextConditionedDenoiser(unet, text_embeddings)(x_t, t)

        def make_denoiser(text_embeddings: Tensor, uncond_embeddings, guidance_scale: float) -> Denoiser:
            return TextConditionedDenoiser(unet, text_embeddings, uncond_embeddings, guidance_scale)

        return cls(conditional_output, NoiseSchedule.from_scheduler_config(pipe.scheduler), make_denoiser)


# ----------------------------------------------------------------------------------------------------------------
# DDIM and fixed-point inversion of latents
# ----------------------------------------------------------------------------------------------------------------


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


# ----------------------------------------------------------------------------------------------------------------
# Null-text optimisation
# ----------------------------------------------------------------------------------------------------------------


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


# ----------------------------------------------------------------------------------------------------------------
# All methods on latents, for any ConditionalModel
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class LatentInversion:
    """What a method found, model-agnostic. latents: (S + 1, B, C, H, W) sampling order. unconditional: the
    unconditional condition to sample with (one, or a list with one per step for null-text). diagnostics: tensors
    (null_text_losses (S, inner_steps), fixed_point_residuals (S, iterations))."""

    latents: Tensor
    timesteps: Tensor
    method: str
    guidance_scale: float
    condition: Any
    unconditional: Any
    diagnostics: dict[str, Tensor] = field(default_factory=dict)
    noise_maps: Tensor | None = None  # edit_friendly: (S, B, C, H, W), sampled at `eta`
    eta: float = 0.0


def _check_method(method: str) -> None:
    if method not in METHODS:
        raise ValueError(f"unknown inversion method {method!r}; choose one of {', '.join(METHODS)}")


def _check_guidance(guidance_scale: float) -> float:
    guidance_scale = float(guidance_scale)
    if not math.isfinite(guidance_scale) or guidance_scale < 0:
        raise ValueError(f"guidance_scale must be a finite number >= 0 (1 = no guidance), got {guidance_scale}")
    return guidance_scale


def invert_with_model(
    model: ConditionalModel,
    z_0: Tensor,
    timesteps: Sequence[int] | Tensor,
    condition: Any,
    unconditional: Any,
    method: str = "ddim",
    guidance_scale: float = 1.0,
    null_text: NullTextSettings | None = None,
    fixed_point: FixedPointSettings | None = None,
    progress: bool = True,
    eta: float = 1.0,
    generator: torch.Generator | None = None,
) -> LatentInversion:
    """Invert latents z_0 (B, C, H, W) with any method (see the module docstring) for sampling at `guidance_scale`.

    ddim / fixed_point invert the guided denoiser itself (uncond = `unconditional`); null_text and negative_prompt
    invert at w = 1 and change the unconditional branch so that sampling at w retraces that pivot; direct keeps the
    w = 1 pivot and the sampler is put back on it after each step (`rectify_source_branch`). At w = 1 the
    unconditional branch is never used: null-text skips its optimisation and all of them reduce to DDIM inversion
    (fixed_point: its exact variant). edit_friendly records the noise maps of sampling at `eta` (> 0) from x_t
    drawn with `generator` (inversion_ddpm.edit_friendly_noise_space); `eta` is used by no other method.
    """
    _check_method(method)
    guidance_scale = _check_guidance(guidance_scale)
    timesteps = torch.as_tensor(timesteps, dtype=torch.long).cpu()
    z_0 = z_0.float() if z_0.dtype in (torch.float16, torch.bfloat16) else z_0  # inversion arithmetic in fp32+
    diagnostics: dict[str, Tensor] = {}
    if method == "edit_friendly":
        from diffusion_lab.inversion_ddpm import edit_friendly_noise_space

        denoiser = model.denoiser(condition, unconditional, guidance_scale)
        space = edit_friendly_noise_space(denoiser, z_0, model.schedule, timesteps, eta, generator=generator,
                                          progress=progress)
        return LatentInversion(space.latents, timesteps, method, guidance_scale, condition, unconditional,
                               diagnostics, space.noise_maps, float(eta))
    if method in ("ddim", "fixed_point"):
        denoiser = model.denoiser(condition, unconditional, guidance_scale)
        settings = (fixed_point or FixedPointSettings()) if method == "fixed_point" else None
        trajectory = invert_latents(denoiser, z_0, model.schedule, timesteps, settings, progress)
        if trajectory.fixed_point_residuals is not None:
            diagnostics["fixed_point_residuals"] = trajectory.fixed_point_residuals
        return LatentInversion(
            trajectory.latents, timesteps, method, guidance_scale, condition, unconditional, diagnostics
        )
    pivot = invert_latents(model.denoiser(condition, unconditional, 1.0), z_0, model.schedule, timesteps, None, progress)
    if method == "direct":  # the pivot is the result; sampling rectifies the source branch onto it
        return LatentInversion(pivot.latents, timesteps, method, guidance_scale, condition, unconditional, diagnostics)
    if method == "negative_prompt":
        return LatentInversion(pivot.latents, timesteps, method, guidance_scale, condition, condition, diagnostics)
    # null_text
    if guidance_scale == 1.0:
        return LatentInversion(pivot.latents, timesteps, method, guidance_scale, condition, unconditional, diagnostics)
    if not isinstance(unconditional, Tensor) or not isinstance(condition, Tensor):
        raise TypeError("null-text inversion optimises an embedding: condition and unconditional must be tensors")
    result = optimize_null_text(
        model, pivot.latents, timesteps, condition, unconditional, guidance_scale, null_text, progress
    )
    diagnostics["null_text_losses"] = result.losses
    return LatentInversion(
        pivot.latents, timesteps, method, guidance_scale, condition, list(result.uncond_embeddings), diagnostics
    )


def reconstruct_with_model(
    model: ConditionalModel,
    inversion: LatentInversion,
    condition: Any = None,
    guidance_scale: float | None = None,
    progress: bool = True,
    return_trajectory: bool = False,
):
    """Sample (DDIM, eta = 0; edit_friendly: at its eta with its noise maps) from the inverted z_T with the
    inversion's unconditional condition(s).

    condition: None = the source's (reconstruction); another one gives an edit. Returns a SamplingResult.
    """
    rectify = inversion.method == "direct" and condition is None  # an edit (another condition) is not rectified
    condition = inversion.condition if condition is None else condition
    guidance_scale = inversion.guidance_scale if guidance_scale is None else guidance_scale
    denoiser = model.denoiser(condition, inversion.unconditional, guidance_scale)
    on_step_end = source_rectifier(inversion.latents, inversion.latents.shape[1]) if rectify else None
    noises = None if inversion.noise_maps is None else list(inversion.noise_maps)
    return sample(
        denoiser, inversion.latents[0], model.schedule, inversion.timesteps, progress=progress,
        return_trajectory=return_trajectory, on_step_end=on_step_end, eta=inversion.eta, noises=noises,
    )


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


# ----------------------------------------------------------------------------------------------------------------
# The Inversion record: everything sampling needs, saved as safetensors + JSON
# ----------------------------------------------------------------------------------------------------------------


@dataclass
class Inversion:
    """One inversion of a batch of B images, reusable by many edits without recomputing it.

    latents: float32 (S + 1, B, C, h, w) in sampling order: latents[0] = z_T, latents[i] the input of sampling
        step i, latents[-1] = z_0 (the VAE encoding of the images).
    timesteps: long (S,) the descending subsequence the trajectory lives on.
    text_embeddings: float32 (B, L, D), the source prompts' embeddings.
    uncond_embeddings: float32 (1, B', L, D) the same unconditional embedding for every step (the empty prompt's,
        or the source prompt's for negative-prompt inversion), or (S, B, L, D) one per step (null-text); B' is 1 or B.
    prompts: the source prompts; negative_prompt: the text of the initial unconditional embedding ("" = null text).
    method, guidance_scale: how it was inverted (sample at this guidance to reconstruct).
    model_name: the pipeline it belongs to; settings: the method's settings; diagnostics: per-step tensors;
    seconds: wall time of the inversion (without VAE encoding).
    noise_maps: float32 (S, B, C, h, w), edit-friendly inversion's z_t: the noise that sampling step i adds
        (times sigma_t, at settings["eta"]) to land on latents[i + 1]; None for the deterministic (eta = 0) methods.
    """

    latents: Tensor
    timesteps: Tensor
    text_embeddings: Tensor
    uncond_embeddings: Tensor
    prompts: list[str]
    method: str
    guidance_scale: float
    model_name: str = ""
    negative_prompt: str = ""
    settings: dict = field(default_factory=dict)
    diagnostics: dict[str, Tensor] = field(default_factory=dict)
    seconds: float = 0.0
    noise_maps: Tensor | None = None

    def __post_init__(self) -> None:
        _check_method(self.method)
        steps = len(self.timesteps)
        if self.latents.ndim != 5 or self.latents.shape[0] != steps + 1:
            raise ValueError(f"latents must be (S + 1, B, C, h, w) with S = {steps}, got {tuple(self.latents.shape)}")
        if self.noise_maps is not None and self.noise_maps.shape != (steps, *self.latents.shape[1:]):
            raise ValueError(
                f"noise_maps must be (S, B, C, h, w) = {(steps, *self.latents.shape[1:])}, got {tuple(self.noise_maps.shape)}"
            )
        if (self.method == "edit_friendly") != (self.noise_maps is not None):
            raise ValueError("an edit_friendly inversion has noise_maps, and only it has them")
        if self.uncond_embeddings.ndim != 4 or self.uncond_embeddings.shape[0] not in (1, steps):
            raise ValueError(
                f"uncond_embeddings must be (1, B, L, D) or (S={steps}, B, L, D), got {tuple(self.uncond_embeddings.shape)}"
            )

    def __repr__(self) -> str:
        return (
            f"Inversion(method={self.method!r}, steps={self.num_steps}, guidance_scale={self.guidance_scale}, "
            f"batch={self.batch_size}, latent={tuple(self.latents.shape[2:])}, prompts={self.prompts!r}, "
            f"model={self.model_name!r}, per_step_uncond={self.per_step_uncond}, seconds={self.seconds:.2f})"
        )

    @property
    def num_steps(self) -> int:
        return len(self.timesteps)

    @property
    def batch_size(self) -> int:
        return self.latents.shape[1]

    @property
    def z_T(self) -> Tensor:
        """The inverted noise (B, C, h, w): where sampling starts."""
        return self.latents[0]

    @property
    def z_0(self) -> Tensor:
        """The encoded images (B, C, h, w)."""
        return self.latents[-1]

    @property
    def eta(self) -> float:
        """The eta sampling from this inversion must use: 0 (DDIM) except for edit-friendly inversion."""
        return float(self.settings.get("eta", 0.0))

    @property
    def variance(self) -> str:
        """"eta" or "sigma_hat" (posterior.mean_and_noise_sigma), the variance the noise maps were recorded for."""
        return str(self.settings.get("variance", "eta"))

    def sampling_noises(self, rows: int | None = None, device=None) -> list[Tensor] | None:
        """`sample`'s `noises` for a batch of `rows` rows (default B): the recorded noise maps, each (B, C, h, w),
        an image's map shared by all rows of an edit batch (B = 1); None when this inversion has none."""
        if self.noise_maps is None:
            return None
        rows = self.batch_size if rows is None else int(rows)
        if rows != self.batch_size and self.batch_size != 1:
            raise ValueError(f"this inversion holds {self.batch_size} images; a batch of {rows} rows cannot share them")
        maps = self.noise_maps.to(self.latents.device if device is None else device)
        return [noise.expand(rows, *noise.shape[1:]) for noise in maps]  # S tensors (rows, C, h, w)

    @property
    def per_step_uncond(self) -> bool:
        """True when each sampling step has its own unconditional embedding (null-text)."""
        return self.uncond_embeddings.shape[0] > 1

    def source_rectifier(self, source_rows: int | None = None) -> Callable[[int, int, Tensor], Tensor] | None:
        """`sample`'s on_step_end for a direct inversion: put the first `source_rows` rows (default: all B, a
        reconstruction) back on the pivot after each step (`rectify_source_branch`). None for the other methods,
        whose sampling needs no correction."""
        if self.method != "direct":
            return None
        return source_rectifier(self.latents, self.batch_size if source_rows is None else int(source_rows))

    def uncond_embeddings_for_sampling(self) -> Tensor | list[Tensor]:
        """What TextConditionedDenoiser's `uncond_embeddings` takes: one (B', L, D) tensor, or a list of S of them."""
        if self.per_step_uncond:
            return list(self.uncond_embeddings)
        return self.uncond_embeddings[0]

    def denoiser(
        self,
        unet,
        text_embeddings: Tensor | None = None,
        guidance_scale: float | None = None,
        unet_kwargs: dict | None = None,
    ) -> TextConditionedDenoiser:
        """A guided denoiser that samples from this inversion: the source prompt (reconstruction) or other text
        embeddings (an edit; (1 | B, L, D), e.g. [source, target] rows for Prompt-to-Prompt, whose unconditional
        rows all get this inversion's per-step embeddings). `unet`: the pipeline (needed for SDXL, whose UNet
        also takes pooled embeddings and time ids: conditioning.denoising_unet) or its UNet."""
        from diffusion_lab.conditioning import denoising_unet

        unet = unet if isinstance(unet, torch.nn.Module) else denoising_unet(unet)  # a pipeline: its (SDXL-aware) UNet
        device = unet.device
        text = self.text_embeddings if text_embeddings is None else text_embeddings
        uncond = self.uncond_embeddings_for_sampling()
        uncond = [u.to(device) for u in uncond] if isinstance(uncond, list) else uncond.to(device)
        scale = self.guidance_scale if guidance_scale is None else guidance_scale
        return TextConditionedDenoiser(unet, text.to(device), uncond, scale, unet_kwargs)

    def to(self, device) -> "Inversion":
        """A copy with every tensor on `device`."""
        move = lambda x: x.to(device)  # noqa: E731
        return Inversion(
            move(self.latents), self.timesteps.clone(), move(self.text_embeddings), move(self.uncond_embeddings),
            list(self.prompts), self.method, self.guidance_scale, self.model_name, self.negative_prompt,
            dict(self.settings), {k: v.clone() for k, v in self.diagnostics.items()}, self.seconds,
            None if self.noise_maps is None else move(self.noise_maps),
        )

    # -- persistence: safetensors for tensors, JSON for the rest (never pickle) ---------------------------------
    TENSORS_FILE = "inversion.safetensors"
    JSON_FILE = "inversion.json"

    def save(self, folder: str | Path) -> Path:
        """Write `folder`/inversion.safetensors (tensors) and `folder`/inversion.json (everything else)."""
        from safetensors.torch import save_file

        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        tensors = {
            "latents": self.latents,
            "timesteps": self.timesteps,
            "text_embeddings": self.text_embeddings,
            "uncond_embeddings": self.uncond_embeddings,
            **{f"diagnostics.{k}": v for k, v in self.diagnostics.items()},
            **({} if self.noise_maps is None else {"noise_maps": self.noise_maps}),
        }
        save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(folder / self.TENSORS_FILE))
        record = {
            "format_version": FORMAT_VERSION,
            "method": self.method,
            "guidance_scale": self.guidance_scale,
            "prompts": list(self.prompts),
            "negative_prompt": self.negative_prompt,
            "model_name": self.model_name,
            "num_steps": self.num_steps,
            "timesteps": self.timesteps.tolist(),
            "latent_shape": list(self.latents.shape[1:]),
            "settings": self.settings,
            "seconds": self.seconds,
        }
        (folder / self.JSON_FILE).write_text(json.dumps(record, indent=2) + "\n")
        return folder

    @classmethod
    def load(cls, folder: str | Path, device: str | torch.device = "cpu") -> "Inversion":
        """Read an inversion written by `save`."""
        from safetensors.torch import load_file

        folder = Path(folder)
        json_path, tensors_path = folder / cls.JSON_FILE, folder / cls.TENSORS_FILE
        if not json_path.exists() or not tensors_path.exists():
            raise FileNotFoundError(
                f"no saved inversion in {str(folder)!r}: expected {cls.JSON_FILE} and {cls.TENSORS_FILE} (Inversion.save)"
            )
        record = json.loads(json_path.read_text())
        if record.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{json_path} has format_version {record.get('format_version')}, expected {FORMAT_VERSION}")
        tensors = load_file(str(tensors_path), device=str(device))
        diagnostics = {k.split(".", 1)[1]: v for k, v in tensors.items() if k.startswith("diagnostics.")}
        return cls(
            latents=tensors["latents"],
            timesteps=tensors["timesteps"].cpu(),
            text_embeddings=tensors["text_embeddings"],
            uncond_embeddings=tensors["uncond_embeddings"],
            prompts=list(record["prompts"]),
            method=record["method"],
            guidance_scale=float(record["guidance_scale"]),
            model_name=record.get("model_name", ""),
            negative_prompt=record.get("negative_prompt", ""),
            settings=record.get("settings", {}),
            diagnostics=diagnostics,
            seconds=float(record.get("seconds", 0.0)),
            noise_maps=tensors.get("noise_maps"),
        )


# ----------------------------------------------------------------------------------------------------------------
# Pipeline level: images and prompts in, Inversion out
# ----------------------------------------------------------------------------------------------------------------


def pipeline_name(pipe) -> str:
    """The pipeline's name or folder as recorded by from_pretrained ("" for one built in memory)."""
    return str(getattr(pipe, "name_or_path", None) or getattr(pipe.config, "_name_or_path", "") or "")


def synchronize(device: torch.device | str) -> None:
    """Wait for queued GPU work, so that wall-clock timings measure it (no-op on the CPU)."""
    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def _prompts_for(prompt: str | Sequence[str], batch_size: int) -> list[str]:
    prompts = [prompt] if isinstance(prompt, str) else list(prompt)
    if any(not isinstance(p, str) or not p.strip() for p in prompts):
        raise ValueError(f"the source prompt is empty (or not text): {prompts!r}; write what the image shows, "
                         "the inversion is conditioned on it")
    if len(prompts) == 1 and batch_size > 1:
        prompts = prompts * batch_size
    if len(prompts) != batch_size:
        raise ValueError(f"got {len(prompts)} prompts for {batch_size} images; give one prompt, or one per image")
    return prompts


def _warn_if_half_precision(pipe) -> None:
    dtype = pipe.unet.dtype
    if dtype != torch.float32:
        warnings.warn(
            f"the UNet runs in {dtype}: the inversion arithmetic is float32 but the noise predictions are not, which "
            "costs reconstruction fidelity (null-text gradients too); load the pipeline with dtype='float32' for "
            "the best inversions",
            UserWarning,
            stacklevel=3,
        )


def inversion_inputs(pipe, image, latents: Tensor | None, prompt, negative_prompt: str = ""):
    """What every inversion starts from: z_0 (B, C, h, w) float32 on the UNet's device (the VAE encoding of `image`,
    or the `latents` given), the source prompts (one per image), their text embeddings (B, L, D) and the
    unconditional one (1, L, D) of `negative_prompt`."""
    from diffusion_lab.latents import encode_images
    from diffusion_lab.text import encode_prompts

    if latents is None:
        if image is None:
            raise ValueError("give an image (path, PIL image or array) or its latents")
        latents = encode_images(pipe, image)
    elif latents.ndim != 4:
        raise ValueError(f"latents must be (B, C, h, w), got shape {tuple(latents.shape)}")
    _warn_if_half_precision(pipe)
    device = pipe.unet.device
    z_0 = latents.to(device=device, dtype=torch.float32)  # (B, C, h, w)
    prompts = _prompts_for(prompt, z_0.shape[0])
    text_embeddings = encode_prompts(pipe, prompts).to(device)  # (B, L, D)
    null_embedding = encode_prompts(pipe, [negative_prompt]).to(device)  # (1, L, D)
    return z_0, prompts, text_embeddings, null_embedding


def invert(
    pipe,
    image,
    prompt: str | Sequence[str],
    method: str = "ddim",
    num_steps: int = 50,
    guidance_scale: float | None = None,
    *,
    timesteps: Sequence[int] | Tensor | None = None,
    negative_prompt: str = "",
    eta: float | None = None,
    seed: int = 0,
    latents: Tensor | None = None,
    inner_steps: int | None = None,
    learning_rate: float | None = None,
    early_stop_epsilon: float | None = None,
    fixed_point_iterations: int | None = None,
    fixed_point_tolerance: float | None = None,
    anderson_memory: int | None = None,
    model_name: str | None = None,
    progress: bool = True,
) -> Inversion:
    """Invert image(s) for editing with a Stable-Diffusion-architecture pipeline; the one entry point.

    image: a path, PIL image or array (or a list of them): converted to RGB at the model's size with a warning,
        then VAE-encoded (latent_dist.mean * scaling_factor, fp32). Or pass `latents` (B, C, h, w) instead.
    prompt: the source prompt (one, or one per image). method: "ddim", "null_text", "negative_prompt",
        "fixed_point", "direct" or "edit_friendly" (see the module docstring). num_steps: S, on the scheduler's own
        subsequence unless `timesteps` (descending) is given. guidance_scale: the w edits will sample with; default
        per method (DEFAULT_GUIDANCE: 1 for ddim, 3.5 for edit_friendly, 7.5 otherwise). negative_prompt: the
        text whose embedding is the unconditional one ("" = the null text of SD; zeros for SDXL).
    Null-text options (paper defaults): inner_steps 10, learning_rate 1e-2, early_stop_epsilon 1e-5.
    Fixed-point options: fixed_point_iterations 5, fixed_point_tolerance 1e-5, anderson_memory 2.
    eta must be 0 (None) for every method but "edit_friendly", which takes 0 < eta <= 1 (None: 1) and `seed` (the
    x_t draws): see inversion_ddpm.edit_friendly_inversion.
    """
    if method == "edit_friendly":
        from diffusion_lab.inversion_ddpm import DEFAULT_ETA, edit_friendly_inversion

        return edit_friendly_inversion(
            pipe, image, prompt, num_steps, guidance_scale, eta=DEFAULT_ETA if eta is None else eta, seed=seed,
            timesteps=timesteps, negative_prompt=negative_prompt, latents=latents, model_name=model_name,
            progress=progress,
        )
    check_eta(0.0 if eta is None else eta)
    _check_method(method)
    guidance_scale = _check_guidance(DEFAULT_GUIDANCE[method] if guidance_scale is None else guidance_scale)
    null_text = NullTextSettings()
    for name, value in (("inner_steps", inner_steps), ("learning_rate", learning_rate),
                        ("early_stop_epsilon", early_stop_epsilon)):
        if value is not None:
            setattr(null_text, name, value)
    fixed_point = FixedPointSettings()
    if fixed_point_iterations is not None:
        fixed_point.iterations = int(fixed_point_iterations)
    if fixed_point_tolerance is not None:
        fixed_point.tolerance = float(fixed_point_tolerance)
    if anderson_memory is not None:
        fixed_point.anderson_memory = int(anderson_memory)
    if null_text.inner_steps < 1:
        raise ValueError(f"inner_steps must be >= 1, got {null_text.inner_steps}")
    if fixed_point.iterations < 0:
        raise ValueError(f"fixed_point_iterations must be >= 0, got {fixed_point.iterations}")

    model = ConditionalModel.from_pipeline(pipe)
    if timesteps is None:
        timesteps = model.schedule.timesteps(num_steps)
    timesteps = torch.as_tensor(timesteps, dtype=torch.long).cpu()
    timestep_pairs(timesteps)  # raises for a subsequence that is not strictly decreasing
    z_0, prompts, text_embeddings, null_embedding = inversion_inputs(pipe, image, latents, prompt, negative_prompt)
    device = z_0.device

    synchronize(device)
    start = time.perf_counter()
    result = invert_with_model(
        model, z_0, timesteps, text_embeddings, null_embedding, method, guidance_scale, null_text, fixed_point,
        progress,
    )
    synchronize(device)
    seconds = time.perf_counter() - start
    uncond = result.unconditional
    uncond = torch.stack(uncond) if isinstance(uncond, list) else uncond.unsqueeze(0)  # (S | 1, B', L, D)
    settings: dict[str, Any] = {"eta": 0.0, "prediction_type": model.schedule.prediction_type}
    if method == "null_text":
        settings.update(asdict(null_text))
    if method == "fixed_point":
        settings.update(asdict(fixed_point))
    return Inversion(
        latents=result.latents.float(),
        timesteps=timesteps,
        text_embeddings=text_embeddings.float(),
        uncond_embeddings=uncond.float(),
        prompts=prompts,
        method=method,
        guidance_scale=guidance_scale,
        model_name=pipeline_name(pipe) if model_name is None else model_name,
        negative_prompt=negative_prompt,
        settings=settings,
        diagnostics=result.diagnostics,
        seconds=seconds,
    )


def ddim_inversion(pipe, image, prompt, num_steps: int = 50, guidance_scale: float = 1.0, **options) -> Inversion:
    """DDIM inversion (eta = 0) at `guidance_scale`: reliable at 1, breaks at 7.5. See `invert`."""
    return invert(pipe, image, prompt, "ddim", num_steps, guidance_scale, **options)


def null_text_inversion(
    pipe,
    image,
    prompt,
    num_steps: int = 50,
    guidance_scale: float = 7.5,
    inner_steps: int = 10,
    learning_rate: float = 1e-2,
    early_stop_epsilon: float = 1e-5,
    **options,
) -> Inversion:
    """Null-text inversion (Mokady et al. 2022) with the paper's defaults. See `invert` and `optimize_null_text`."""
    return invert(
        pipe, image, prompt, "null_text", num_steps, guidance_scale, inner_steps=inner_steps,
        learning_rate=learning_rate, early_stop_epsilon=early_stop_epsilon, **options,
    )


def negative_prompt_inversion(pipe, image, prompt, num_steps: int = 50, guidance_scale: float = 7.5, **options):
    """Negative-prompt inversion (Miyake et al. 2023): the source embedding as the unconditional one. See `invert`."""
    return invert(pipe, image, prompt, "negative_prompt", num_steps, guidance_scale, **options)


def direct_inversion(pipe, image, prompt, num_steps: int = 50, guidance_scale: float = 7.5, **options) -> Inversion:
    """Direct inversion (PnP Inversion, Ju et al. 2024): the w = 1 DDIM pivot, onto which sampling at
    `guidance_scale` puts the source branch back after every step (`rectify_source_branch`). See `invert`."""
    return invert(pipe, image, prompt, "direct", num_steps, guidance_scale, **options)


def fixed_point_inversion(
    pipe,
    image,
    prompt,
    num_steps: int = 50,
    guidance_scale: float = 7.5,
    iterations: int = 5,
    tolerance: float = 1e-5,
    anderson_memory: int = 2,
    **options,
) -> Inversion:
    """Fixed-point inversion with Anderson acceleration (AIDI-style), exact up to its residual at any guidance.

    Each step solves z_t = F(z_t), F(z) = ddim_inversion_step(z_{t_prev}, eps_hat(z, t)), by `iterations` rounds
    of Anderson-accelerated fixed-point iteration (anderson_memory 0: plain iteration, ReNoise without averaging).

    Why this method (rather than EDICT, BDIA or exact-inversion solvers): it inverts the ORDINARY DDIM sampler --
    z_T from it is reconstructed by plain `sample`, at the guidance and with the null embedding that edits use,
    so Prompt-to-Prompt and every other editor work on it unchanged (EDICT and BDIA change the sampler and double
    its state). It needs no optimisation (null-text needs 10 backward passes per step) and no gradient, only
    `iterations` extra forward passes per step; and it says how exact it is: the per-step residual
    ||z_t^(k+1) - z_t^(k)|| is stored in `diagnostics["fixed_point_residuals"]`, and at the fixed point the
    sampling step from z_t lands exactly on z_{t_prev}. Its limit: under strong guidance the guided eps_hat varies
    fast near t = 0, the iteration stops contracting there and the best iterate is kept. Measured on a shapes-tiny
    model: exact at w = 1 (the VAE ceiling already at S = 10, where DDIM is 0.5 dB below), within 0.3-0.4 dB at
    w = 3 for S >= 20, but 4-5 dB short at w = 7.5 (DDIM: 10 dB short): there, use null-text. An exact z_T at high
    w can also be less Gaussian, hence less editable, than a w = 1 pivot (as ReNoise notes).
    See `invert_latents` for the iteration.
    """
    return invert(
        pipe, image, prompt, "fixed_point", num_steps, guidance_scale, fixed_point_iterations=iterations,
        fixed_point_tolerance=tolerance, anderson_memory=anderson_memory, **options,
    )


def _check_compatible(pipe, inversion: Inversion) -> None:
    unet_config = pipe.unet.config
    channels, height, width = inversion.latents.shape[2:]
    if channels != unet_config.in_channels:
        raise ValueError(
            f"this inversion has {channels}-channel latents but the pipeline's UNet takes {unet_config.in_channels}: "
            f"it was made with {inversion.model_name or 'another model'!r}"
        )
    if inversion.text_embeddings.shape[-1] != unet_config.cross_attention_dim:
        raise ValueError(
            f"this inversion's text embeddings have width {inversion.text_embeddings.shape[-1]} but the UNet expects "
            f"{unet_config.cross_attention_dim}: it was made with {inversion.model_name or 'another model'!r}"
        )
    name = pipeline_name(pipe)
    if inversion.model_name and name and Path(name).name != Path(inversion.model_name).name:
        warnings.warn(
            f"this inversion was made with {inversion.model_name!r}, the pipeline is {name!r}: reconstruction "
            "is only faithful with the same model",
            UserWarning,
            stacklevel=3,
        )


def reconstruct(
    pipe,
    inversion: Inversion,
    prompt: str | Sequence[str] | None = None,
    guidance_scale: float | None = None,
    eta: float = 0.0,
    output_type: str = "pil",
    progress: bool = True,
):
    """Sample from an inversion's z_T with its per-step unconditional embeddings: the reconstruction (prompt None:
    the source prompt, at the inversion's guidance) or a plain prompt-swap edit (another prompt). A direct
    inversion's reconstruction is its pivot (rectified every step); its prompt swap is not rectified. An
    edit-friendly inversion samples at its own eta with its recorded noise maps (`eta` is then ignored).

    output_type: "pil" (list of PIL images), "uint8" (numpy (B, H, W, 3)), "latents" ((B, C, h, w) float32).
    """
    from diffusion_lab.latents import decode_latents
    from diffusion_lab.text import encode_prompts

    if inversion.noise_maps is None:
        check_eta(eta)
    if output_type not in ("pil", "uint8", "latents"):
        raise ValueError(f"output_type must be 'pil', 'uint8' or 'latents', got {output_type!r}")
    _check_compatible(pipe, inversion)
    device = pipe.unet.device
    text_embeddings = None
    if prompt is not None:
        text_embeddings = encode_prompts(pipe, _prompts_for(prompt, inversion.batch_size)).to(device)
    denoiser = inversion.denoiser(pipe, text_embeddings, guidance_scale)
    schedule = NoiseSchedule.from_scheduler_config(pipe.scheduler)
    # direct inversion: the source prompt is put back on the pivot; another prompt samples freely from z_T
    rectifier = inversion.source_rectifier() if prompt is None else None
    result = sample(denoiser, inversion.z_T.to(device), schedule, inversion.timesteps, progress=progress,
                    on_step_end=rectifier, eta=inversion.eta, variance=inversion.variance,
                    noises=inversion.sampling_noises(device=device))
    if output_type == "latents":
        return result.sample
    return decode_latents(pipe, result.sample, output_type)
