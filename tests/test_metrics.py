"""MSE / PSNR / SSIM with an explicit value range, and masked (background) variants."""

import math

import numpy as np
import pytest
import torch

from diffusion_lab.metrics import (
    SSIM_K1,
    SSIM_K2,
    background_mask,
    background_psnr,
    gaussian_window,
    masked_mse,
    masked_psnr,
    mse,
    psnr,
    ssim,
    ssim_map,
)



def _image(seed=0, shape=(24, 24, 3)):
    return np.random.default_rng(seed).integers(0, 256, shape, dtype=np.uint8)


def test_known_values_and_identical_images():
    a = np.zeros((8, 8, 3), np.uint8)
    b = np.full((8, 8, 3), 51, np.uint8)  # 0.2 of the range
    assert mse(a, b) == pytest.approx(0.04)
    assert psnr(a, b) == pytest.approx(10 * math.log10(1 / 0.04))
    assert psnr(a, a) == math.inf and mse(a, a) == 0.0 and ssim(a, a) == pytest.approx(1.0)


def test_results_do_not_depend_on_the_value_range():
    a, b = _image(0), _image(1)
    unit = (a / 255.0, b / 255.0)
    signed = (torch.from_numpy(a).permute(2, 0, 1)[None] / 127.5 - 1, torch.from_numpy(b).permute(2, 0, 1)[None] / 127.5 - 1)
    for metric in (mse, psnr, ssim):
        reference = metric(a, b)
        assert metric(*unit, data_range=1.0) == pytest.approx(reference, rel=1e-9)
        assert metric(*signed, data_range=(-1, 1), channel_axis=1)[0] == pytest.approx(reference, rel=1e-5)


def test_batches_give_one_value_per_image():
    a = np.stack([_image(0), _image(2)])
    b = np.stack([_image(1), _image(2)])
    values = psnr(a, b)
    assert values.shape == (2,) and values[0] == pytest.approx(psnr(a[0], b[0])) and values[1] == math.inf
    assert ssim(a, b)[1] == pytest.approx(1.0)


def test_ssim_of_constant_images_has_the_closed_form():
    """Constant images have zero variance: SSIM = (2 mu_a mu_b + C1) / (mu_a^2 + mu_b^2 + C1)."""
    a, b = np.full((16, 16), 100.0), np.full((16, 16), 180.0)
    c1 = (SSIM_K1 * 255) ** 2
    assert ssim(a, b) == pytest.approx((2 * 100 * 180 + c1) / (100**2 + 180**2 + c1))
    assert SSIM_K2 == 0.03


def test_ssim_map_equals_a_direct_window_computation():
    a, b = _image(3, (16, 16)).astype(np.float64), _image(4, (16, 16)).astype(np.float64)
    window = gaussian_window().numpy()
    weights = np.outer(window, window)  # 11 x 11, sums to 1
    i, j = 2, 3  # the window whose top-left corner is (2, 3)
    pa, pb = a[i : i + 11, j : j + 11], b[i : i + 11, j : j + 11]
    mu_a, mu_b = (weights * pa).sum(), (weights * pb).sum()
    var_a, var_b = (weights * (pa - mu_a) ** 2).sum(), (weights * (pb - mu_b) ** 2).sum()
    cov = (weights * (pa - mu_a) * (pb - mu_b)).sum()
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    expected = (2 * mu_a * mu_b + c1) * (2 * cov + c2) / ((mu_a**2 + mu_b**2 + c1) * (var_a + var_b + c2))
    local = ssim_map(a, b)
    assert local.shape == (1, 1, 6, 6)
    assert float(local[0, 0, i, j]) == pytest.approx(expected, rel=1e-9)


def test_ssim_decreases_with_noise():
    clean = _image(5).astype(np.float64)
    rng = np.random.default_rng(0)
    scores = [ssim(np.clip(clean + rng.normal(0, s, clean.shape), 0, 255), clean) for s in (2, 10, 40)]
    assert 1 > scores[0] > scores[1] > scores[2]


def test_masked_metrics_only_count_the_mask():
    a = _image(6, (8, 8, 3))
    b = a.copy()
    object_masks = np.zeros((2, 8, 8), bool)
    object_masks[0, :2, :2] = True
    object_masks[1, 5:, 5:] = True
    b[object_masks.any(0)] = 0  # change only the objects
    assert background_psnr(b, a, object_masks) == math.inf
    assert psnr(b, a) < 40
    everywhere = np.ones((8, 8), bool)
    assert masked_mse(b, a, everywhere) == pytest.approx(mse(b, a))
    assert masked_psnr(b, a, everywhere) == pytest.approx(psnr(b, a))
    assert background_mask(object_masks).sum() == 64 - 4 - 9
    assert math.isnan(masked_mse(b, a, np.zeros((8, 8), bool)))


def test_clear_errors():
    with pytest.raises(ValueError, match="same shape"):
        psnr(np.zeros((8, 8, 3)), np.zeros((8, 9, 3)))
    with pytest.raises(ValueError, match="data_range must be a positive L"):
        mse(np.zeros((4, 4)), np.zeros((4, 4)), data_range=0)
    with pytest.raises(ValueError, match="high > low"):
        ssim(np.zeros((4, 4)), np.zeros((4, 4)), data_range=(1, -1))
    with pytest.raises(ValueError, match="boolean"):
        masked_mse(np.zeros((4, 4)), np.zeros((4, 4)), np.ones((4, 4)))
    with pytest.raises(ValueError, match="channel_axis"):
        mse(np.zeros((4, 4)), np.zeros((4, 4)), channel_axis=0)
