"""Edits with ground truth: the same scene with exactly one attribute changed.

Every edit benchmark in this project compares an edited image with the render of the edited scene,
so "did the edit work?" and "did everything else stay?" have exact answers.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np

from .scene import BACKGROUNDS, COLOURS, SHAPES, SIZES, Scene, objects_fit, random_object, random_position

SCENE_EDIT_KINDS = ("colour", "shape", "size", "position", "background", "add", "remove")


@dataclasses.dataclass(frozen=True)
class SceneEdit:
    """Source scene, edited scene, and what changed (for captions and reports)."""

    kind: str
    source: Scene
    target: Scene
    object_index: Optional[int]  # None for background edits
    old: Optional[str]
    new: Optional[str]


def edit_scene(
    scene: Scene,
    kind: str,
    value: Optional[str] = None,
    object_index: int = 0,
    rng: Optional[np.random.Generator] = None,
    max_tries: int = 200,
) -> SceneEdit:
    """Change one attribute of one object (or the background, or add/remove an object).

    `value` is the new colour/shape/size/background; when None a different value is drawn with `rng`.
    For "position" the object moves to a random free place in another grid cell; for "add" a random
    object is added; for "remove" object `object_index` is removed (the scene must keep one object).
    """
    if kind not in SCENE_EDIT_KINDS:
        raise ValueError(f"unknown edit kind {kind!r}; choose one of {', '.join(SCENE_EDIT_KINDS)}")
    rng = rng if rng is not None else np.random.default_rng(0)
    objects = list(scene.objects)
    if kind != "background" and kind != "add" and not 0 <= object_index < len(objects):
        raise ValueError(f"object_index {object_index} out of range for a scene with {len(objects)} objects")

    def other(current: str, choices) -> str:
        if value is not None:
            if value not in choices:
                raise ValueError(f"unknown {kind} {value!r}; choose one of {', '.join(choices)}")
            if value == current:
                raise ValueError(f"the {kind} is already {value!r}: choose a different one")
            return value
        options = [c for c in choices if c != current]
        return options[rng.integers(len(options))]

    if kind == "background":
        new = other(scene.background, list(BACKGROUNDS))
        return SceneEdit(kind, scene, scene.replace(background=new), None, scene.background, new)
    if kind == "remove":
        if len(objects) == 1:
            raise ValueError("cannot remove the only object of a scene")
        removed = objects.pop(object_index)
        return SceneEdit(kind, scene, Scene(scene.background, tuple(objects)), object_index, removed.shape, None)
    if kind == "add":
        for _ in range(max_tries):
            added = random_object(rng, shape=value if value in SHAPES else None)
            if objects_fit(objects + [added]):
                return SceneEdit(kind, scene, Scene(scene.background, tuple(objects + [added])), len(objects), None, added.shape)
        raise ValueError("no free place to add an object; remove one first")

    obj = objects[object_index]
    for _ in range(max_tries):
        if kind == "colour":
            new = other(obj.colour, list(COLOURS))
            changed = obj.replace(colour=new)
            old = obj.colour
        elif kind == "shape":
            new = other(obj.shape, list(SHAPES))
            changed = obj.replace(shape=new)
            old = obj.shape
        elif kind == "size":
            new = other(obj.size, list(SIZES))
            r = SIZES[new]  # keep the centre; clamp it so the resized object stays inside the image
            changed = obj.replace(size=new, x=float(np.clip(obj.x, r, 1 - r)), y=float(np.clip(obj.y, r, 1 - r)))
            old = obj.size
        else:  # position
            x, y = random_position(rng, obj.size)
            changed = obj.replace(x=x, y=y)
            old, new = "-".join(obj.position), "-".join(changed.position)
            if changed.position == obj.position:
                continue
        candidate = objects[:object_index] + [changed] + objects[object_index + 1 :]
        if objects_fit(candidate):
            return SceneEdit(kind, scene, Scene(scene.background, tuple(candidate)), object_index, old, new)
        if kind in ("colour", "shape"):
            break  # cannot happen: same footprint class; fall through to the error
    raise ValueError(f"could not apply a {kind} edit without overlap; try another object or scene")


# The shape swap of lab 3's edits (a prompt-swap edit of any one-object caption): circle <-> square,
# triangle <-> star, cross -> circle.
SHAPE_SWAPS = {"circle": "square", "square": "circle", "triangle": "star", "star": "triangle", "cross": "circle"}


def swap_shape(prompt: str) -> str:
    """The prompt with its first shape word swapped (SHAPE_SWAPS): an edit prompt for any shapes caption (unchanged
    when it names no shape)."""
    words = prompt.split()
    for index, word in enumerate(words):
        if word in SHAPE_SWAPS:
            words[index] = SHAPE_SWAPS[word]
            break
    return " ".join(words)
