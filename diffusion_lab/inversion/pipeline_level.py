"""Pipeline level: images and prompts in, an `Inversion` out (`invert`, every method), and sampling back from it
(`reconstruct`: the reconstruction, a prompt-swap edit, edit-friendly inversion's T_skip edit). Any
Stable-Diffusion-architecture pipeline (SD 1.x / 2.x, SDXL through conditioning.denoising_unet)."""

from __future__ import annotations

import time
import warnings
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any, Sequence

import torch
from torch import Tensor

from diffusion_lab.generation import prompt_list
from diffusion_lab.models.defaults import inversion_guidance, model_defaults
from diffusion_lab.models.loading import synchronize
from diffusion_lab.sampling import sample
from diffusion_lab.schedules import NoiseSchedule, timestep_pairs

from .edit_friendly import check_edit_friendly_eta
from .fixed_point import FixedPointSettings
from .latent_level import invert_with_model
from .methods import DEFAULT_ETA, check_guidance, check_method
from .model import ConditionalModel
from .null_text import NullTextSettings
from .result import Inversion
from .step import check_eta

SOURCE_PROMPT_HINT = "write what the image shows, the inversion is conditioned on it"


def pipeline_name(pipe) -> str:
    """The pipeline's name or folder as recorded by from_pretrained ("" for one built in memory)."""
    return str(getattr(pipe, "name_or_path", None) or getattr(pipe.config, "_name_or_path", "") or "")


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
    prompts = prompt_list(prompt, z_0.shape[0], what="source prompt", hint=SOURCE_PROMPT_HINT)
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
    variance: str = "eta",
    seed: int = 0,
    latents: Tensor | None = None,
    null_text_settings: str | NullTextSettings | None = None,
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
        "fixed_point", "direct" or "edit_friendly" (see the package docstring). num_steps: S, on the scheduler's own
        subsequence unless `timesteps` (descending) is given. guidance_scale: the w edits will sample with; None: the
        model's default for the method (models.defaults.inversion_guidance: 1 for ddim, 3.5 for edit_friendly, 7.5
        otherwise). negative_prompt: the text whose embedding is the unconditional one ("" = the null text of SD;
        zeros for SDXL).
    Null-text options: null_text_settings "fast" (NullTextSettings(): the same method, about 3x cheaper on
        shapes-tiny), "paper" (NullTextSettings.paper(): Mokady et al. 2022's loop) or a NullTextSettings; None: the
        model's ModelDefaults.null_text_settings ("fast" for shapes-tiny, "paper" for Stable Diffusion, for which
        only the paper's numbers are measured) with its null_text_learning_rate if set. inner_steps,
        learning_rate and early_stop_epsilon override those settings' fields.
    Fixed-point options: fixed_point_iterations 5, fixed_point_tolerance 1e-5, anderson_memory 2.
    eta must be 0 (None) for every method but "edit_friendly", which takes 0 < eta <= 1 (None: 1, DDPM), `variance`
    ("eta" or "sigma_hat") and `seed`: image b of the batch draws its x_t from seed + b, so it gets the same
    inversion alone with that seed; the Inversion's latents are the x_t, its `noise_maps` the z_t.
    `seconds` of the result: the wall time of the inversion itself (no VAE or text encoding).
    """
    check_method(method)
    if method == "edit_friendly":
        eta = check_edit_friendly_eta(DEFAULT_ETA if eta is None else eta, variance)
    else:
        eta = 0.0 if eta is None else eta
        check_eta(eta)
    guidance_scale = check_guidance(inversion_guidance(method, pipe) if guidance_scale is None else guidance_scale)
    null_text = null_text_settings_for(pipe, null_text_settings)
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
    generators = [torch.Generator().manual_seed(seed + row) for row in range(z_0.shape[0])]  # edit_friendly's x_t

    synchronize(device)
    start = time.perf_counter()
    result = invert_with_model(
        model, z_0, timesteps, text_embeddings, null_embedding, method, guidance_scale, null_text, fixed_point,
        progress, eta=eta, generator=generators, variance=variance,
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
    if method == "edit_friendly":
        settings = {"eta": eta, "variance": variance, "seed": int(seed),
                    "prediction_type": model.schedule.prediction_type}
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
        noise_maps=None if result.noise_maps is None else result.noise_maps.float(),
    )


def null_text_settings_for(pipe, settings: str | NullTextSettings | None = None) -> NullTextSettings:
    """A copy of `settings` (a NullTextSettings or a preset name); None: the loop `invert` runs for this model by
    default (its ModelDefaults' preset and learning rate)."""
    if isinstance(settings, NullTextSettings):
        return replace(settings)
    if settings is not None and not isinstance(settings, str):
        raise TypeError("null_text_settings must be 'fast', 'paper' or a NullTextSettings, "
                        f"got {type(settings).__name__}")
    defaults = model_defaults(pipe)
    null_text = NullTextSettings.preset(defaults.null_text_settings if settings is None else settings)
    if settings is None and defaults.null_text_learning_rate is not None:
        null_text.learning_rate = defaults.null_text_learning_rate
    return null_text


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
    skip_steps: int = 0,
):
    """Sample from an inversion's z_T with its per-step unconditional embeddings: the reconstruction (prompt None:
    the source prompt, at the inversion's guidance) or a plain prompt-swap edit (another prompt). A direct
    inversion's reconstruction is its pivot (rectified every step); its prompt swap is not rectified. An
    edit-friendly inversion samples at its own eta with its recorded noise maps (`eta` is then ignored).

    skip_steps: T_skip of edit-friendly inversion's text-guided edit (Huberman-Spiegelglas et al. 2024): leave out
    the first (noisiest) steps and start from the inverted latents[skip_steps], which keeps more of the image (the
    paper: 36 of 100, editing at guidance 15 from a source inverted at 3.5). Works for every method.
    output_type: "pil" (list of PIL images), "uint8" (numpy (B, H, W, 3)), "latents" ((B, C, h, w) float32).
    """
    from diffusion_lab.latents import decode_latents
    from diffusion_lab.text import encode_prompts

    if inversion.noise_maps is None:
        check_eta(eta)
    if output_type not in ("pil", "uint8", "latents"):
        raise ValueError(f"output_type must be 'pil', 'uint8' or 'latents', got {output_type!r}")
    _check_compatible(pipe, inversion)
    inversion = inversion.from_step(skip_steps) if skip_steps else inversion
    device = pipe.unet.device
    text_embeddings = None
    if prompt is not None:
        text_embeddings = encode_prompts(pipe, prompt_list(prompt, inversion.batch_size)).to(device)
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
