"""Analyzer: image -> recovered scene, without a learned model.

1. Background: the median colour of the border, snapped to the nearest background colour.
2. Foreground: pixels whose colour is far from the background, split into connected components.
3. Per component: colour = median of its most confident pixels, snapped to the nearest object colour;
   shape and size = the rendered template (every shape, a range of radii, centred on the component's
   centroid) with the highest soft intersection-over-union with the component. Template matching
   uses the renderer itself, so clean renders are recovered exactly, and the soft IoU degrades
   gracefully on blurred and noisy images such as a small generative model produces.
4. Position: the grid cell of the centroid.

`analyze` never raises on a valid RGB image: an image with no foreground gives a scene description
with no objects (the caller counts that as a miss).
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np
from scipy import ndimage

from .render import shape_coverage
from .scene import BACKGROUNDS, COLOURS, COLUMNS, ROWS, SHAPES, SIZES

_BG_NAMES = list(BACKGROUNDS)
_BG_RGB = np.array([BACKGROUNDS[n] for n in _BG_NAMES], np.float32)
_FG_NAMES = list(COLOURS)
_FG_RGB = np.array([COLOURS[n] for n in _FG_NAMES], np.float32)
_RADII = (SIZES["small"], SIZES["large"])
_SIZE_THRESHOLD = float(np.sqrt(_RADII[0] * _RADII[1]))  # geometric mean of the two radii


@dataclasses.dataclass(frozen=True)
class DetectedObject:
    shape: str
    colour: str
    size: str
    x: float
    y: float
    radius: float  # fitted outer radius, fraction of the side
    match: float  # soft IoU of the best template, 0..1 (a confidence)
    mask: np.ndarray = dataclasses.field(repr=False, compare=False)

    @property
    def position(self) -> tuple[str, str]:
        return (ROWS[min(int(self.y * 3), 2)], COLUMNS[min(int(self.x * 3), 2)])


@dataclasses.dataclass(frozen=True)
class Analysis:
    background: str
    objects: tuple[DetectedObject, ...]

    def attributes(self) -> dict:
        return {
            "background": self.background,
            "objects": [
                {"shape": o.shape, "colour": o.colour, "size": o.size, "position": list(o.position)} for o in self.objects
            ],
        }


def _to_array(image) -> np.ndarray:
    array = np.asarray(image)
    if array.ndim != 3 or array.shape[2] != 3:
        raise ValueError(f"the analyzer needs an RGB image of shape (H, W, 3), got shape {array.shape}")
    if array.dtype != np.uint8:
        array = np.clip(array.astype(np.float32) * (255.0 if array.max() <= 1.0 else 1.0), 0, 255)
    return array.astype(np.float32)


def _nearest(colour: np.ndarray, palette: np.ndarray) -> int:
    return int(np.argmin(((palette - colour[None]) ** 2).sum(axis=1)))


def _fit_template(weights: np.ndarray, cx: float, cy: float, size: int) -> tuple[str, float, float]:
    """Best (shape, radius in pixels, soft IoU) for a soft foreground map centred near (cx, cy)."""
    best = ("circle", 0.0, -1.0)
    radii = np.linspace(_RADII[0] * 0.7, _RADII[1] * 1.25, 14) * size
    for shape in SHAPES:
        for r in radii:
            template = shape_coverage(shape, cx, cy, float(r), size, supersample=2)
            intersection = np.minimum(template, weights).sum()
            union = np.maximum(template, weights).sum() + 1e-6
            iou = float(intersection / union)
            if iou > best[2]:
                best = (shape, float(r), iou)
    return best


def analyze(image, min_area_fraction: float = 0.01, max_objects: int = 4) -> Analysis:
    """Recover the scene of an RGB image (uint8 (H, W, 3), float in [0, 1], or PIL)."""
    pixels = _to_array(image)
    height, width, _ = pixels.shape
    size = min(height, width)
    border = np.concatenate([pixels[0], pixels[-1], pixels[:, 0], pixels[:, -1]])
    background_rgb = np.median(border, axis=0)
    background = _BG_NAMES[_nearest(background_rgb, _BG_RGB)]
    reference = _BG_RGB[_BG_NAMES.index(background)]

    distance = np.sqrt(((pixels - reference) ** 2).sum(axis=2))  # (H, W)
    # Soft foreground: 0 at the background colour, 1 at >= 90 colour units away (every object colour is farther).
    soft = np.clip((distance - 30.0) / 60.0, 0.0, 1.0)
    hard = ndimage.binary_opening(soft > 0.5, iterations=1)
    labels, count = ndimage.label(hard)
    objects = []
    min_area = min_area_fraction * height * width
    for index in range(1, count + 1):
        component = labels == index
        area = component.sum()
        if area < min_area:
            continue
        grown = ndimage.binary_dilation(component, iterations=2)
        weights = soft * grown
        total = weights.sum()
        ys, xs = np.mgrid[0:height, 0:width]
        cx = float((weights * (xs + 0.5)).sum() / total)
        cy = float((weights * (ys + 0.5)).sum() / total)
        core = component & (soft >= np.quantile(soft[component], 0.5))
        colour_rgb = np.median(pixels[core], axis=0)
        colour = _FG_NAMES[_nearest(colour_rgb, _FG_RGB)]
        shape, radius, match = _fit_template(weights, cx, cy, size)
        radius_fraction = radius / size
        objects.append(
            DetectedObject(
                shape=shape,
                colour=colour,
                size="small" if radius_fraction < _SIZE_THRESHOLD else "large",
                x=cx / width,
                y=cy / height,
                radius=radius_fraction,
                match=match,
                mask=component,
            )
        )
    objects.sort(key=lambda o: -o.mask.sum())
    return Analysis(background, tuple(objects[:max_objects]))


def match_objects(analysis: Analysis, scene_objects, max_distance: float = 0.2) -> list[Optional[DetectedObject]]:
    """For each true object, the detected object whose centre is nearest (None if none within max_distance)."""
    matched, used = [], set()
    for true in scene_objects:
        best, best_distance = None, max_distance
        for i, found in enumerate(analysis.objects):
            d = float(np.hypot(found.x - true.x, found.y - true.y))
            if i not in used and d < best_distance:
                best, best_distance = i, d
        if best is not None:
            used.add(best)
        matched.append(analysis.objects[best] if best is not None else None)
    return matched


ATTRIBUTES = ("shape", "colour", "size", "position")


def attribute_accuracy(images, scenes) -> dict:
    """Per-attribute accuracy of the analyzer against the true scenes.

    Objects are matched to detections by nearest centre; an unmatched object counts as wrong on every
    attribute. Also reports background accuracy and the share of images with the right object count.
    """
    correct = {a: 0 for a in ATTRIBUTES}
    objects = backgrounds = counts = 0
    for image, scene in zip(images, scenes):
        analysis = analyze(image)
        backgrounds += analysis.background == scene.background
        counts += len(analysis.objects) == len(scene.objects)
        for true, found in zip(scene.objects, match_objects(analysis, scene.objects, max_distance=0.35)):
            objects += 1
            for attribute in ATTRIBUTES:
                correct[attribute] += found is not None and getattr(found, attribute) == getattr(true, attribute)
    result = {a: correct[a] / max(objects, 1) for a in ATTRIBUTES}
    result["background"] = backgrounds / max(len(scenes), 1)
    result["count"] = counts / max(len(scenes), 1)
    return result
