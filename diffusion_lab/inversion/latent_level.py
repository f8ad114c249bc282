"""Every method on latents, for any `ConditionalModel` (no VAE, no tokenizer): `invert_with_model` and
`reconstruct_with_model`. Trajectories are in SAMPLING order: latents[0] = z_T, latents[-1] = z_0."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from torch import Tensor

from diffusion_lab.sampling import sample

from .direct import source_rectifier
from .edit_friendly import edit_friendly_noise_space
from .fixed_point import FixedPointSettings, invert_latents
from .methods import DEFAULT_ETA, check_guidance, check_method
from .model import ConditionalModel
from .null_text import NullTextSettings, optimize_null_text


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
    variance: str = "eta"  # edit_friendly: "eta" or "sigma_hat", the variance the noise maps were recorded for


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
    eta: float = DEFAULT_ETA,
    generator: torch.Generator | Sequence[torch.Generator] | None = None,
    variance: str = "eta",
) -> LatentInversion:
    """Invert latents z_0 (B, C, H, W) with any method (see the module docstring) for sampling at `guidance_scale`.

    ddim / fixed_point invert the guided denoiser itself (uncond = `unconditional`); null_text and negative_prompt
    invert at w = 1 and change the unconditional branch so that sampling at w retraces that pivot; direct keeps the
    w = 1 pivot and the sampler is put back on it after each step (`rectify_source_branch`). At w = 1 the
    unconditional branch is never used: null-text skips its optimisation and all of them reduce to DDIM inversion
    (fixed_point: its exact variant). edit_friendly records the noise maps of sampling at `eta` (> 0) from x_t
    drawn with `generator` (one, or one per image) and `variance` (edit_friendly.edit_friendly_noise_space); `eta`
    and `variance` are used by no other method.
    """
    check_method(method)
    guidance_scale = check_guidance(guidance_scale)
    timesteps = torch.as_tensor(timesteps, dtype=torch.long).cpu()
    z_0 = z_0.float() if z_0.dtype in (torch.float16, torch.bfloat16) else z_0  # inversion arithmetic in fp32+
    diagnostics: dict[str, Tensor] = {}
    if method == "edit_friendly":
        denoiser = model.denoiser(condition, unconditional, guidance_scale)
        space = edit_friendly_noise_space(denoiser, z_0, model.schedule, timesteps, eta, variance, generator,
                                          progress)
        return LatentInversion(space.latents, timesteps, method, guidance_scale, condition, unconditional,
                               diagnostics, space.noise_maps, float(eta), variance)
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
        variance=inversion.variance,
    )
