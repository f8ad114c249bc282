"""Metrics the labs quote: the Frechet distance of lab 2's Table 1 with few samples or constant features (issue 17:
quick mode printed a LinAlgWarning from scipy's sqrtm of a singular covariance product) and the mask IoU of lab 4."""

import warnings

import numpy as np
from scipy import linalg

from diffusion_lab.quality import frechet_distance


def test_matches_the_sqrtm_formula_when_the_product_is_regular():
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(40, 16)), rng.normal(size=(64, 16)) * 2 + 1
    sigma_a, sigma_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    reference = ((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(sigma_a + sigma_b - 2 * linalg.sqrtm(sigma_a @ sigma_b).real)
    assert abs(frechet_distance(a, b) - reference) < 1e-8 * max(1.0, reference)


def test_no_warning_with_a_constant_feature_or_few_samples():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(4, 16)), rng.normal(size=(64, 16))
    a[:, 3] = 0.0
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        value = frechet_distance(a, b)
        assert np.isfinite(value) and value > 0
        assert abs(frechet_distance(b, b)) < 1e-6


def test_mask_iou():
    from diffusion_lab.metrics import mask_iou

    a = np.zeros((8, 8), bool)
    b = np.zeros((8, 8), bool)
    a[:4, :4], b[2:6, :4] = True, True
    assert mask_iou(a, b) == 8 / 24
    assert mask_iou(a, a) == 1.0 and mask_iou(a, ~a) == 0.0
