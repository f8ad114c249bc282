"""Text-to-image with any SD-architecture pipeline, through our own sampler (and optionally a P2P controller).

    x_T ~ N(0, I)  --sample(TextConditionedDenoiser, eta, S)-->  z_0  --VAE decode-->  image

A controller (diffusion_lab.attention) is registered on the UNet for the run, told the step before
every UNet call (`set_step`), and may blend latents after every step (`blend_latents`, LocalBlend).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
import torch

from .conditioning import denoising_unet
from .denoisers import TextConditionedDenoiser
from .latents import decode_latents
from .models.defaults import resolve_guidance
from .sampling import sample
from .schedules import NoiseSchedule
from .text import encode_prompts


@dataclass
class GenerationResult:
    images: np.ndarray  # (B, H, W, 3) uint8
    latents: torch.Tensor  # (B, C, h, w) final z_0
    initial_noise: torch.Tensor  # (B, C, h, w) x_T


def initial_noise(pipe, batch_size: int, seed: int | None = None, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """x_T ~ N(0, I) of the pipeline's latent shape, on the CPU in float32 (reproducible across devices)."""
    generator = generator or torch.Generator().manual_seed(0 if seed is None else seed)
    size = pipe.unet.config.sample_size
    return torch.randn((batch_size, pipe.unet.config.in_channels, size, size), generator=generator)


class ControlledDenoiser:
    """Wraps a denoiser so an attention controller knows the step of every UNet call."""

    def __init__(self, denoiser, controller, num_steps: int, num_prompts: int):
        self.denoiser, self.controller, self.num_steps = denoiser, controller, num_steps
        controller.set_batch_layout(num_prompts, denoiser.uses_guidance)

    def __call__(self, x_t, t, step_index: int = 0):
        self.controller.set_step(step_index, self.num_steps)
        return self.denoiser(x_t, t, step_index)


def sample_with_controller(pipe, denoiser, x_T, timesteps, controller, eta: float = 0.0, generator=None, progress: bool = True, callback=None, source_rectifier=None, noises=None, variance: str = "eta", source_branch=None, record_source=None):
    """Sample the batch x_T (P, C, h, w) with `controller` registered on the UNet: told the step before every
    UNet call (`set_step`), and given the latents after every step (`blend_latents`, LocalBlend). Returns z_0.

    source_rectifier: an on_step_end of `sample` applied before the blend (a direct inversion's
    Inversion.source_rectifier(1), which puts the source row back on its pivot). noises / variance: recorded
    per-step noises to add instead of drawing them (edit-friendly inversion's Inversion.sampling_noises).

    source_branch: a recorded SourceBranch (attention/source_branch.py) of this run's source: x_T, the denoiser's
    rows and the result are then the targets' only, (P - 1, C, h, w); the source row comes from the recording
    (its latents for the blend, its attention maps for the controller). record_source: an empty SourceBranch
    that this run's source row (row 0) is recorded into."""
    from .attention import register_attention_control

    schedule = NoiseSchedule.from_scheduler_config(pipe.scheduler)
    controller.reset()
    controller.use_source_branch(replay=source_branch, capture=record_source)
    num_prompts = x_T.shape[0] + (1 if source_branch is not None else 0)
    controlled = ControlledDenoiser(denoiser, controller, len(timesteps), num_prompts)

    def on_step_end(step_index, t_prev, x):
        if source_branch is not None:  # x: the targets; the source's z comes from the recording
            source = source_branch.latents[step_index].to(x)
            return controller.blend_latents(torch.cat([source, x]), step_index)[1:]
        if source_rectifier is not None:
            x = source_rectifier(step_index, t_prev, x)
        x = controller.blend_latents(x, step_index)
        if record_source is not None:
            record_source.add_latents(step_index, x[:1])
        return x

    with register_attention_control(pipe.unet, controller):
        result = sample(
            controlled, x_T.to(pipe.unet.device).float(), schedule, timesteps, eta=eta, generator=generator,
            progress=progress, callback=callback, on_step_end=on_step_end, noises=noises, variance=variance,
        )
    return result.sample


def prompt_list(
    prompts: str | Sequence[str],
    count: int | None = None,
    what: str = "prompt",
    hint: str = "write what the image should show (for an unconditional sample use guidance_scale=1 with a neutral "
    "caption)",
) -> list[str]:
    """A list of non-empty prompts from one string or a sequence of strings; ValueError that says what to do
    (a plain string used to be iterated character by character, an empty prompt was sampled silently).

    count: the number of images the prompts are for (one prompt is repeated for all, else one per image).
    what, hint: how the error messages name the prompts ("source prompt") and what they tell the user to do.
    """
    prompts = [prompts] if isinstance(prompts, str) else list(prompts)
    if not prompts:
        raise ValueError(f"give at least one {what}")
    for index, prompt in enumerate(prompts):
        name = f"the {what}" if len(prompts) == 1 else f"{what} {index}"
        if not isinstance(prompt, str):
            raise TypeError(f"{name} must be a string, got {type(prompt).__name__}")
        if not prompt.strip():
            raise ValueError(f"{name} is empty: {hint}")
    if count is not None and len(prompts) == 1 and count > 1:
        prompts = prompts * count
    if count is not None and len(prompts) != count:
        raise ValueError(f"got {len(prompts)} prompts for {count} images; give one prompt, or one per image")
    return prompts


@torch.no_grad()
def text_to_image(
    pipe,
    prompts: Sequence[str],
    num_steps: int = 50,
    guidance_scale: float | None = None,
    seed: int = 0,
    x_T: Optional[torch.Tensor] = None,
    eta: float = 0.0,
    controller=None,
    negative_prompt: str = "",
    progress: bool = True,
    callback=None,
) -> GenerationResult:
    """Generate one image per prompt (a single string is one prompt). `x_T` (B, C, h, w) overrides the seed; a
    (1, C, h, w) x_T is shared by all prompts (what Prompt-to-Prompt does: same seed, different prompts).
    guidance_scale None: the model's default (models.defaults: 5 for shapes-tiny, 7.5 for Stable Diffusion)."""
    prompts = prompt_list(prompts)
    guidance_scale = resolve_guidance(pipe, guidance_scale)
    device = pipe.unet.device
    x_T = initial_noise(pipe, 1 if controller is not None else len(prompts), seed) if x_T is None else x_T
    if x_T.shape[0] == 1 and len(prompts) > 1:
        x_T = x_T.expand(len(prompts), -1, -1, -1)
    schedule = NoiseSchedule.from_scheduler_config(pipe.scheduler)
    timesteps = schedule.timesteps(num_steps)
    uncond = encode_prompts(pipe, [negative_prompt]) if guidance_scale != 1.0 else None
    denoiser = TextConditionedDenoiser(denoising_unet(pipe), encode_prompts(pipe, prompts), uncond, guidance_scale=guidance_scale)
    generator = torch.Generator().manual_seed(seed + 1)
    if controller is None:
        latents = sample(denoiser, x_T.to(device).float(), schedule, timesteps, eta=eta, generator=generator, progress=progress, callback=callback).sample
    else:
        latents = sample_with_controller(pipe, denoiser, x_T, timesteps, controller, eta=eta, generator=generator, progress=progress, callback=callback)
    return GenerationResult(decode_latents(pipe, latents), latents, x_T)
