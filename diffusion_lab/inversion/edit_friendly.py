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
sampling with them and ANOTHER prompt keeps the layout (the paper's text-guided edit: `reconstruct` with a target
prompt, optionally starting `skip_steps` steps later), and they combine with Prompt-to-Prompt's attention control
(editing.run_edit).

Step 2 needs sigma_t > 0 at every step. A schedule whose final alpha_bar is 1 (a scheduler config with
set_alpha_to_one=True) makes the last step t -> -1 deterministic for every eta: sigma_from_eta has the factor
(1 - alpha_bar_{-1}) = 0, and that step returns x0_hat(x_t), which no noise can move onto the image. The sigma-hat
variance (noise sqrt(1 - alpha_bar_t / alpha_bar_{t-1}) > 0) has no such step.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor

from diffusion_lab.denoisers import Denoiser
from diffusion_lab.posterior import forward_marginal_sample, generalized_posterior_step, posterior_std
from diffusion_lab.progress import progress_bar
from diffusion_lab.schedules import NoiseSchedule, timestep_pairs

from .methods import DEFAULT_ETA


@dataclass
class NoiseSpace:
    """latents: (S + 1, B, C, H, W) in sampling order, latents[0] = x_T ... latents[-1] = x_0 (the input z_0 up to
    float rounding); every x_t an independent draw from q(x_t | x_0), as the sampler replays it. noise_maps:
    (S, B, C, H, W), the z_t of each sampling step."""

    latents: Tensor
    noise_maps: Tensor


def check_edit_friendly_eta(eta: float, variance: str) -> float:
    eta = float(eta)
    if variance == "eta" and not 0 < eta <= 1:
        raise ValueError(
            f"edit-friendly inversion needs 0 < eta <= 1, got eta={eta}: it records the noise sigma_t z_t each step "
            "adds, and eta = 0 (DDIM) adds none; for eta = 0 use DDIM or fixed-point inversion"
        )
    return eta


def check_every_step_adds_noise(
    schedule: NoiseSchedule, pairs: Sequence[tuple[int, int]], eta: float, variance: str
) -> None:
    """ValueError, before any model call, for a sampling step whose noise std sigma_t is 0 (its noise map would be
    undefined), saying why: a final alpha_bar of 1 (set_alpha_to_one=True) or an alpha_bar that does not change."""
    for t, t_prev in pairs:
        alpha_bar_t, alpha_bar_prev = schedule.alpha_bar(t), schedule.alpha_bar(t_prev)
        if float(posterior_std(alpha_bar_t, alpha_bar_prev, eta, variance)) > 0:
            continue
        if float(alpha_bar_prev) == 1.0:
            raise ValueError(
                f"the last sampling step {t} -> {t_prev} adds no noise at any eta: the schedule's final alpha_bar is "
                "1 (the scheduler config has set_alpha_to_one=True), so that step returns x0_hat and no noise map "
                "can make it land on the image. Use final alpha_bar = alpha_bar_0, as Stable Diffusion's config does: "
                "pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config, set_alpha_to_one=False) (or, on "
                "latents, NoiseSchedule.create(..., set_alpha_to_one=False)); or invert with variance='sigma_hat'"
            )
        raise ValueError(
            f"the sampling step {t} -> {t_prev} adds no noise (sigma_t = 0: alpha_bar is {float(alpha_bar_t):.6g} at "
            "both ends), so its noise map is undefined; use a subsequence whose alpha_bar changes at every step"
        )


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

    Numerically, mu_i is evaluated on the trajectory the sampler will follow, x_t = mu_{i-1} + sigma_{i-1} z_{i-1}
    computed by the same step function, not on the drawn x_t it equals up to float rounding: otherwise each step's
    rounding (1e-7) is carried through the next steps' mu, and under strong guidance the sampled path can leave the
    recorded one (measured on shapes-tiny, eta 1, S = 50, w = 7.5: 6 renders 0.83 dB below the VAE round trip on
    average, latent RMSE 0.027). Solving each step on the replayed path leaves only that step's rounding, which nothing amplifies.
    """
    eta = check_edit_friendly_eta(eta, variance)
    timesteps = torch.as_tensor(timesteps, dtype=torch.long).cpu()
    pairs = timestep_pairs(timesteps)
    check_every_step_adds_noise(schedule, pairs, eta, variance)
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
    noise_maps, replayed = [], [latents[0]]
    for step_index in progress_bar(range(len(pairs)), progress, desc="edit-friendly inversion"):
        t, t_prev = pairs[step_index]
        x_t, x_prev = replayed[-1], latents[step_index + 1]  # x_t as the sampler will have it
        output = denoiser(x_t, t, step_index)  # (B, C, H, W)
        step = generalized_posterior_step(
            x_t, output, t, t_prev, schedule, eta=eta, variance=variance, noise=torch.zeros_like(x_t)
        )  # prev_sample = mu + sigma * 0
        noise_map = (x_prev - step.prev_sample) / float(step.sigma)
        noise_maps.append(noise_map)
        replayed.append(generalized_posterior_step(  # the sampler's own arithmetic: x_{t-1} = mu + sigma z
            x_t, output, t, t_prev, schedule, eta=eta, variance=variance, noise=noise_map).prev_sample)
    return NoiseSpace(torch.stack(replayed), torch.stack(noise_maps))
