"""Wilson intervals for rates and seeded bootstrap intervals for means (diffusion_lab.stats): known values, the
coverage they promise, and determinism."""

import numpy as np
import pytest
from scipy.stats import binomtest

from diffusion_lab.stats import Mean, Rate, bootstrap_mean_interval, mean, normal_quantile, rate, wilson_interval


def test_wilson_matches_known_values_and_scipy():
    assert normal_quantile(0.95) == pytest.approx(1.959964, abs=1e-6)
    # 0 of 16: the "rule of three"-like upper bound z^2 / (n + z^2)
    low, high = wilson_interval(0, 16)
    assert low == 0.0 and high == pytest.approx(1.959964 ** 2 / (16 + 1.959964 ** 2), rel=1e-6)
    assert wilson_interval(5, 10) == pytest.approx((0.236593, 0.763407), abs=1e-6)
    for k, n, confidence in [(0, 1, 0.95), (3, 7, 0.9), (16, 16, 0.95), (40, 64, 0.99), (1, 200, 0.95)]:
        expected = binomtest(k, n).proportion_ci(confidence_level=confidence, method="wilson")
        assert wilson_interval(k, n, confidence) == pytest.approx((expected.low, expected.high), abs=1e-9)


def test_wilson_refuses_impossible_counts():
    with pytest.raises(ValueError, match="at least one draw"):
        wilson_interval(0, 0)
    with pytest.raises(ValueError, match=r"\[0, n\]"):
        wilson_interval(5, 4)
    with pytest.raises(ValueError, match="confidence"):
        wilson_interval(1, 4, confidence=1.0)


def test_wilson_covers_the_true_rate_about_as_often_as_it_promises():
    rng = np.random.default_rng(0)
    for p, n in [(0.3, 40), (0.8, 16)]:
        successes = rng.binomial(n, p, size=2000)
        covered = np.mean([low <= p <= high for low, high in (wilson_interval(int(k), n) for k in successes)])
        assert 0.92 <= covered <= 0.985, (p, n, covered)


def test_bootstrap_interval_is_seeded_and_covers_the_mean():
    values = np.random.default_rng(1).normal(3.0, 2.0, size=32)
    assert bootstrap_mean_interval(values, seed=4) == bootstrap_mean_interval(values, seed=4)
    low, high = bootstrap_mean_interval(values)
    assert low < values.mean() < high
    # about the normal interval mean +- 1.96 s / sqrt(n) for a normal sample
    half = 1.96 * values.std(ddof=1) / np.sqrt(values.size)
    assert high - low == pytest.approx(2 * half, rel=0.2)
    rng = np.random.default_rng(2)
    covered = [lo <= 0.0 <= hi for lo, hi in
               (bootstrap_mean_interval(rng.normal(0.0, 1.0, size=30), resamples=400, seed=i) for i in range(300))]
    assert 0.88 <= np.mean(covered) <= 0.99
    assert bootstrap_mean_interval([2.5]) == (2.5, 2.5)


def test_bootstrap_refuses_empty_and_infinite_values():
    with pytest.raises(ValueError, match="at least one"):
        bootstrap_mean_interval([])
    with pytest.raises(ValueError, match="finite"):
        bootstrap_mean_interval([1.0, float("inf")])


def test_rate_and_mean_print_their_n_and_interval():
    r = rate([True] * 10 + [False] * 6)
    assert isinstance(r, Rate) and r.value == 0.625 and r.n == 16
    assert str(r) == "62% (10/16; 95% CI 39-82%)"
    assert r.as_dict()["low"] == pytest.approx(wilson_interval(10, 16)[0])
    m = mean([1.0, 2.0, 3.0, 4.0], unit="dB")
    assert isinstance(m, Mean) and m.mean == 2.5 and m.low < 2.5 < m.high
    assert str(m).startswith("2.50 dB (n=4; 95% CI ")
