"""Sample quality in the shapes world: a Frechet distance in a small, documented feature space.

DDIM's Table 1 compares samplers by FID (Heusel et al. 2017): the Frechet distance between Gaussians
fitted to Inception features of generated and real images,

    FD = ||mu_g - mu_r||^2 + Tr(Sigma_g + Sigma_r - 2 (Sigma_g Sigma_r)^(1/2)).

No Inception network is available offline, and the shapes world does not need one: its images are
flat-coloured shapes on flat backgrounds, so what separates good samples from bad ones is known.
`shapes_features` measures exactly that, 16 numbers per image, all in comparable units:
- palette shares (11): the fraction of pixels closest to each object colour and each background colour;
- off-palette share (1): pixels farther than 60 RGB units from every palette colour (smears, noise);
- sharpness (1): mean gradient magnitude on object edges / 100 (blurry samples score low);
- high-frequency energy (1): std of the image minus its 3x3 median, / 50 (noisy samples score high);
- object count / 3 (1) and mean template match of detected objects (1), from the analyzer.
Low dimension keeps the covariance well estimated from a few hundred samples. Scale: FD values are
comparable within this project only (not with CIFAR10 FIDs); lower is better, 0 = same statistics.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from .shapes import BACKGROUNDS, COLOURS, analyze

_PALETTE = np.array(list(COLOURS.values()) + list(BACKGROUNDS.values()), np.float32)  # (11, 3)
FEATURE_NAMES = [f"share_{n}" for n in list(COLOURS) + list(BACKGROUNDS)] + [
    "off_palette", "sharpness", "high_frequency", "object_count", "template_match",
]


def shapes_features(image, analysis=None) -> np.ndarray:
    """The 16 features of one uint8 (H, W, 3) image (see the module docstring).

    `analysis`: the image's `analyze(image)` when the caller has it already (it is the costly part)."""
    pixels = np.asarray(image, np.float32)
    distances = np.sqrt(((pixels[..., None, :] - _PALETTE) ** 2).sum(-1))  # (H, W, 11)
    nearest = distances.argmin(-1)
    shares = np.bincount(nearest.ravel(), minlength=len(_PALETTE)) / nearest.size
    off_palette = float((distances.min(-1) > 60).mean())
    gray = pixels.mean(-1)
    gradient = np.hypot(ndimage.sobel(gray, 0), ndimage.sobel(gray, 1)) / 8.0
    edges = gradient > 10
    sharpness = float(gradient[edges].mean() / 100.0) if edges.any() else 0.0
    high_frequency = high_frequency_energy(pixels)
    analysis = analyze(image) if analysis is None else analysis
    match = float(np.mean([o.match for o in analysis.objects])) if analysis.objects else 0.0
    return np.concatenate([shares, [off_palette, sharpness, high_frequency, len(analysis.objects) / 3.0, match]]).astype(np.float64)


def high_frequency_energy(image) -> float:
    """Std of the image minus its 3x3 median, / 50: noise a sampler left (0 for a clean render; one of the 16
    features, and on its own a per-image measure that can be averaged with error bars)."""
    pixels = np.asarray(image, np.float32)
    return float((pixels - ndimage.median_filter(pixels, size=(3, 3, 1))).std() / 50.0)


def feature_matrix(images, analyses=None) -> np.ndarray:
    analyses = [None] * len(images) if analyses is None else analyses
    return np.stack([shapes_features(image, analysis) for image, analysis in zip(images, analyses)])  # (N, 16)


def frechet_distance(features_a: np.ndarray, features_b: np.ndarray) -> float:
    """FD = ||mu_a - mu_b||^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2)) between Gaussians fitted to two feature sets."""
    if len(features_a) < 2 or len(features_b) < 2:
        raise ValueError("the Frechet distance needs at least 2 samples in each set")
    mu_a, mu_b = features_a.mean(0), features_b.mean(0)
    sigma_a, sigma_b = np.cov(features_a, rowvar=False), np.cov(features_b, rowvar=False)
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(sigma_a) + np.trace(sigma_b) - 2 * _trace_sqrt_product(sigma_a, sigma_b))


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    """Symmetric square root of a covariance matrix (eigenvalues below 0, rounding errors, set to 0)."""
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * np.sqrt(values.clip(min=0))) @ vectors.T


def _trace_sqrt_product(sigma_a: np.ndarray, sigma_b: np.ndarray) -> float:
    """Tr((S_a S_b)^(1/2)) = Tr((S_a^(1/2) S_b S_a^(1/2))^(1/2)): the two matrices are similar, and the second is
    symmetric positive semi-definite, so its eigenvalues give the trace without a general matrix square root. A
    constant feature makes S_a S_b singular, which scipy's sqrtm warns about (LinAlgWarning); this form does not
    need the product to be invertible."""
    root_a = _psd_sqrt(sigma_a)
    values = np.linalg.eigvalsh(root_a @ sigma_b @ root_a)
    return float(np.sqrt(values.clip(min=0)).sum())
