"""Image fidelity: MSE, PSNR, SSIM, and masked variants (e.g. background only), with the value range explicit.

Every function takes `data_range`, the range of possible pixel values: a number L for images in [0, L] (255 for
uint8 images, the default; 1.0 for [0, 1] floats) or a pair (low, high), e.g. (-1, 1) for the VAE's tensors.
Results are the same for the same picture in any range, so they are comparable across inputs:

    mse  = mean((a - b)^2) / data_range^2          (per dimension, images scaled to [0, 1], as in DDIM's Table 2)
    psnr = 10 log10(1 / mse)  dB                    (inf when the images are identical)
    ssim = mean over windows and channels of SSIM(a, b) (Wang, Bovik, Sheikh & Simoncelli 2004, "Image Quality
           Assessment: From Error Visibility to Structural Similarity", IEEE TIP 13(4)):

        SSIM(a, b) = (2 mu_a mu_b + C1) (2 sigma_ab + C2) / ((mu_a^2 + mu_b^2 + C1) (sigma_a^2 + sigma_b^2 + C2))

    with local statistics under an 11x11 Gaussian window of std 1.5 (normalised to sum 1), C1 = (0.01 L)^2,
    C2 = (0.03 L)^2, L = high - low, computed per channel and only where the window fits inside the image
    ("valid" filtering, as the authors' ssim_index.m; scikit-image pads instead, so its borders differ slightly).
    The window shrinks to the image if the image is smaller than 11 pixels. SSIM's luminance term is not
    shift-invariant, so images are shifted to [0, L] (by `low`) first: that is why the range's low end matters.

Layout: images are channels-last by default, (H, W), (H, W, C) or a batch (B, H, W, C) -- what the renderer,
`to_uint8` and `decode_latents` return. Pass channel_axis=1 for (B, C, H, W) tensors. numpy arrays and torch
tensors are both accepted; arithmetic is float64. A single image gives a float, a batch a numpy array (B,).
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

SSIM_WINDOW_SIZE = 11
SSIM_WINDOW_STD = 1.5
SSIM_K1, SSIM_K2 = 0.01, 0.03


def _as_batch(image, channel_axis: int) -> tuple[Tensor, bool]:
    """Any supported layout -> float64 (B, C, H, W) on the CPU, and whether the input was a single image."""
    x = torch.from_numpy(np.array(image)) if not isinstance(image, Tensor) else image.detach()  # a copy: PIL arrays are read-only
    x = x.to(device="cpu", dtype=torch.float64)
    if channel_axis == 1:
        if x.ndim == 3:
            return x.unsqueeze(0), True
        if x.ndim == 4:
            return x, False
        raise ValueError(f"with channel_axis=1 images must be (C, H, W) or (B, C, H, W), got {tuple(x.shape)}")
    if channel_axis != -1:
        raise ValueError(f"channel_axis must be -1 (channels last) or 1 ((B, C, H, W)), got {channel_axis}")
    if x.ndim == 2:
        return x[None, None], True  # (H, W) -> (1, 1, H, W)
    if x.ndim == 3:
        return x.permute(2, 0, 1).unsqueeze(0), True  # (H, W, C) -> (1, C, H, W)
    if x.ndim == 4:
        return x.permute(0, 3, 1, 2), False  # (B, H, W, C) -> (B, C, H, W)
    raise ValueError(f"images must be (H, W), (H, W, C) or (B, H, W, C) (channels last), got {tuple(x.shape)}")


def _pair(image, reference, channel_axis: int) -> tuple[Tensor, Tensor, bool]:
    a, single = _as_batch(image, channel_axis)
    b, _ = _as_batch(reference, channel_axis)
    if a.shape != b.shape:
        raise ValueError(f"images must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)} (B, C, H, W)")
    return a, b, single


def _result(values: Tensor, single: bool) -> float | np.ndarray:
    values = values.numpy()
    return float(values[0]) if single else values


DataRange = float | tuple[float, float]


def _low_and_span(data_range: DataRange) -> tuple[float, float]:
    """(low, high - low) of a range given as L (meaning [0, L]) or (low, high)."""
    if isinstance(data_range, (tuple, list)):
        low, high = (float(v) for v in data_range)
    else:
        low, high = 0.0, float(data_range)
    if not high > low:
        raise ValueError(
            f"data_range must be a positive L (images in [0, L]: 255 for uint8, 1 for [0, 1]) or (low, high) with "
            f"high > low, e.g. (-1, 1); got {data_range}"
        )
    return low, high - low


def _check_range(data_range: DataRange) -> float:
    """The span L = high - low."""
    return _low_and_span(data_range)[1]


def _psnr_from_mse(mse: Tensor) -> Tensor:
    """PSNR in dB of an MSE already divided by data_range^2: 10 log10(1 / mse) (inf for mse = 0)."""
    return torch.where(mse > 0, -10.0 * torch.log10(mse.clamp(min=1e-300)), torch.full_like(mse, math.inf))


def mse(image, reference, data_range: DataRange = 255.0, channel_axis: int = -1) -> float | np.ndarray:
    """Mean squared error per dimension on images rescaled to [0, 1]: mean((a - b)^2) / data_range^2."""
    a, b, single = _pair(image, reference, channel_axis)
    values = ((a - b) ** 2).flatten(1).mean(dim=1) / _check_range(data_range) ** 2  # (B,)
    return _result(values, single)


def psnr(image, reference, data_range: DataRange = 255.0, channel_axis: int = -1) -> float | np.ndarray:
    """Peak signal-to-noise ratio in dB: 10 log10(data_range^2 / mean((a - b)^2)); inf for identical images."""
    a, b, single = _pair(image, reference, channel_axis)
    values = ((a - b) ** 2).flatten(1).mean(dim=1) / _check_range(data_range) ** 2  # (B,)
    return _result(_psnr_from_mse(values), single)


def gaussian_window(size: int = SSIM_WINDOW_SIZE, std: float = SSIM_WINDOW_STD) -> Tensor:
    """The 1-D Gaussian of `size` taps, normalised to sum 1 (float64); SSIM uses its outer product."""
    positions = torch.arange(size, dtype=torch.float64) - (size - 1) / 2
    weights = torch.exp(-(positions**2) / (2 * std**2))
    return weights / weights.sum()


def _local_mean(x: Tensor, window: Tensor) -> Tensor:
    """Gaussian-weighted local mean of every channel, "valid" region only: (B, C, H, W) -> (B, C, H-k+1, W-k+1)."""
    channels = x.shape[1]
    k = len(window)
    horizontal = window.view(1, 1, 1, k).expand(channels, 1, 1, k)
    vertical = window.view(1, 1, k, 1).expand(channels, 1, k, 1)
    x = F.conv2d(x, horizontal, groups=channels)
    return F.conv2d(x, vertical, groups=channels)


def ssim_map(image, reference, data_range: DataRange = 255.0, channel_axis: int = -1) -> Tensor:
    """Local SSIM values, float64 (B, C, H - k + 1, W - k + 1) for a k x k window (see the module docstring)."""
    a, b, _ = _pair(image, reference, channel_axis)
    low, data_range = _low_and_span(data_range)
    a, b = a - low, b - low  # into [0, L]
    size = min(SSIM_WINDOW_SIZE, a.shape[-1], a.shape[-2])
    window = gaussian_window(size, SSIM_WINDOW_STD)
    mu_a, mu_b = _local_mean(a, window), _local_mean(b, window)
    variance_a = _local_mean(a * a, window) - mu_a**2  # sigma_a^2
    variance_b = _local_mean(b * b, window) - mu_b**2  # sigma_b^2
    covariance = _local_mean(a * b, window) - mu_a * mu_b  # sigma_ab
    c1, c2 = (SSIM_K1 * data_range) ** 2, (SSIM_K2 * data_range) ** 2
    luminance = (2 * mu_a * mu_b + c1) / (mu_a**2 + mu_b**2 + c1)
    contrast_structure = (2 * covariance + c2) / (variance_a + variance_b + c2)
    return luminance * contrast_structure


def ssim(image, reference, data_range: DataRange = 255.0, channel_axis: int = -1) -> float | np.ndarray:
    """Mean structural similarity (Wang et al. 2004) with an 11x11 Gaussian window, std 1.5: 1 for identical
    images, lower is worse (can be negative)."""
    _, single = _as_batch(image, channel_axis)
    values = ssim_map(image, reference, data_range, channel_axis).flatten(1).mean(dim=1)  # (B,)
    return _result(values, single)


# ----------------------------------------------------------------------------------------------------------------
# Masked variants: errors inside a region only (e.g. the background, which an object edit must leave alone)
# ----------------------------------------------------------------------------------------------------------------


def _mask_batch(mask, like: Tensor) -> Tensor:
    """A boolean mask (H, W) or (B, H, W) -> float64 (B, 1, H, W) broadcast to `like` (B, C, H, W)."""
    m = (torch.from_numpy(np.array(mask)) if not isinstance(mask, Tensor) else mask.detach()).cpu()
    if m.dtype != torch.bool:
        raise ValueError(f"mask must be boolean (True where pixels count), got {m.dtype}")
    if m.ndim == 2:
        m = m.unsqueeze(0)
    if m.ndim != 3 or tuple(m.shape[-2:]) != tuple(like.shape[-2:]) or m.shape[0] not in (1, like.shape[0]):
        raise ValueError(f"mask must be (H, W) or (B, H, W) matching images {tuple(like.shape)}, got {tuple(m.shape)}")
    return m.to(torch.float64).unsqueeze(1).expand(like.shape[0], 1, *like.shape[-2:])


def masked_mse(image, reference, mask, data_range: DataRange = 255.0, channel_axis: int = -1) -> float | np.ndarray:
    """`mse` over the pixels where mask is True (all channels); NaN for an empty mask."""
    a, b, single = _pair(image, reference, channel_axis)
    weights = _mask_batch(mask, a)  # (B, 1, H, W)
    squared = ((a - b) ** 2 * weights).flatten(1).sum(dim=1)  # (B,)
    count = weights.flatten(1).sum(dim=1) * a.shape[1]  # (B,) pixels x channels
    values = torch.where(count > 0, squared / count.clamp(min=1), torch.full_like(count, math.nan))
    return _result(values / _check_range(data_range) ** 2, single)


def masked_psnr(image, reference, mask, data_range: DataRange = 255.0, channel_axis: int = -1) -> float | np.ndarray:
    """`psnr` over the pixels where mask is True; NaN for an empty mask."""
    values = masked_mse(image, reference, mask, data_range, channel_axis)
    tensor = torch.as_tensor(np.atleast_1d(values), dtype=torch.float64)
    result = torch.where(torch.isnan(tensor), tensor, _psnr_from_mse(torch.nan_to_num(tensor, nan=1.0)))
    return float(result[0]) if isinstance(values, float) else result.numpy()


def background_mask(object_masks) -> np.ndarray:
    """Boolean (H, W) True outside every object, from the renderer's object masks (num_objects, H, W)."""
    masks = np.asarray(object_masks, dtype=bool)
    if masks.ndim == 2:
        return ~masks
    return ~masks.any(axis=0)


def background_psnr(image, reference, object_masks, data_range: DataRange = 255.0, channel_axis: int = -1):
    """PSNR outside the objects: how well an edit keeps the background (PIE-Bench's "background PSNR")."""
    return masked_psnr(image, reference, background_mask(object_masks), data_range, channel_axis)


def mask_iou(mask, reference) -> float:
    """Intersection over union |A & B| / |A | B| of two boolean (H, W) masks, e.g. the analyzer's object masks of a
    source and of its edit (1: the object kept its place and outline). Two empty masks give 1 (nothing moved)."""
    mask, reference = np.asarray(mask, dtype=bool), np.asarray(reference, dtype=bool)
    if mask.shape != reference.shape:
        raise ValueError(f"masks of different shapes {mask.shape} and {reference.shape}: resize one first")
    union = np.logical_or(mask, reference).sum()
    return 1.0 if union == 0 else float(np.logical_and(mask, reference).sum() / union)
