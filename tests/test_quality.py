import numpy as np
from scipy import ndimage

from diffusion_lab.quality import FEATURE_NAMES, feature_matrix, frechet_distance, shapes_features
from diffusion_lab.shapes import random_scene, render


def _renders(start, count):
    return [render(random_scene(start + i)).image for i in range(count)]


def test_features_have_documented_names():
    assert shapes_features(_renders(0, 1)[0]).shape == (len(FEATURE_NAMES),)


def test_frechet_distance_zero_for_identical_sets_and_symmetric():
    a = feature_matrix(_renders(0, 40))
    assert abs(frechet_distance(a, a)) < 1e-6
    b = feature_matrix(_renders(100, 40))
    assert abs(frechet_distance(a, b) - frechet_distance(b, a)) < 1e-6


def test_frechet_distance_ranks_degraded_samples_worse():
    real = feature_matrix(_renders(0, 60))
    other_real = feature_matrix(_renders(500, 60))
    rng = np.random.default_rng(0)
    noisy = [np.clip(im + rng.normal(0, 40, im.shape), 0, 255).astype(np.uint8) for im in _renders(500, 60)]
    blurred = [ndimage.gaussian_filter(im.astype(float), (2, 2, 0)).astype(np.uint8) for im in _renders(500, 60)]
    base = frechet_distance(real, other_real)
    assert frechet_distance(real, feature_matrix(noisy)) > 5 * base
    assert frechet_distance(real, feature_matrix(blurred)) > 2 * base
