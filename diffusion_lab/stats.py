"""Intervals for the labs' claims: how often an effect shows (a rate) and how large it is on average (a mean).

A lab that shows one draw shows an anecdote; the lecture's statements are about what usually happens. Every claim
of the labs is therefore measured over a sample of scenes and seeds (`diffusion_lab.studies`) and reported as

    rate:  k of n draws show the effect, p_hat = k / n, with the Wilson score interval (Wilson 1927, "Probable
           inference, the law of succession, and statistical inference", JASA 22(158)):

               centre = (p_hat + z^2 / (2n)) / (1 + z^2 / n)
               half   = z / (1 + z^2 / n) * sqrt(p_hat (1 - p_hat) / n + z^2 / (4 n^2))

           z the standard normal quantile of (1 + confidence) / 2 (1.96 for 95%). Unlike the normal ("Wald")
           interval it stays inside [0, 1] and is not empty at k = 0 or k = n: 0 of 16 gives [0, 0.19].

    mean:  the sample mean with a percentile bootstrap interval (Efron & Tibshirani 1993, "An Introduction to the
           Bootstrap", ch. 13): resample the n values with replacement `resamples` times (a seeded generator: the same
           values give the same interval), and take the (1 - confidence) / 2 and (1 + confidence) / 2 quantiles of
           the resampled means.

`Rate` and `Mean` carry the estimate, n and the interval, and print themselves as "62% (10/16; 95% CI 39-80%)".
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from statistics import NormalDist
from typing import Sequence

import numpy as np

CONFIDENCE = 0.95
BOOTSTRAP_RESAMPLES = 2000


def normal_quantile(confidence: float = CONFIDENCE) -> float:
    """z with P(-z < Z < z) = confidence for a standard normal Z (1.96 for 0.95)."""
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie strictly between 0 and 1, got {confidence}")
    return NormalDist().inv_cdf((1.0 + confidence) / 2.0)


def wilson_interval(successes: int, n: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """The Wilson score interval (low, high) of a binomial rate: `successes` of `n` draws (module docstring)."""
    if n <= 0:
        raise ValueError(f"a rate needs at least one draw, got n = {n}")
    if not 0 <= successes <= n:
        raise ValueError(f"successes must lie in [0, n] = [0, {n}], got {successes}")
    z = normal_quantile(confidence)
    p_hat = successes / n
    denominator = 1.0 + z * z / n
    centre = (p_hat + z * z / (2 * n)) / denominator
    half = z / denominator * math.sqrt(p_hat * (1.0 - p_hat) / n + z * z / (4 * n * n))
    return max(0.0, centre - half), min(1.0, centre + half)


def bootstrap_mean_interval(values: Sequence[float], confidence: float = CONFIDENCE,
                            resamples: int = BOOTSTRAP_RESAMPLES, seed: int = 0) -> tuple[float, float]:
    """The percentile bootstrap interval (low, high) of the mean of `values` (module docstring); seeded."""
    x = np.asarray(values, dtype=np.float64).ravel()  # (n,)
    if x.size == 0:
        raise ValueError("a mean needs at least one value")
    if not np.all(np.isfinite(x)):
        raise ValueError("the values must be finite (an inf PSNR means identical images: clip it first)")
    normal_quantile(confidence)  # checks the confidence
    rng = np.random.default_rng(seed)
    means = x[rng.integers(0, x.size, size=(resamples, x.size))].mean(axis=1)  # (resamples,)
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(means, [tail, 1.0 - tail])
    return float(low), float(high)


@dataclass(frozen=True)
class Rate:
    """k of n draws showed the effect: the rate k / n and its Wilson interval [low, high]."""

    successes: int
    n: int
    low: float
    high: float
    confidence: float = CONFIDENCE

    @property
    def value(self) -> float:
        return self.successes / self.n

    def __str__(self) -> str:
        level = round(100 * self.confidence)
        return (f"{100 * self.value:.0f}% ({self.successes}/{self.n}; {level}% CI "
                f"{100 * self.low:.0f}-{100 * self.high:.0f}%)")

    def as_dict(self) -> dict:
        return {"rate": self.value, "successes": self.successes, "n": self.n, "low": self.low, "high": self.high,
                "confidence": self.confidence}


@dataclass(frozen=True)
class Mean:
    """The mean of n values and its bootstrap interval [low, high], in `unit` (e.g. "dB"; "" for none)."""

    mean: float
    n: int
    low: float
    high: float
    unit: str = ""
    confidence: float = CONFIDENCE

    @property
    def value(self) -> float:
        return self.mean

    def __str__(self) -> str:
        unit = f" {self.unit}" if self.unit else ""
        level = round(100 * self.confidence)
        return f"{self.mean:.2f}{unit} (n={self.n}; {level}% CI {self.low:.2f} to {self.high:.2f}{unit})"

    def as_dict(self) -> dict:
        return {"mean": self.mean, "n": self.n, "low": self.low, "high": self.high, "unit": self.unit,
                "confidence": self.confidence}


def rate(flags: Sequence[bool], confidence: float = CONFIDENCE) -> Rate:
    """The rate of True among `flags` (one per draw) with its Wilson interval."""
    flags = [bool(f) for f in flags]
    successes = sum(flags)
    low, high = wilson_interval(successes, len(flags), confidence)
    return Rate(successes, len(flags), low, high, confidence)


def mean(values: Sequence[float], unit: str = "", confidence: float = CONFIDENCE, seed: int = 0,
         resamples: int = BOOTSTRAP_RESAMPLES) -> Mean:
    """The mean of `values` (one per draw) with its seeded percentile bootstrap interval."""
    x = np.asarray(values, dtype=np.float64).ravel()
    low, high = bootstrap_mean_interval(x, confidence, resamples, seed)
    return Mean(float(x.mean()), int(x.size), low, high, unit, confidence)
