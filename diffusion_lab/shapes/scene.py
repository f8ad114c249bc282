"""The shapes world: scenes of 1 to 3 coloured shapes on a plain background.

A `Scene` is the ground truth behind every image in this project: the renderer turns it into
pixels and per-object masks, the caption grammar turns it into text, the analyzer turns pixels
back into a scene, and `edits.py` changes exactly one attribute of it. That is what makes every
edit measurable against the ideal answer.

Geometry is in *relative* units (fractions of the image side) so one scene renders at any size.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Optional, Sequence

import numpy as np

# Object colours (RGB, 0..255). Chosen to be far apart from each other and from every background.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40),
    "green": (40, 175, 60),
    "blue": (45, 90, 235),
    "yellow": (245, 215, 40),
    "purple": (150, 60, 200),
    "orange": (250, 140, 20),
    "cyan": (40, 205, 215),
}
BACKGROUNDS: dict[str, tuple[int, int, int]] = {
    "black": (18, 18, 18),
    "white": (242, 242, 242),
    "gray": (125, 125, 125),
    "navy": (20, 28, 80),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross")
SIZES: dict[str, float] = {"small": 0.15, "large": 0.24}  # outer radius, fraction of the image side
ROWS: tuple[str, ...] = ("top", "middle", "bottom")
COLUMNS: tuple[str, ...] = ("left", "center", "right")
MAX_OBJECTS = 3
# Minimum gap between the bounding circles of two objects (fraction of the side): no object hides another.
MIN_GAP = 0.03


@dataclasses.dataclass(frozen=True)
class ShapeObject:
    """One object: what it is (shape, colour, size) and where its centre is (x, y in [0, 1])."""

    shape: str
    colour: str
    size: str
    x: float
    y: float

    def __post_init__(self):
        _check("shape", self.shape, SHAPES)
        _check("colour", self.colour, COLOURS)
        _check("size", self.size, SIZES)
        if not (0.0 <= self.x <= 1.0 and 0.0 <= self.y <= 1.0):
            raise ValueError(f"object centre ({self.x}, {self.y}) must lie in [0, 1] x [0, 1]")

    @property
    def radius(self) -> float:
        return SIZES[self.size]

    @property
    def row(self) -> str:
        return ROWS[min(int(self.y * 3), 2)]

    @property
    def column(self) -> str:
        return COLUMNS[min(int(self.x * 3), 2)]

    @property
    def position(self) -> tuple[str, str]:
        """Coarse grid position (row, column), e.g. ("top", "left")."""
        return (self.row, self.column)

    def replace(self, **changes) -> "ShapeObject":
        return dataclasses.replace(self, **changes)


@dataclasses.dataclass(frozen=True)
class Scene:
    """A background colour and 1 to 3 non-overlapping objects."""

    background: str
    objects: tuple[ShapeObject, ...]

    def __post_init__(self):
        _check("background", self.background, BACKGROUNDS)
        object.__setattr__(self, "objects", tuple(self.objects))
        if not 1 <= len(self.objects) <= MAX_OBJECTS:
            raise ValueError(f"a scene has 1 to {MAX_OBJECTS} objects, got {len(self.objects)}")
        if not objects_fit(self.objects):
            raise ValueError("objects overlap or leave the image; use random_scene() or move them apart")

    def replace(self, **changes) -> "Scene":
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict:
        return {"background": self.background, "objects": [dataclasses.asdict(o) for o in self.objects]}

    @classmethod
    def from_dict(cls, data: dict) -> "Scene":
        try:
            return cls(data["background"], tuple(ShapeObject(**o) for o in data["objects"]))
        except (KeyError, TypeError) as error:
            raise ValueError(f"not a scene description: {data!r} ({error})") from None


def _check(kind: str, value: str, allowed) -> None:
    if value not in allowed:
        raise ValueError(f"unknown {kind} {value!r}; choose one of: {', '.join(allowed)}")


def object_fits(obj: ShapeObject) -> bool:
    """True when the object's bounding circle lies inside the image."""
    r = obj.radius
    return r <= obj.x <= 1 - r and r <= obj.y <= 1 - r


def objects_fit(objects: Sequence[ShapeObject]) -> bool:
    """True when all objects lie inside the image and no two bounding circles come closer than MIN_GAP."""
    if not all(object_fits(o) for o in objects):
        return False
    for i, a in enumerate(objects):
        for b in objects[i + 1 :]:
            if math.hypot(a.x - b.x, a.y - b.y) < a.radius + b.radius + MIN_GAP:
                return False
    return True


def random_position(
    rng: np.random.Generator, size: str, position: Optional[tuple[str, str]] = None
) -> tuple[float, float]:
    """A centre uniformly at random where an object of `size` fits, optionally inside a grid cell."""
    r = SIZES[size]
    x_range, y_range = (r, 1 - r), (r, 1 - r)
    if position is not None:
        row, column = position
        _check("row", row, ROWS)
        _check("column", column, COLUMNS)
        ci, ri = COLUMNS.index(column), ROWS.index(row)
        x_range = (max(r, ci / 3), min(1 - r, (ci + 1) / 3 - 1e-6))
        y_range = (max(r, ri / 3), min(1 - r, (ri + 1) / 3 - 1e-6))
        if x_range[0] > x_range[1] or y_range[0] > y_range[1]:
            raise ValueError(f"a {size} object cannot be placed at {row} {column}")
    return float(rng.uniform(*x_range)), float(rng.uniform(*y_range))


def random_object(
    rng: np.random.Generator,
    shape: Optional[str] = None,
    colour: Optional[str] = None,
    size: Optional[str] = None,
    position: Optional[tuple[str, str]] = None,
) -> ShapeObject:
    """An object with the given attributes; the ones left as None are drawn at random."""
    shape = shape or SHAPES[rng.integers(len(SHAPES))]
    colour = colour or list(COLOURS)[rng.integers(len(COLOURS))]
    size = size or list(SIZES)[rng.integers(len(SIZES))]
    x, y = random_position(rng, size, position)
    return ShapeObject(shape, colour, size, x, y)


def random_scene(
    seed_or_rng=None,
    num_objects: Optional[int] = None,
    background: Optional[str] = None,
    objects: Optional[Sequence[dict]] = None,
    max_tries: int = 1000,
) -> Scene:
    """Draw a scene at random, deterministically from a seed or numpy Generator.

    `objects` optionally fixes some attributes of each object, e.g. [{"shape": "circle"}, {"colour": "red"}];
    everything not given is random. Objects never overlap (rejection sampling).
    """
    rng = seed_or_rng if isinstance(seed_or_rng, np.random.Generator) else np.random.default_rng(seed_or_rng)
    if objects is None:
        n = num_objects if num_objects is not None else int(rng.integers(1, MAX_OBJECTS + 1))
        objects = [{} for _ in range(n)]
    background = background or list(BACKGROUNDS)[rng.integers(len(BACKGROUNDS))]
    for _ in range(max_tries):
        drawn = tuple(random_object(rng, **spec) for spec in objects)
        if objects_fit(drawn):
            return Scene(background, drawn)
    raise ValueError(f"could not place {len(objects)} objects without overlap in {max_tries} tries; use fewer or smaller objects")
