"""Edit-friendly DDPM inversion: the noise of a stochastic (eta > 0) sampler, recorded so that it retraces an image.

Huberman-Spiegelglas, Kulikov & Michaeli 2024, "An Edit Friendly DDPM Noise Space: Inversion and Manipulations",
arXiv:2304.06140 (Algorithm 1 / eq. 6). The bridge from lab 2's sigma to inversion: the sigma-posterior step of
posterior.py,

    x_{t-1} = mu_t(x_t) + sigma_t z_t,     mu_t(x_t) = sqrt(alpha_bar_{t-1}) x0_hat + sqrt(1 - alpha_bar_{t-1} - sigma_t^2) eps_hat

adds fresh noise z_t at every step, so DDIM inversion cannot undo it (only eta = 0 is invertible that way). But if
we are free to CHOOSE the noises, any sequence x_T, ..., x_1, x_0 = image can be made a sampling trajectory:

    1. draw every x_t INDEPENDENTLY from the forward marginal q(x_t | x_0) = N(sqrt(alpha_bar_t) x_0, (1 - alpha_bar_t) I)
       (`forward_marginal_sample`; unlike DDPM's forward chain, the eps of different t are independent);
    2. solve the sampling step for its noise:  z_t = (x_{t-1} - mu_t(x_t)) / sigma_t.

Sampling from x_T with these z_t (sampling.sample(..., noises=...)) then reproduces x_{t-1} at every step, and x_0
exactly (to float rounding), for any eta > 0 and any guidance, because mu_t is evaluated with the same model,
prompt and guidance. The z_t are not N(0, I) white noise: they carry the image's structure ("edit friendly"), so
sampling with them and ANOTHER prompt keeps the layout (the paper's text-guided edit, optionally starting
`skip_steps` steps later), and they combine with Prompt-to-Prompt's attention control (editing.run_edit).

Layers: `edit_friendly_noise_space` (latents and any Denoiser, model-agnostic); `edit_friendly_inversion` (a
pipeline and an image -> an `Inversion` with `noise_maps`, method "edit_friendly", reusable by every editor);
`edit_friendly_edit` (the paper's prompt-swap edit with T_skip).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor

from diffusion_lab.denoisers import Denoiser
from diffusion_lab.posterior import forward_marginal_sample, generalized_posterior_step
from diffusion_lab.progress import progress_bar
from diffusion_lab.schedules import NoiseSchedule, timestep_pairs

DEFAULT_ETA = 1.0  # the paper's DDPM sampler (eta = 1: DDPM's posterior variance)
DEFAULT_GUIDANCE = 3.5  # the paper's source guidance scale (cfg_scale_src)


@dataclass
class NoiseSpace:
    """latents: (S + 1, B, C, H, W) in sampling order, latents[0] = x_T ... latents[-1] = x_0 (the input z_0);
    every x_t an independent draw from q(x_t | x_0). noise_maps: (S, B, C, H, W), the z_t of each sampling step."""

    latents: Tensor
    noise_maps: Tensor


def _check_eta(eta: float, variance: str) -> float:
    eta = float(eta)
    if variance == "eta" and not 0 < eta <= 1:
        raise ValueError(
            f"edit-friendly inversion needs 0 < eta <= 1, got eta={eta}: it records the noise sigma_t z_t each step "
            "adds, and eta = 0 (DDIM) adds none; for eta = 0 use DDIM or fixed-point inversion"
        )
    return eta


@torch.no_grad()
def edit_friendly_noise_space(
    denoiser: Denoiser,
    z_0: Tensor,
    schedule: NoiseSchedule,
    timesteps: Sequence[int] | Tensor,
    eta: float = DEFAULT_ETA,
    variance: str = "eta",
    generator: torch.Generator | Sequence[torch.Generator] | None = None,
    progress: bool = True,
) -> NoiseSpace:
    """Edit-friendly DDPM inversion of latents z_0 (B, C, H, W) for `denoiser` (with the guidance it will sample at).

    x_t = forward_marginal_sample(z_0, alpha_bar_t, eps_t) with independent eps_t ~ N(0, I) drawn on the CPU (the
    same numbers on every device) from `generator`, or from one generator per image (a list of B), which makes an
    image's draws independent of the batch it is inverted in. Then for each sampling step i from (t, t_prev):

        mu_i = generalized_posterior_step(x_t, denoiser(x_t, t, i), t, t_prev, eta, variance, noise=0)   (the mean)
        z_i  = (x_{t_prev} - mu_i) / sigma_i

    sigma_i is the step's noise std (sigma_from_eta, or sigma_hat with variance="sigma_hat"); it must be > 0.
    """
    eta = _check_eta(eta, variance)
    timesteps = torch.as_tensor(timesteps, dtype=torch.long).cpu()
    pairs = timestep_pairs(timesteps)
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    if isinstance(generator, torch.Generator):
        draw = lambda: torch.randn(z_0.shape, generator=generator, dtype=torch.float32)  # noqa: E731
    else:
        if len(generator) != z_0.shape[0]:
            raise ValueError(f"got {len(generator)} generators for {z_0.shape[0]} images; give one per image")
        draw = lambda: torch.cat([  # noqa: E731
            torch.randn((1, *z_0.shape[1:]), generator=row, dtype=torch.float32) for row in generator])
    noisy = []
    for t in timesteps.tolist():  # x_T first: the sampling order
        epsilon = draw().to(z_0)  # (B, C, H, W)
        noisy.append(forward_marginal_sample(z_0, schedule.alpha_bar(t), noise=epsilon))
    latents = torch.stack(noisy + [z_0])  # (S + 1, B, C, H, W)
    noise_maps = []
    for step_index in progress_bar(range(len(pairs)), progress, desc="edit-friendly inversion"):
        t, t_prev = pairs[step_index]
        x_t, x_prev = latents[step_index], latents[step_index + 1]
        output = denoiser(x_t, t, step_index)  # (B, C, H, W)
        step = generalized_posterior_step(
            x_t, output, t, t_prev, schedule, eta=eta, variance=variance, noise=torch.zeros_like(x_t)
        )  # prev_sample = mu + sigma * 0
        sigma = float(step.sigma)
        if sigma <= 0:
            raise ValueError(
                f"the sampling step {t} -> {t_prev} adds no noise (sigma_t = 0), so its noise map is undefined; use "
                "eta > 0 and a subsequence whose alpha_bar changes at every step"
            )
        noise_maps.append((x_prev - step.prev_sample) / sigma)
    return NoiseSpace(latents, torch.stack(noise_maps))


def edit_friendly_inversion(
    pipe,
    image,
    prompt: str | Sequence[str],
    num_steps: int = 50,
    guidance_scale: float | None = None,
    *,
    eta: float = DEFAULT_ETA,
    variance: str = "eta",
    seed: int = 0,
    timesteps: Sequence[int] | Tensor | None = None,
    negative_prompt: str = "",
    latents: Tensor | None = None,
    model_name: str | None = None,
    progress: bool = True,
):
    """Edit-friendly DDPM inversion of image(s) with a Stable-Diffusion-architecture pipeline -> an `Inversion`.

    Like `inversion.invert` (image or `latents`, one prompt or one per image, the scheduler's subsequence of
    `num_steps` unless `timesteps` is given), plus: eta (0 < eta <= 1; 1 = DDPM, the paper's), variance ("eta" or
    "sigma_hat"), seed (the x_t draws). guidance_scale: the w of the source branch (default 3.5, the paper's
    source scale); sampling at this w with the source prompt and the recorded noise maps reproduces the image.
    Image b of the batch draws its x_t from seed + b, so it gets the same inversion alone with that seed.
    The Inversion's latents are the x_t, its `noise_maps` the z_t; reconstruct / edit_real / run_edit use them.
    """
    from diffusion_lab.conditioning import denoising_unet
    from diffusion_lab.denoisers import TextConditionedDenoiser
    from diffusion_lab.inversion import Inversion, _check_guidance, inversion_inputs, pipeline_name, synchronize

    eta = _check_eta(eta, variance)
    guidance_scale = _check_guidance(DEFAULT_GUIDANCE if guidance_scale is None else guidance_scale)
    schedule = NoiseSchedule.from_scheduler_config(pipe.scheduler)
    timesteps = schedule.timesteps(num_steps) if timesteps is None else timesteps
    timesteps = torch.as_tensor(timesteps, dtype=torch.long).cpu()
    z_0, prompts, text_embeddings, null_embedding = inversion_inputs(pipe, image, latents, prompt, negative_prompt)
    device = z_0.device
    denoiser = TextConditionedDenoiser(denoising_unet(pipe), text_embeddings, null_embedding, guidance_scale)

    synchronize(device)
    start = time.perf_counter()
    space = edit_friendly_noise_space(
        denoiser, z_0, schedule, timesteps, eta, variance,
        [torch.Generator().manual_seed(seed + row) for row in range(z_0.shape[0])], progress,
    )
    synchronize(device)
    return Inversion(
        latents=space.latents.float(),
        timesteps=timesteps,
        text_embeddings=text_embeddings.float(),
        uncond_embeddings=null_embedding.float().unsqueeze(0),
        prompts=prompts,
        method="edit_friendly",
        guidance_scale=guidance_scale,
        model_name=pipeline_name(pipe) if model_name is None else model_name,
        negative_prompt=negative_prompt,
        settings={"eta": eta, "variance": variance, "seed": int(seed), "prediction_type": schedule.prediction_type},
        seconds=time.perf_counter() - start,
        noise_maps=space.noise_maps.float(),
    )


@torch.no_grad()
def edit_friendly_edit(
    pipe,
    inversion,
    prompt: str | Sequence[str] | None = None,
    guidance_scale: float | None = None,
    skip_steps: int = 0,
    output_type: str = "pil",
    progress: bool = True,
):
    """The paper's text-guided edit: sample from x_{T - skip} with the recorded noise maps and another prompt.

    prompt: the target prompt(s) (None: the source, which reconstructs the image when skip_steps = 0 and
    guidance_scale is the inversion's). guidance_scale: None = the inversion's (the paper edits at 15 from a
    source inverted at 3.5). skip_steps: T_skip, how many of the first (noisiest) steps to skip: sampling starts
    from the inverted x at step `skip_steps`, which keeps more of the image (the paper: 36 of 100).
    output_type: "pil", "uint8" or "latents".
    """
    from diffusion_lab.latents import decode_latents
    from diffusion_lab.sampling import sample
    from diffusion_lab.text import encode_prompts

    from diffusion_lab.inversion import _check_compatible

    if inversion.noise_maps is None:
        raise ValueError(f"this is a {inversion.method} inversion without noise maps: invert with method='edit_friendly'")
    _check_compatible(pipe, inversion)
    if output_type not in ("pil", "uint8", "latents"):
        raise ValueError(f"output_type must be 'pil', 'uint8' or 'latents', got {output_type!r}")
    skip_steps = int(skip_steps)
    if not 0 <= skip_steps < inversion.num_steps:
        raise ValueError(f"skip_steps must be in [0, {inversion.num_steps - 1}], got {skip_steps}")
    device = pipe.unet.device
    text_embeddings = None
    if prompt is not None:
        from diffusion_lab.inversion import _prompts_for

        text_embeddings = encode_prompts(pipe, _prompts_for(prompt, inversion.batch_size)).to(device)
    denoiser = inversion.denoiser(pipe, text_embeddings, guidance_scale)
    schedule = NoiseSchedule.from_scheduler_config(pipe.scheduler)
    noises = inversion.sampling_noises(inversion.batch_size, device)
    result = sample(
        denoiser, inversion.latents[skip_steps].to(device), schedule, inversion.timesteps[skip_steps:],
        eta=inversion.eta, variance=inversion.variance, noises=noises[skip_steps:], progress=progress,
    )
    if output_type == "latents":
        return result.sample
    return decode_latents(pipe, result.sample, output_type)
