"""The DDIM inversion step: the lecture's deterministic (eta = 0) DDIM update read from t_prev up to t.

Only eta = 0 is invertible by running the step backwards: with eta > 0 every sampling step adds fresh noise
sigma_t eps_t that the image does not determine (edit_friendly.py instead CHOOSES those noises and records them).
"""

from __future__ import annotations

from torch import Tensor

from diffusion_lab.posterior import generalized_posterior_mean, x0_from_epsilon

ETA_ERROR = (
    "only eta = 0 (deterministic DDIM) is invertible by DDIM inversion: with eta > 0 every sampling step adds fresh "
    "noise sigma_t eps_t that the image does not determine. Invert and reconstruct with eta=0 (or, for a stochastic "
    "run you generated yourself, replay its recorded noises: sample(..., return_trajectory=True).noises)"
)


def check_eta(eta: float) -> None:
    """Raise the ValueError that explains why only eta = 0 can be inverted."""
    if eta != 0:
        raise ValueError(f"eta={eta}: {ETA_ERROR}")


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
