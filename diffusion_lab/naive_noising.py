"""Naive noising, the lecture's first editing idea (SDEdit, Meng et al. 2022, arXiv:2108.01073; diffusers' img2img).

Encode the image, add noise with the FORWARD process up to some t, then run the REVERSE process from there with
a new prompt:

    z_0 = E(x)                                                       (latents.encode_images)
    z_t = sqrt(alpha_bar_t) z_0 + sqrt(1 - alpha_bar_t) eps,  eps ~ N(0, I)      (posterior.forward_marginal_sample)
    z_0' = DDIM / DDPM sampling from z_t down the rest of the subsequence       (sampling.sample)

`strength` in [0, 1] picks t: the last round(strength * S) steps of the S-step subsequence are run (diffusers'
img2img rule: int(S * strength) steps, starting at subsequence[S - that]). Little noise keeps the image and
changes too little; much noise follows the prompt but forgets the image -- the trade-off that motivates inversion.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from PIL import Image
from torch import Tensor

from diffusion_lab.posterior import forward_marginal_sample
from diffusion_lab.sampling import sample
from diffusion_lab.schedules import NoiseSchedule


def strength_timesteps(schedule: NoiseSchedule, num_steps: int, strength: float) -> Tensor:
    """The descending timesteps still to run after noising to `strength`: the last int(num_steps * strength)
    entries of schedule.timesteps(num_steps) (empty for strength 0; all of them for strength 1)."""
    return timesteps_left_after_noising(schedule.timesteps(num_steps), strength)


def timesteps_left_after_noising(timesteps: Tensor, strength: float) -> Tensor:
    """The last int(S * strength) of the S descending `timesteps`: the least noisy ones, which sampling still runs
    after the image was noised to the first of them (lab 1's exercise 1.2 asks for this function)."""
    strength = float(strength)
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"strength must be in [0, 1] (0: keep the image, 1: start from pure noise), got {strength}")
    kept = min(int(len(timesteps) * strength), len(timesteps))
    return timesteps[len(timesteps) - kept :]


@dataclass
class NoisedLatents:
    """latents: z_t (B, C, h, w); timesteps: the descending steps left to run (timesteps[0] = t; empty when
    strength rounds to 0 steps, then z_t = z_0); t: the noise level (None if no step is left); alpha_bar_t;
    noise: the eps that was added; preview: the noised latents decoded (PIL images), for labs."""

    latents: Tensor
    timesteps: Tensor
    t: int | None
    alpha_bar_t: float
    noise: Tensor | None
    preview: list[Image.Image] | None = None


def noise_latents_to_strength(
    z_0: Tensor,
    schedule: NoiseSchedule,
    strength: float,
    num_steps: int = 50,
    generator: torch.Generator | None = None,
    noise: Tensor | None = None,
) -> NoisedLatents:
    """z_t = sqrt(alpha_bar_t) z_0 + sqrt(1 - alpha_bar_t) eps at the first of `strength_timesteps` (B, C, h, w)."""
    timesteps = strength_timesteps(schedule, num_steps, strength)
    if len(timesteps) == 0:
        return NoisedLatents(z_0, timesteps, None, 1.0, None)
    t = int(timesteps[0])
    alpha_bar_t = schedule.alpha_bar(t)
    if noise is None:
        noise = torch.randn(z_0.shape, generator=generator, dtype=z_0.dtype, device=z_0.device)
    z_t = forward_marginal_sample(z_0, alpha_bar_t, noise=noise)  # (B, C, h, w)
    return NoisedLatents(z_t, timesteps, t, float(alpha_bar_t), noise)


def noise_image_to_strength(
    pipe,
    image,
    strength: float,
    num_steps: int = 50,
    generator: torch.Generator | None = None,
    preview: bool = True,
) -> NoisedLatents:
    """Encode `image` (path / PIL / array, or a list) and noise it to `strength`; with `preview`, also decode the
    noised latents so a lab can show what the sampler starts from."""
    from diffusion_lab.latents import decode_latents, encode_images

    z_0 = encode_images(pipe, image)  # (B, C, h, w)
    schedule = NoiseSchedule.from_scheduler_config(pipe.scheduler)
    noised = noise_latents_to_strength(z_0, schedule, strength, num_steps, generator)
    if preview:
        noised.preview = decode_latents(pipe, noised.latents, "pil")
    return noised


def naive_noising_edit(
    pipe,
    image,
    prompt: str | Sequence[str],
    strength: float = 0.6,
    num_steps: int = 50,
    guidance_scale: float | None = None,
    generator: torch.Generator | None = None,
    negative_prompt: str = "",
    eta: float = 0.0,
    output_type: str = "pil",
    progress: bool = True,
):
    """Edit by naive noising: noise the image to `strength`, then sample with `prompt` at `guidance_scale` (None:
    the model's, models.defaults).

    generator drives the added noise (and the sampler's noise when eta > 0). Returns, by output_type,
    "pil" (list of PIL images), "uint8" (numpy (B, H, W, 3)) or "latents" ((B, C, h, w)).
    """
    from diffusion_lab.denoisers import TextConditionedDenoiser
    from diffusion_lab.latents import decode_latents
    from diffusion_lab.models.defaults import resolve_guidance
    from diffusion_lab.text import encode_prompts

    if output_type not in ("pil", "uint8", "latents"):
        raise ValueError(f"output_type must be 'pil', 'uint8' or 'latents', got {output_type!r}")
    noised = noise_image_to_strength(pipe, image, strength, num_steps, generator, preview=False)
    batch_size = noised.latents.shape[0]
    prompts = [prompt] * batch_size if isinstance(prompt, str) else list(prompt)
    if len(prompts) != batch_size:
        raise ValueError(f"got {len(prompts)} prompts for {batch_size} images; give one prompt, or one per image")
    device = pipe.unet.device
    text_embeddings = encode_prompts(pipe, prompts).to(device)  # (B, L, D)
    uncond_embeddings = encode_prompts(pipe, [negative_prompt]).to(device)  # (1, L, D)
    denoiser = TextConditionedDenoiser(pipe.unet, text_embeddings, uncond_embeddings, resolve_guidance(pipe, guidance_scale))
    schedule = NoiseSchedule.from_scheduler_config(pipe.scheduler)
    result = sample(
        denoiser, noised.latents.to(device), schedule, noised.timesteps, eta=eta, generator=generator,
        progress=progress,
    )
    if output_type == "latents":
        return result.sample
    return decode_latents(pipe, result.sample, output_type)
