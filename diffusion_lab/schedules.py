"""Noise schedules and timestep subsequences.

The forward (noising) process of DDPM (Ho et al. 2020, arXiv:2006.11239) adds a little Gaussian noise at each
of T training steps with variances beta_1 .. beta_T. Everything the samplers need is the cumulative product

    alpha_bar_t = prod_{s <= t} (1 - beta_s),        q(x_t | x_0) = N(sqrt(alpha_bar_t) x_0, (1 - alpha_bar_t) I).

DDIM (Song et al. 2021, "Denoising Diffusion Implicit Models", arXiv:2010.02502) samples over a *subsequence*
tau_1 < ... < tau_S of the T training steps; `timestep_subsequence` builds it ("uniform" or "quadratic" skip,
section 4.2 and appendix D.2 of the paper) with the timestep spacings of Lin et al. 2023 (arXiv:2305.08891,
Table 2: "leading", "trailing", "linspace"), which is what diffusers' `DDIMScheduler.set_timesteps` implements.

Conventions (the same as diffusers' DDIMScheduler, tested against it):
  * timesteps are 0-based: t = 0 .. T-1 index `alphas_cumprod`;
  * subsequences are returned in sampling order (descending);
  * the step after the last one goes to t_prev = -1, whose alpha_bar is `final_alpha_cumprod`
    (1.0 when `set_alpha_to_one`, else alpha_bar_0).

Beta schedules are computed in float32 exactly as diffusers computes them (so a model trained with diffusers sees
the same numbers), then stored as float64; alpha_bar is accumulated in float64.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import torch
from torch import Tensor

BETA_SCHEDULES = ("linear", "scaled_linear", "squaredcos_cap_v2", "cosine")
PREDICTION_TYPES = ("epsilon", "v_prediction", "sample")
SKIP_TYPES = ("uniform", "quadratic")
SPACINGS = ("leading", "trailing", "linspace")

# The DDIM paper's quadratic skip for CIFAR10 ends at 0.8 T (official code: np.sqrt(num_timesteps * 0.8)).
QUADRATIC_MAX_FRACTION = 0.8


def cosine_betas(num_train_timesteps: int, max_beta: float = 0.999) -> Tensor:
    """Improved-DDPM cosine schedule (Nichol & Dhariwal 2021, arXiv:2102.09672), diffusers' "squaredcos_cap_v2".

    alpha_bar(s) = cos^2(((s + 0.008) / 1.008) * pi / 2) for s in [0, 1], and
    beta_t = min(1 - alpha_bar((t+1)/T) / alpha_bar(t/T), max_beta).
    """

    def alpha_bar_continuous(s: float) -> float:
        return math.cos((s + 0.008) / 1.008 * math.pi / 2) ** 2

    betas = []
    for t in range(num_train_timesteps):
        s_now, s_next = t / num_train_timesteps, (t + 1) / num_train_timesteps
        betas.append(min(1 - alpha_bar_continuous(s_next) / alpha_bar_continuous(s_now), max_beta))
    return torch.tensor(betas, dtype=torch.float32)


def rescale_zero_terminal_snr(betas: Tensor) -> Tensor:
    """Rescale betas so that alpha_bar_{T-1} = 0 exactly (Lin et al. 2023, arXiv:2305.08891, Algorithm 1).

    sqrt(alpha_bar_t) is shifted so its last value is 0 and scaled so its first value is unchanged. With a zero
    terminal signal-to-noise ratio the last training step is pure noise, so sampling from x_T ~ N(0, I) matches
    training (no "background leaks through the noise"). The model must then predict v or x_0: predicting epsilon at
    alpha_bar = 0 says nothing about x_0. Computed in the dtype of `betas` (float32 matches diffusers bit for bit).
    """
    sqrt_alphas_cumprod = torch.cumprod(1.0 - betas, dim=0).sqrt()
    first, last = sqrt_alphas_cumprod[0].clone(), sqrt_alphas_cumprod[-1].clone()
    sqrt_alphas_cumprod = (sqrt_alphas_cumprod - last) * (first / (first - last))
    alphas_cumprod = sqrt_alphas_cumprod**2
    alphas = torch.cat([alphas_cumprod[0:1], alphas_cumprod[1:] / alphas_cumprod[:-1]])
    return 1 - alphas


def make_betas(
    beta_schedule: str = "linear",
    num_train_timesteps: int = 1000,
    beta_start: float = 0.0001,
    beta_end: float = 0.02,
    trained_betas: Sequence[float] | np.ndarray | Tensor | None = None,
    rescale_betas_zero_snr: bool = False,
) -> Tensor:
    """Betas beta_1..beta_T as a float64 tensor (T,), identical to diffusers' DDIMScheduler(...).betas.

    "linear": linspace(beta_start, beta_end, T) (DDPM); "scaled_linear": linspace(sqrt(beta_start),
    sqrt(beta_end), T)**2 (Stable Diffusion); "squaredcos_cap_v2" / "cosine": `cosine_betas`.
    `trained_betas`, when given, overrides the schedule.
    """
    if trained_betas is not None:
        betas = torch.as_tensor(trained_betas, dtype=torch.float32)
    elif beta_schedule == "linear":
        betas = torch.linspace(beta_start, beta_end, num_train_timesteps, dtype=torch.float32)
    elif beta_schedule == "scaled_linear":
        betas = torch.linspace(beta_start**0.5, beta_end**0.5, num_train_timesteps, dtype=torch.float32) ** 2
    elif beta_schedule in ("squaredcos_cap_v2", "cosine"):
        betas = cosine_betas(num_train_timesteps)
    else:
        raise ValueError(f"unknown beta_schedule {beta_schedule!r}; choose one of {BETA_SCHEDULES}")
    if rescale_betas_zero_snr:
        betas = rescale_zero_terminal_snr(betas)
    return betas.to(torch.float64)


@dataclass(eq=False)
class NoiseSchedule:
    """Everything a sampler needs to know about the forward process of a trained model.

    betas, alphas_cumprod: float64 tensors (T,); alphas_cumprod[t] is the lecture's alpha_bar_t.
    final_alpha_cumprod: the alpha_bar used for t_prev = -1, i.e. after the last sampling step
        (1.0 if the scheduler's `set_alpha_to_one`, else alpha_bar_0).
    prediction_type: what the network outputs: "epsilon" (the noise), "v_prediction"
        (v = sqrt(alpha_bar_t) eps - sqrt(1 - alpha_bar_t) x_0) or "sample" (x_0 itself).
    timestep_spacing, steps_offset: the default subsequence used by `timesteps()`.
    """

    betas: Tensor
    alphas_cumprod: Tensor
    num_train_timesteps: int
    prediction_type: str = "epsilon"
    final_alpha_cumprod: float = 1.0
    timestep_spacing: str = "leading"
    steps_offset: int = 0

    def __post_init__(self) -> None:
        if self.prediction_type not in PREDICTION_TYPES:
            raise ValueError(f"prediction_type must be one of {PREDICTION_TYPES}, got {self.prediction_type!r}")
        self.final_alpha_cumprod = float(self.final_alpha_cumprod)

    def __repr__(self) -> str:
        return (
            f"NoiseSchedule(T={self.num_train_timesteps}, betas={float(self.betas[0]):.3g}..{float(self.betas[-1]):.3g}, "
            f"alpha_bar_T-1={float(self.alphas_cumprod[-1]):.3g}, prediction_type={self.prediction_type!r}, "
            f"final_alpha_cumprod={self.final_alpha_cumprod:.6g}, timestep_spacing={self.timestep_spacing!r}, "
            f"steps_offset={self.steps_offset})"
        )

    @classmethod
    def create(
        cls,
        beta_schedule: str = "linear",
        num_train_timesteps: int = 1000,
        beta_start: float = 0.0001,
        beta_end: float = 0.02,
        prediction_type: str = "epsilon",
        set_alpha_to_one: bool = True,
        rescale_betas_zero_snr: bool = False,
        trained_betas: Sequence[float] | np.ndarray | Tensor | None = None,
        timestep_spacing: str = "leading",
        steps_offset: int = 0,
    ) -> "NoiseSchedule":
        """Build a schedule from the same arguments (and defaults) as diffusers' DDIMScheduler."""
        betas = make_betas(
            beta_schedule, num_train_timesteps, beta_start, beta_end, trained_betas, rescale_betas_zero_snr
        )
        alphas_cumprod = torch.cumprod(1.0 - betas, dim=0)  # alpha_bar_t, float64
        final = 1.0 if set_alpha_to_one else float(alphas_cumprod[0])
        return cls(betas, alphas_cumprod, len(betas), prediction_type, final, timestep_spacing, steps_offset)

    @classmethod
    def from_scheduler_config(cls, config_or_scheduler: Mapping[str, Any] | Any) -> "NoiseSchedule":
        """Read a diffusers scheduler (or its `.config` dict, e.g. from scheduler_config.json).

        Missing keys take DDIMScheduler's defaults (e.g. a DDPMScheduler config has no `set_alpha_to_one`: True).
        """
        config = getattr(config_or_scheduler, "config", config_or_scheduler)
        get = config.get
        return cls.create(
            beta_schedule=get("beta_schedule", "linear"),
            num_train_timesteps=get("num_train_timesteps", 1000),
            beta_start=get("beta_start", 0.0001),
            beta_end=get("beta_end", 0.02),
            prediction_type=get("prediction_type", "epsilon"),
            set_alpha_to_one=get("set_alpha_to_one", True),
            rescale_betas_zero_snr=get("rescale_betas_zero_snr", False),
            trained_betas=get("trained_betas", None),
            timestep_spacing=get("timestep_spacing", "leading"),
            steps_offset=get("steps_offset", 0),
        )

    def alpha_bar(self, t: int | Tensor) -> Tensor:
        """alpha_bar_t as float64 (0-dim for an int, same shape for a tensor); t < 0 gives `final_alpha_cumprod`."""
        t = torch.as_tensor(t, dtype=torch.long).cpu()
        if (t >= self.num_train_timesteps).any():
            raise IndexError(f"timestep {t.tolist()} out of range for {self.num_train_timesteps} training steps")
        final = torch.tensor(self.final_alpha_cumprod, dtype=torch.float64)
        return torch.where(t >= 0, self.alphas_cumprod[t.clamp(min=0)], final)

    def timesteps(self, num_steps: int, skip: str = "uniform", spacing: str | None = None) -> Tensor:
        """`timestep_subsequence` with this schedule's T, spacing and steps_offset."""
        return timestep_subsequence(
            self.num_train_timesteps, num_steps, skip, spacing or self.timestep_spacing, self.steps_offset
        )


def timestep_subsequence(
    num_train_timesteps: int,
    num_steps: int,
    skip: str = "uniform",
    spacing: str = "leading",
    steps_offset: int = 0,
) -> Tensor:
    """The DDIM subsequence tau of `num_steps` timesteps, as a LongTensor in DESCENDING (sampling) order.

    skip="uniform" equals diffusers' DDIMScheduler.set_timesteps exactly:
        leading:  (arange(S) * (T // S)) + steps_offset            (T=1000, S=50, offset 1: 981, ..., 21, 1)
        trailing: round(arange(T, 0, -T / S)) - 1                  (999, 979, ..., 19; steps_offset ignored)
        linspace: round(linspace(0, T - 1, S))                     (999, ..., 0)
    skip="quadratic" (DDIM paper, dense steps near t = 0, where the details are decided):
        leading:  int(linspace(0, sqrt(0.8 T), S) ** 2) + steps_offset   (the official DDIM code, exactly)
        trailing: ceil(T (j / S) ** 2) - 1 for j = 1..S                  (ends at T - 1, like uniform trailing)
        linspace: round((T - 1) (j / (S - 1)) ** 2) for j = 0..S-1
    Quadratic grids can repeat small timesteps when S is large (the official code keeps them: identity steps);
    repeats are removed here, so the result may be a little shorter than `num_steps`.
    """
    T, S = num_train_timesteps, num_steps
    if not 1 <= S <= T:
        raise ValueError(f"num_steps must be in [1, {T}], got {S}")
    if spacing not in SPACINGS:
        raise ValueError(f"spacing must be one of {SPACINGS}, got {spacing!r}")
    if skip == "uniform":
        if spacing == "leading":
            ascending = (np.arange(0, S) * (T // S)).round().astype(np.int64) + steps_offset
        elif spacing == "trailing":
            ascending = (np.round(np.arange(T, 0, -T / S)).astype(np.int64) - 1)[::-1]
        else:
            ascending = np.linspace(0, T - 1, S).round().astype(np.int64)
    elif skip == "quadratic":
        j = np.arange(S, dtype=np.int64)
        if spacing == "leading":
            ascending = np.array([int(s) for s in np.linspace(0, np.sqrt(T * QUADRATIC_MAX_FRACTION), S) ** 2])
            ascending = ascending + steps_offset
        elif spacing == "trailing":
            j = j + 1
            ascending = (T * j * j + S * S - 1) // (S * S) - 1  # exact integer ceil(T j^2 / S^2) - 1
        else:
            denominator = max(S - 1, 1) ** 2
            ascending = (2 * (T - 1) * j * j + denominator) // (2 * denominator)  # round half up
    else:
        raise ValueError(f"skip must be one of {SKIP_TYPES}, got {skip!r}")
    timesteps = torch.unique(torch.as_tensor(np.array(ascending, dtype=np.int64), dtype=torch.long))  # sorted ascending
    if timesteps.min() < 0 or timesteps.max() >= T:
        outside = [t for t in timesteps.tolist() if not 0 <= t < T]
        raise ValueError(
            f"{num_steps} {spacing} steps with steps_offset={steps_offset} reach t={outside[:3]}{'...' if len(outside) > 3 else ''}, "
            f"outside [0, {T}); use fewer steps, steps_offset=0 or 'trailing' spacing"
        )
    return timesteps.flip(0)


def timestep_pairs(timesteps: Sequence[int] | Tensor) -> list[tuple[int, int]]:
    """(t, t_prev) for each sampling step: t_prev is the next entry of the descending subsequence, -1 after the last.

    For uniform leading (any S) and uniform trailing (S dividing T) this equals diffusers' t - T // S rule.
    Any suffix of a subsequence is itself a valid input (start sampling from an intermediate x_t).
    """
    values = [int(t) for t in (timesteps.tolist() if isinstance(timesteps, Tensor) else timesteps)]
    if any(a <= b for a, b in zip(values, values[1:])):
        raise ValueError(f"timesteps must be strictly decreasing, got {values}")
    return list(zip(values, values[1:] + [-1]))
