"""The forward marginal q(x_t | x_0) and the generalized (non-Markovian) posterior q_sigma(x_{t-1} | x_t, x_0).

Song et al. 2021, "Denoising Diffusion Implicit Models" (DDIM), arXiv:2010.02502, eq. (7), (12), (16);
Ho et al. 2020, "Denoising Diffusion Probabilistic Models" (DDPM), arXiv:2006.11239.

The lecture's sampling step, for any sigma_t >= 0 ("t-1" is the previous entry of the timestep subsequence):

    x_{t-1} = sqrt(alpha_bar_{t-1}) x0_hat                                   "predicted x_0"
            + sqrt(1 - alpha_bar_{t-1} - sigma_t^2) eps_hat                  "direction pointing to x_t"
            + sigma_t eps_t,   eps_t ~ N(0, I)                                "random noise"

with eps_hat = (x_t - sqrt(alpha_bar_t) x0_hat) / sqrt(1 - alpha_bar_t). Feeding the TRUE x_0 instead of the
prediction gives q_sigma(x_{t-1} | x_t, x_0), which keeps q(x_{t-1} | x_0) = N(sqrt(alpha_bar_{t-1}) x_0,
(1 - alpha_bar_{t-1}) I) for every sigma_t with 1 - alpha_bar_{t-1} - sigma_t^2 >= 0.

Notation: the lecture's slides write alpha_t where they mean alpha_bar_t (the cumulative product); here
`alpha_bar_t` is always the cumulative product (diffusers' `alphas_cumprod[t]`, the DDIM paper's alpha_t).
Every equation lives in exactly one function below; `generalized_posterior_step` only composes them.
Alpha_bar arguments may be floats, 0-dim tensors, or (B,) tensors (one value per batch row).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from diffusion_lab.schedules import PREDICTION_TYPES, NoiseSchedule

VARIANCES = ("eta", "sigma_hat")


def _schedule_value(value: float | Tensor, like: Tensor | None = None) -> Tensor:
    """A schedule quantity as float64 on the CPU, shaped (B, 1, 1, ...) to broadcast against `like` if per-row."""
    value = torch.as_tensor(value, dtype=torch.float64).cpu()
    if like is not None and value.ndim == 1 and like.ndim > 1:
        value = value.view(-1, *([1] * (like.ndim - 1)))
    return value


def _coefficient(value: Tensor, like: Tensor) -> Tensor:
    """A float64 coefficient moved to the dtype and device of the tensor it multiplies."""
    return value.to(device=like.device, dtype=like.dtype)


# ----------------------------------------------------------------------------------------------------------------
# q(x_t | x_0): the forward marginal
# ----------------------------------------------------------------------------------------------------------------


def forward_marginal_mean_std(x_0: Tensor, alpha_bar_t: float | Tensor) -> tuple[Tensor, Tensor]:
    """Mean and standard deviation of q(x_t | x_0) = N(sqrt(alpha_bar_t) x_0, (1 - alpha_bar_t) I).

    Returns (mean (B, C, H, W), std broadcastable to it).
    """
    alpha_bar_t = _schedule_value(alpha_bar_t, x_0)
    mean = _coefficient(alpha_bar_t.sqrt(), x_0) * x_0  # (B, C, H, W)
    std = _coefficient((1 - alpha_bar_t).sqrt(), x_0)
    return mean, std


def forward_marginal_sample(
    x_0: Tensor,
    alpha_bar_t: float | Tensor,
    noise: Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Tensor:
    """x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps, a sample of q(x_t | x_0) (DDPM eq. 4).

    `noise` is eps ~ N(0, I) (B, C, H, W); drawn with `generator` when not given.
    """
    if noise is None:
        noise = torch.randn(x_0.shape, generator=generator, dtype=x_0.dtype, device=x_0.device)
    mean, std = forward_marginal_mean_std(x_0, alpha_bar_t)
    return mean + std * noise


# ----------------------------------------------------------------------------------------------------------------
# Parameterizations: what the network predicts (epsilon, v or x_0) and how to turn it into x0_hat and eps_hat
# ----------------------------------------------------------------------------------------------------------------


def prediction_target(x_0: Tensor, epsilon: Tensor, alpha_bar_t: float | Tensor, prediction_type: str) -> Tensor:
    """What a network of `prediction_type` should output for x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps.

    epsilon: eps;  sample: x_0;  v_prediction: v = sqrt(alpha_bar_t) eps - sqrt(1 - alpha_bar_t) x_0
    (Salimans & Ho 2022, arXiv:2202.00512). This is the training target, and how an exact denoiser that knows
    E[x_0 | x_t] answers in a given parameterization.
    """
    if prediction_type == "epsilon":
        return epsilon
    if prediction_type == "sample":
        return x_0
    if prediction_type == "v_prediction":
        alpha_bar_t = _schedule_value(alpha_bar_t, x_0)
        return _coefficient(alpha_bar_t.sqrt(), epsilon) * epsilon - _coefficient((1 - alpha_bar_t).sqrt(), x_0) * x_0
    raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}")


def x0_from_epsilon(x_t: Tensor, epsilon: Tensor, alpha_bar_t: float | Tensor) -> Tensor:
    """Predicted x_0 from a noise prediction: x0_hat = (x_t - sqrt(1 - alpha_bar_t) eps_hat) / sqrt(alpha_bar_t).

    The forward marginal solved for x_0 (DDIM eq. 9). Infinite where alpha_bar_t = 0 (zero terminal SNR).
    """
    alpha_bar_t = _schedule_value(alpha_bar_t, x_t)
    return (x_t - _coefficient((1 - alpha_bar_t).sqrt(), x_t) * epsilon) / _coefficient(alpha_bar_t.sqrt(), x_t)


def epsilon_from_x0(x_t: Tensor, x_0: Tensor, alpha_bar_t: float | Tensor) -> Tensor:
    """The noise that takes x_0 to x_t: eps = (x_t - sqrt(alpha_bar_t) x_0) / sqrt(1 - alpha_bar_t).

    This is the fraction inside the lecture's "direction pointing to x_t".
    """
    alpha_bar_t = _schedule_value(alpha_bar_t, x_t)
    return (x_t - _coefficient(alpha_bar_t.sqrt(), x_t) * x_0) / _coefficient((1 - alpha_bar_t).sqrt(), x_t)


def predict_x0_and_epsilon(
    model_output: Tensor, x_t: Tensor, alpha_bar_t: float | Tensor, prediction_type: str
) -> tuple[Tensor, Tensor]:
    """(x0_hat, eps_hat) from the network's output, as in diffusers' DDIMScheduler.step.

    epsilon:      eps_hat = output,  x0_hat = (x_t - sqrt(1 - alpha_bar_t) eps_hat) / sqrt(alpha_bar_t)
    sample:       x0_hat = output,   eps_hat = (x_t - sqrt(alpha_bar_t) x0_hat) / sqrt(1 - alpha_bar_t)
    v_prediction: x0_hat = sqrt(alpha_bar_t) x_t - sqrt(1 - alpha_bar_t) v,
                  eps_hat = sqrt(alpha_bar_t) v + sqrt(1 - alpha_bar_t) x_t
    """
    if prediction_type == "epsilon":
        return x0_from_epsilon(x_t, model_output, alpha_bar_t), model_output
    if prediction_type == "sample":
        return model_output, epsilon_from_x0(x_t, model_output, alpha_bar_t)
    if prediction_type == "v_prediction":
        alpha_bar_t = _schedule_value(alpha_bar_t, x_t)
        signal, noise = _coefficient(alpha_bar_t.sqrt(), x_t), _coefficient((1 - alpha_bar_t).sqrt(), x_t)
        return signal * x_t - noise * model_output, signal * model_output + noise * x_t
    raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {prediction_type!r}")


def predict_x0(model_output: Tensor, x_t: Tensor, alpha_bar_t: float | Tensor, prediction_type: str) -> Tensor:
    """The "predicted x_0" x0_hat(x_t, t); see `predict_x0_and_epsilon`."""
    return predict_x0_and_epsilon(model_output, x_t, alpha_bar_t, prediction_type)[0]


def predict_epsilon(model_output: Tensor, x_t: Tensor, alpha_bar_t: float | Tensor, prediction_type: str) -> Tensor:
    """The predicted noise eps_hat(x_t, t); see `predict_x0_and_epsilon`."""
    return predict_x0_and_epsilon(model_output, x_t, alpha_bar_t, prediction_type)[1]


# ----------------------------------------------------------------------------------------------------------------
# sigma_t: how much fresh noise each step adds
# ----------------------------------------------------------------------------------------------------------------


def sigma_from_eta(alpha_bar_t: float | Tensor, alpha_bar_prev: float | Tensor, eta: float) -> Tensor:
    """sigma_t(eta) = eta * sqrt((1 - alpha_bar_{t-1}) / (1 - alpha_bar_t)) * sqrt(1 - alpha_bar_t / alpha_bar_{t-1}).

    DDIM eq. (16). eta = 0: DDIM, deterministic. eta = 1: the DDPM posterior standard deviation beta-tilde_t
    (diffusers' DDPMScheduler variance_type "fixed_small"), over any subsequence. For 0 <= eta <= 1 the
    "direction pointing to x_t" coefficient 1 - alpha_bar_{t-1} - sigma_t^2 stays >= 0. Returns float64.
    """
    alpha_bar_t, alpha_bar_prev = _schedule_value(alpha_bar_t), _schedule_value(alpha_bar_prev)
    variance = (1 - alpha_bar_prev) / (1 - alpha_bar_t) * (1 - alpha_bar_t / alpha_bar_prev)
    return eta * variance.clamp(min=0).sqrt()


def sigma_hat(alpha_bar_t: float | Tensor, alpha_bar_prev: float | Tensor) -> Tensor:
    """sigma_hat_t = sqrt(1 - alpha_bar_t / alpha_bar_{t-1}), the larger "sigma_t = sqrt(beta_t)" choice.

    DDIM appendix D.3 (Table 1's sigma-hat row, as in DDPM's "fixed_large" variance): over consecutive steps
    1 - alpha_bar_t / alpha_bar_{t-1} = beta_t, so this is the lecture's "sigma_t = sqrt(beta_t) gives DDPM"; over
    a subsequence beta_t must be read as 1 - alpha_bar_t / alpha_bar_{t-1}.

    It is NOT a member of the q_sigma family: sigma_hat_t^2 > 1 - alpha_bar_{t-1} can happen (whenever
    alpha_bar_t < alpha_bar_{t-1}^2, common with big skips), and then sqrt(1 - alpha_bar_{t-1} - sigma_t^2) would be
    imaginary. The paper therefore keeps the eta = 1 MEAN and only swaps in the larger noise; the samples are then
    noisier than q(x_{t-1} | x_0) (see `posterior_std`). Returns float64.
    """
    alpha_bar_t, alpha_bar_prev = _schedule_value(alpha_bar_t), _schedule_value(alpha_bar_prev)
    return (1 - alpha_bar_t / alpha_bar_prev).clamp(min=0).sqrt()


def mean_and_noise_sigma(
    alpha_bar_t: float | Tensor, alpha_bar_prev: float | Tensor, eta: float = 0.0, variance: str = "eta"
) -> tuple[Tensor, Tensor]:
    """(sigma_t used inside the mean, sigma_t of the added noise) for a variance choice.

    variance="eta": both sigma_from_eta(eta) (the q_sigma family). variance="sigma_hat": the mean uses eta = 1's
    sigma, the noise uses sigma_hat (DDIM appendix D.3); `eta` is ignored.
    """
    if variance == "eta":
        sigma = sigma_from_eta(alpha_bar_t, alpha_bar_prev, eta)
        return sigma, sigma
    if variance == "sigma_hat":
        return sigma_from_eta(alpha_bar_t, alpha_bar_prev, 1.0), sigma_hat(alpha_bar_t, alpha_bar_prev)
    raise ValueError(f"variance must be one of {VARIANCES}, got {variance!r}")


def posterior_std(
    alpha_bar_t: float | Tensor, alpha_bar_prev: float | Tensor, eta: float = 0.0, variance: str = "eta"
) -> Tensor:
    """Standard deviation sigma_t of the "random noise" term: sigma_from_eta(eta) or sigma_hat."""
    return mean_and_noise_sigma(alpha_bar_t, alpha_bar_prev, eta, variance)[1]


# ----------------------------------------------------------------------------------------------------------------
# The generalized posterior q_sigma(x_{t-1} | x_t, x_0) and the sampling step built from it
# ----------------------------------------------------------------------------------------------------------------


def generalized_posterior_mean(
    x_0: Tensor, epsilon: Tensor, alpha_bar_prev: float | Tensor, sigma_t: float | Tensor
) -> Tensor:
    """Mean of q_sigma(x_{t-1} | x_t, x_0) (DDIM eq. 7 / 12):

        sqrt(alpha_bar_{t-1}) x_0  +  sqrt(1 - alpha_bar_{t-1} - sigma_t^2) eps
        "predicted x_0"               "direction pointing to x_t"

    with eps = (x_t - sqrt(alpha_bar_t) x_0) / sqrt(1 - alpha_bar_t) (`epsilon_from_x0`). Fed with the network's
    (x0_hat, eps_hat) it is the sampling step's mean; fed with the true x_0 it is the lecture's q_sigma.
    With sigma_t = 0 and alpha_bar_{t-1} read as the NEXT (noisier) alpha_bar it is also the DDIM inversion step.
    """
    alpha_bar_prev, sigma_t = _schedule_value(alpha_bar_prev, x_0), _schedule_value(sigma_t, x_0)
    direction_variance = 1 - alpha_bar_prev - sigma_t**2
    if (direction_variance < -1e-6).any():
        raise ValueError(
            "sigma_t^2 > 1 - alpha_bar_prev: the 'direction pointing to x_t' coefficient would be imaginary. "
            "Use eta <= 1, or variance='sigma_hat' (which keeps the eta = 1 mean)."
        )
    predicted_x0_term = _coefficient(alpha_bar_prev.sqrt(), x_0) * x_0  # (B, C, H, W)
    direction_to_x_t = _coefficient(direction_variance.clamp(min=0).sqrt(), epsilon) * epsilon  # (B, C, H, W)
    return predicted_x0_term + direction_to_x_t


def sample_generalized_posterior(
    x_t: Tensor,
    x_0: Tensor,
    alpha_bar_t: float | Tensor,
    alpha_bar_prev: float | Tensor,
    sigma_t: float | Tensor,
    noise: Tensor,
    mean_sigma_t: float | Tensor | None = None,
) -> Tensor:
    """A sample of q_sigma(x_{t-1} | x_t, x_0) with the TRUE x_0: generalized_posterior_mean + sigma_t * noise.

    `mean_sigma_t` is the sigma_t inside the mean (default: `sigma_t`, the lecture's q_sigma); the sigma-hat
    variant passes sigma_from_eta(..., 1) here and sigma_hat as `sigma_t`.
    """
    epsilon = epsilon_from_x0(x_t, x_0, alpha_bar_t)
    mean = generalized_posterior_mean(x_0, epsilon, alpha_bar_prev, sigma_t if mean_sigma_t is None else mean_sigma_t)
    return mean + _coefficient(_schedule_value(sigma_t, x_t), x_t) * noise


@dataclass
class StepOutput:
    """One reverse step. prev_sample: x_{t-1}; pred_original_sample: x0_hat; pred_epsilon: eps_hat;
    sigma: std of the added noise (float64 tensor); noise: the eps_t that was added (None when none was drawn)."""

    prev_sample: Tensor
    pred_original_sample: Tensor
    pred_epsilon: Tensor
    sigma: Tensor
    noise: Tensor | None = None


def generalized_posterior_step(
    x_t: Tensor,
    model_output: Tensor,
    t: int | Tensor,
    t_prev: int | Tensor,
    schedule: NoiseSchedule,
    eta: float = 0.0,
    variance: str = "eta",
    noise: Tensor | None = None,
    generator: torch.Generator | None = None,
    clip_sample_range: float | None = None,
) -> StepOutput:
    """x_{t-1} = "predicted x_0" + "direction pointing to x_t" + "random noise" (the lecture's sampling step).

    x_t, model_output: (B, C, H, W); model_output in `schedule.prediction_type`. t_prev = -1 means "after the last
    step" (alpha_bar = schedule.final_alpha_cumprod). variance="eta" gives the q_sigma family (eta=0 DDIM, eta=1
    DDPM posterior); "sigma_hat" the paper's larger-variance DDPM variant. Noise is drawn with `generator` (same
    draw as diffusers' DDIMScheduler.step) whenever eta > 0 or variance="sigma_hat", unless `noise` is given.
    `clip_sample_range` clamps x0_hat to [-r, r] (diffusers' clip_sample; eps_hat is left as predicted, like
    diffusers' default use_clipped_model_output=False). Off by default.
    """
    alpha_bar_t, alpha_bar_prev = schedule.alpha_bar(t), schedule.alpha_bar(t_prev)
    x0_hat, eps_hat = predict_x0_and_epsilon(model_output, x_t, alpha_bar_t, schedule.prediction_type)
    if clip_sample_range is not None:
        x0_hat = x0_hat.clamp(-clip_sample_range, clip_sample_range)
    mean_sigma, noise_sigma = mean_and_noise_sigma(alpha_bar_t, alpha_bar_prev, eta, variance)
    prev_sample = generalized_posterior_mean(x0_hat, eps_hat, alpha_bar_prev, mean_sigma)  # (B, C, H, W)
    if eta > 0 or variance == "sigma_hat" or noise is not None:
        if noise is None:
            noise = torch.randn(
                model_output.shape, generator=generator, dtype=model_output.dtype, device=model_output.device
            )
        prev_sample = prev_sample + _coefficient(noise_sigma, prev_sample) * noise
    return StepOutput(prev_sample, x0_hat, eps_hat, noise_sigma, noise)
