"""Renderer: Scene -> anti-aliased RGB image and one mask per object.

Anti-aliasing by supersampling: every shape is tested on a grid `supersample` times finer than the
output and the coverage is averaged down, so edges are soft like a real photograph's. The render is a
pure function of the scene, hence deterministic; randomness lives in `random_scene(seed)`.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from .scene import BACKGROUNDS, COLOURS, Scene

# Shape geometry in units of the object's outer radius r (centre at the origin, y pointing down).
SQUARE_HALF_SIDE = 0.82
CROSS_HALF_WIDTH = 0.36
STAR_INNER_RADIUS = 0.48


def _regular_polygon(n: int, radius: float, start_angle: float) -> np.ndarray:
    angles = start_angle + 2 * math.pi * np.arange(n) / n
    return np.stack([radius * np.cos(angles), radius * np.sin(angles)], axis=1)  # (n, 2)


def _star_polygon(points: int = 5, inner: float = STAR_INNER_RADIUS) -> np.ndarray:
    angles = -math.pi / 2 + math.pi * np.arange(2 * points) / points
    radii = np.where(np.arange(2 * points) % 2 == 0, 1.0, inner)
    return np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)  # (2*points, 2)


TRIANGLE = _regular_polygon(3, 1.0, -math.pi / 2)  # pointing up, circumradius 1
STAR = _star_polygon()


def _inside_polygon(px: np.ndarray, py: np.ndarray, polygon: np.ndarray) -> np.ndarray:
    """Even-odd rule point-in-polygon test, vectorised over points."""
    inside = np.zeros(px.shape, dtype=bool)
    n = len(polygon)
    for i in range(n):
        x1, y1 = polygon[i]
        x2, y2 = polygon[(i + 1) % n]
        crosses = (y1 > py) != (y2 > py)
        x_at = (x2 - x1) * (py - y1) / (y2 - y1 + 1e-12) + x1
        inside ^= crosses & (px < x_at)
    return inside


def shape_inside(shape: str, u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Is the point (u, v), in units of the radius around the centre, inside `shape`?"""
    if shape == "circle":
        return u * u + v * v <= 1.0
    if shape == "square":
        return (np.abs(u) <= SQUARE_HALF_SIDE) & (np.abs(v) <= SQUARE_HALF_SIDE)
    if shape == "triangle":
        return _inside_polygon(u, v, TRIANGLE)
    if shape == "star":
        return _inside_polygon(u, v, STAR)
    if shape == "cross":
        au, av = np.abs(u), np.abs(v)
        return ((au <= 1.0) & (av <= CROSS_HALF_WIDTH)) | ((av <= 1.0) & (au <= CROSS_HALF_WIDTH))
    raise ValueError(f"unknown shape {shape!r}")


def shape_coverage(shape: str, centre_x: float, centre_y: float, radius: float, size: int, supersample: int = 4) -> np.ndarray:
    """Fraction of each pixel covered by the shape, (size, size) float32 in [0, 1].

    Centre and radius are in pixels. Only the bounding box is supersampled, so this is cheap.
    """
    coverage = np.zeros((size, size), dtype=np.float32)
    x0, x1 = max(int(math.floor(centre_x - radius)) - 1, 0), min(int(math.ceil(centre_x + radius)) + 1, size)
    y0, y1 = max(int(math.floor(centre_y - radius)) - 1, 0), min(int(math.ceil(centre_y + radius)) + 1, size)
    if x1 <= x0 or y1 <= y0:
        return coverage
    s = supersample
    offsets = (np.arange(s) + 0.5) / s
    xs = (np.arange(x0, x1)[:, None] + offsets[None, :]).reshape(-1)  # sample positions in pixels
    ys = (np.arange(y0, y1)[:, None] + offsets[None, :]).reshape(-1)
    u = (xs[None, :] - centre_x) / radius
    v = (ys[:, None] - centre_y) / radius
    inside = shape_inside(shape, np.broadcast_to(u, (len(ys), len(xs))), np.broadcast_to(v, (len(ys), len(xs))))
    block = inside.reshape(y1 - y0, s, x1 - x0, s).mean(axis=(1, 3))
    coverage[y0:y1, x0:x1] = block
    return coverage


class Render(NamedTuple):
    image: np.ndarray  # (H, W, 3) uint8
    masks: np.ndarray  # (num_objects, H, W) bool: pixels at least half covered by each object


def render(scene: Scene, size: int = 64, supersample: int = 4) -> Render:
    """Render a scene at `size` x `size` pixels."""
    if size < 16:
        raise ValueError(f"image size must be at least 16 pixels, got {size}")
    image = np.empty((size, size, 3), dtype=np.float32)
    image[:] = BACKGROUNDS[scene.background]
    masks = []
    for obj in scene.objects:
        alpha = shape_coverage(obj.shape, obj.x * size, obj.y * size, obj.radius * size, size, supersample)
        image = image * (1 - alpha[..., None]) + np.asarray(COLOURS[obj.colour], np.float32) * alpha[..., None]
        masks.append(alpha >= 0.5)
    return Render(np.clip(np.rint(image), 0, 255).astype(np.uint8), np.stack(masks))


def render_image(scene: Scene, size: int = 64):
    """The render as a PIL image (what users pass to the editing API)."""
    from PIL import Image

    return Image.fromarray(render(scene, size).image, mode="RGB")
