"""The exact denoiser of a small data set: diffusion sampling without a neural network.

If the data distribution is the empirical one, p(x_0) = (1/N) sum_i N(x_0; x_i, s^2 I) (s = `data_std`, s = 0: a
mixture of deltas), the minimum-mean-squared-error denoiser that a network is trained to approximate (Ho et al.
2020, arXiv:2006.11239; Song et al. 2021, arXiv:2010.02502: eps_theta estimates E[eps | x_t]) is known in closed
form. Under component i, x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps is Gaussian:

    x_t | i ~ N(sqrt(alpha_bar_t) x_i, v_t I),          v_t = alpha_bar_t s^2 + 1 - alpha_bar_t

so the posterior over data points is a softmax, and each component shrinks x_0 towards x_t:

    w_i(x_t)          = softmax_i( -||x_t - sqrt(alpha_bar_t) x_i||^2 / (2 v_t) )
    E[x_0 | x_t]      = sum_i w_i [x_i + k_t (x_t - sqrt(alpha_bar_t) x_i)],   k_t = sqrt(alpha_bar_t) s^2 / v_t
    E[eps | x_t]      = (x_t - sqrt(alpha_bar_t) E[x_0 | x_t]) / sqrt(1 - alpha_bar_t)

With labels, conditioning on a class restricts the sum to that class's points, which makes classifier-free guidance
demonstrable exactly. Sampling with it memorizes: every trajectory ends on (or, with s > 0, near) a data point.
All arithmetic is float64 with logsumexp-stable softmax.
"""

from __future__ import annotations

import torch
from torch import Tensor

from diffusion_lab.denoisers import GuidedDenoiser
from diffusion_lab.posterior import epsilon_from_x0, prediction_target
from diffusion_lab.schedules import NoiseSchedule


class ClosedFormDenoiser:
    """MMSE denoiser of the empirical distribution of `data` (N, C, H, W), following the denoiser protocol.

    `__call__(x_t, t, step_index)` returns the unconditional output in `schedule.prediction_type` (epsilon for the
    usual schedule). labels: optional (N,) integer class labels; `conditioned(label, guidance_scale)` returns a
    denoiser for classifier-free guidance with the class-conditional model as "cond" and the whole set as "uncond".
    data_std: s >= 0, the std of the Gaussian around each data point.
    """

    def __init__(
        self, data: Tensor, schedule: NoiseSchedule, labels: Tensor | None = None, data_std: float = 0.0
    ) -> None:
        self.data = data.detach().to(torch.float64).cpu()  # (N, C, H, W)
        self.flat_data = self.data.flatten(1)  # (N, D)
        self.schedule = schedule
        self.labels = None if labels is None else torch.as_tensor(labels, dtype=torch.long).cpu()  # (N,)
        if self.labels is not None and self.labels.shape != (len(self.data),):
            raise ValueError(f"labels must have shape ({len(self.data)},), got {tuple(self.labels.shape)}")
        self.data_std = float(data_std)

    def _label_mask(self, label: int | Tensor | None, batch_size: int) -> Tensor | None:
        """(B, N) True where data point n is allowed for row b; None for the unconditional model."""
        if label is None:
            return None
        if self.labels is None:
            raise ValueError("this ClosedFormDenoiser has no labels")
        label = torch.as_tensor(label, dtype=torch.long).cpu().reshape(-1, 1).expand(batch_size, 1)  # (B, 1)
        mask = self.labels.unsqueeze(0) == label  # (B, N)
        if not mask.any(dim=1).all():
            raise ValueError(f"no data point has label(s) {label.flatten().tolist()}")
        return mask

    def posterior_weights(self, x_t: Tensor, t: int, label: int | Tensor | None = None) -> Tensor:
        """w_i(x_t) = p(component i | x_t [, label]) as float64 (B, N)."""
        alpha_bar_t = self.schedule.alpha_bar(t)
        noisy_variance = alpha_bar_t * self.data_std**2 + 1 - alpha_bar_t  # v_t
        x = x_t.detach().to(torch.float64).cpu().flatten(1)  # (B, D)
        squared_distances = torch.cdist(
            x, alpha_bar_t.sqrt() * self.flat_data, compute_mode="donot_use_mm_for_euclid_dist"
        ) ** 2  # (B, N)
        logits = -squared_distances / (2 * noisy_variance)
        mask = self._label_mask(label, x.shape[0])
        if mask is not None:
            logits = logits.masked_fill(~mask, float("-inf"))
        return torch.softmax(logits, dim=1)  # softmax subtracts the max: logsumexp-stable

    def posterior_mean_x0(self, x_t: Tensor, t: int, label: int | Tensor | None = None) -> Tensor:
        """E[x_0 | x_t (, label)] as float64 (B, C, H, W)."""
        alpha_bar_t = self.schedule.alpha_bar(t)
        weights = self.posterior_weights(x_t, t, label)  # (B, N)
        x = x_t.detach().to(torch.float64).cpu().flatten(1)  # (B, D)
        nearest_mixture = weights @ self.flat_data  # (B, D): sum_i w_i x_i
        shrink = alpha_bar_t.sqrt() * self.data_std**2 / (alpha_bar_t * self.data_std**2 + 1 - alpha_bar_t)  # k_t
        x0_mean = nearest_mixture + shrink * (x - alpha_bar_t.sqrt() * nearest_mixture)  # (B, D)
        return x0_mean.view(x_t.shape)

    def predict(self, x_t: Tensor, t: int, label: int | Tensor | None = None) -> Tensor:
        """The exact model output in schedule.prediction_type, in the dtype and device of x_t."""
        alpha_bar_t = self.schedule.alpha_bar(t)
        x = x_t.detach().to(torch.float64).cpu()  # (B, C, H, W)
        x0_mean = self.posterior_mean_x0(x_t, t, label)
        epsilon_mean = epsilon_from_x0(x, x0_mean, alpha_bar_t)
        output = prediction_target(x0_mean, epsilon_mean, alpha_bar_t, self.schedule.prediction_type)
        return output.to(device=x_t.device, dtype=x_t.dtype)

    def __call__(self, x_t: Tensor, t: int, step_index: int = 0) -> Tensor:
        return self.predict(x_t, t)

    def conditioned(self, label: int | Tensor, guidance_scale: float = 1.0) -> GuidedDenoiser:
        """Classifier-free guided denoiser: uncond + w (cond(label) - uncond), uncond = the whole data set."""
        return GuidedDenoiser(self.predict, label, None, guidance_scale)
