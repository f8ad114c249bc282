"""Caption grammar of the shapes world: Scene -> text, text -> (partial) description, and the vocabulary.

    caption      := object ("and" object)* [background]
    object       := article [size] [colour] (shape | "shape") [position]
    position     := "at the" row column | "at the" row | "at the" column | "in the center"
    background   := "on a" colour-of-background "background"

Example: "a large red circle at the top left and a small blue square on a gray background".
Attributes may be left out (they are then free), as people do: "a red shape", "a star".
The vocabulary is closed and small, which is what the word-level tokenizer of shapes-tiny is built from.
"""

from __future__ import annotations

import dataclasses
from typing import Optional

import numpy as np

from .scene import BACKGROUNDS, COLOURS, COLUMNS, ROWS, SHAPES, SIZES, Scene

FUNCTION_WORDS = ("a", "an", "and", "on", "at", "in", "the", "background", "shape")
POSITION_WORDS = ("top", "bottom", "left", "right", "center")


def vocabulary() -> list[str]:
    """Every word a shapes caption may use, in a fixed order."""
    words = list(FUNCTION_WORDS) + list(SIZES) + list(COLOURS) + list(SHAPES) + list(POSITION_WORDS)
    words += [b for b in BACKGROUNDS if b not in words]
    return words


@dataclasses.dataclass(frozen=True)
class ObjectDescription:
    """What a caption says about one object; None means the caption leaves it free."""

    shape: Optional[str] = None
    colour: Optional[str] = None
    size: Optional[str] = None
    position: Optional[tuple[Optional[str], Optional[str]]] = None  # (row or None, column or None)


@dataclasses.dataclass(frozen=True)
class SceneDescription:
    objects: tuple[ObjectDescription, ...]
    background: Optional[str] = None

    def matches(self, scene: Scene) -> bool:
        """Does `scene` satisfy every attribute the description names (objects in order)?"""
        if self.background is not None and scene.background != self.background:
            return False
        if len(scene.objects) != len(self.objects):
            return False
        for want, got in zip(self.objects, scene.objects):
            for attribute in ("shape", "colour", "size"):
                value = getattr(want, attribute)
                if value is not None and getattr(got, attribute) != value:
                    return False
            if want.position is not None:
                row, column = want.position
                if (row is not None and got.row != row) or (column is not None and got.column != column):
                    return False
        return True


def _article(next_word: str) -> str:
    return "an" if next_word[0] in "aeiou" else "a"


def position_phrase(row: Optional[str], column: Optional[str]) -> str:
    if row in (None, "middle") and column in (None, "center"):
        return "in the center" if (row, column) == ("middle", "center") else ""
    parts = [p for p in (None if row == "middle" else row, None if column == "center" else column) if p]
    return "at the " + " ".join(parts)


def describe_object(description: ObjectDescription) -> str:
    words = [w for w in (description.size, description.colour) if w]
    words.append(description.shape or "shape")
    text = _article(words[0]) + " " + " ".join(words)
    if description.position is not None:
        phrase = position_phrase(*description.position)
        if phrase:
            text += " " + phrase
    return text


def describe(description: SceneDescription) -> str:
    text = " and ".join(describe_object(o) for o in description.objects)
    if description.background:
        text += f" on a {description.background} background"
    return text


def caption(
    scene: Scene,
    include_position: bool = False,
    include_background: bool = True,
    drop_probability: float = 0.0,
    rng: Optional[np.random.Generator] = None,
) -> str:
    """The caption of a scene. With `drop_probability` > 0 each attribute is left out at random (needs `rng`)."""
    if drop_probability > 0 and rng is None:
        raise ValueError("pass rng=np.random.default_rng(seed) to drop attributes at random")

    def keep() -> bool:
        return drop_probability == 0 or rng.random() >= drop_probability

    objects = tuple(
        ObjectDescription(
            shape=o.shape if keep() else None,
            colour=o.colour if keep() else None,
            size=o.size if keep() else None,
            position=o.position if include_position else None,
        )
        for o in scene.objects
    )
    background = scene.background if include_background and keep() else None
    return describe(SceneDescription(objects, background))


PUNCTUATION = ".,;:!?\"'()"


def check_words(text: str) -> list[str]:
    """Split a caption into words and raise a clear error for any word outside the vocabulary. Punctuation
    around words ("a red circle, on a gray background.") is dropped: a caption reads the same without it."""
    words = [word.strip(PUNCTUATION) for word in text.lower().replace(",", " ").split()]
    words = [word for word in words if word]
    vocab = set(vocabulary())
    unknown = [w for w in words if w not in vocab]
    if unknown:
        raise ValueError(
            f"word(s) {', '.join(repr(w) for w in unknown)} are not in the shapes vocabulary; "
            f"use only: {' '.join(vocabulary())}"
        )
    return words


BACKGROUND_OWNER = "background"


def word_owners(text: str) -> list:
    """What each word of a caption describes: an object's index (0, 1, ...) for its size, colour,
    shape (or the placeholder "shape") and position words ("top", "left", "center", ...),
    BACKGROUND_OWNER for the background colour, None for the grammar's function words.

    "a large red circle and a star on a gray background" -> [None, 0, 0, 0, None, None, 1, None, None, "background", None].
    Objects are counted in the order the caption names them, which is `scene.objects`' order for `caption(scene)`.
    Training uses it to tell the cross-attention map of each word where its object is.
    """
    words = check_words(text)
    owners: list = [None] * len(words)
    object_index, in_background = 0, False
    for i, word in enumerate(words):
        if word == "and":
            object_index += 1
        elif word == "on" and i + 1 < len(words) and words[i + 1] == "a":
            in_background = True
        elif in_background:
            if word in BACKGROUNDS:
                owners[i] = BACKGROUND_OWNER
        elif word in SIZES or word in COLOURS or word in SHAPES or word == "shape" or word in POSITION_WORDS:
            owners[i] = object_index
    return owners


def parse_caption(text: str) -> SceneDescription:
    """Parse a caption of the grammar above back into a SceneDescription (clear error when it is not one)."""
    words = check_words(text)
    background = None
    if len(words) >= 4 and words[-1] == "background" and words[-3:-2] == ["a"] and words[-4] == "on":
        background = words[-2]
        if background not in BACKGROUNDS:
            raise ValueError(f"{background!r} is not a background colour; choose one of {', '.join(BACKGROUNDS)}")
        words = words[:-4]
    chunks, current = [], []
    for word in words:
        if word == "and":
            chunks.append(current)
            current = []
        else:
            current.append(word)
    chunks.append(current)
    objects = []
    for chunk in chunks:
        if not chunk or chunk[0] not in ("a", "an"):
            raise ValueError(f"each object must start with 'a' or 'an', got {' '.join(chunk)!r} in {text!r}")
        shape = colour = size = None
        row = column = None
        has_position = False
        rest = chunk[1:]
        i = 0
        while i < len(rest):
            w = rest[i]
            if w in SIZES and size is None and shape is None:
                size = w
            elif w in COLOURS and colour is None and shape is None:
                colour = w
            elif (w in SHAPES or w == "shape") and shape is None:
                shape = w
            elif w in ("at", "in") and i + 1 < len(rest) and rest[i + 1] == "the":
                has_position = True
                for p in rest[i + 2 :]:
                    if p in ROWS:
                        row = p
                    elif p in COLUMNS:
                        column = p
                    else:
                        raise ValueError(f"{p!r} is not a position word (top, bottom, left, right, center)")
                if row is None and column == "center":
                    row = "middle"
                if column is None and row is not None:
                    column = "center"
                if row is None and column in ("left", "right"):
                    row = "middle"
                break
            else:
                raise ValueError(f"unexpected word {w!r} in {' '.join(chunk)!r}: expected [size] [colour] shape [position]")
            i += 1
        if shape is None:
            raise ValueError(f"object {' '.join(chunk)!r} names no shape; end it with a shape or the word 'shape'")
        objects.append(
            ObjectDescription(
                shape=None if shape == "shape" else shape,
                colour=colour,
                size=size,
                position=(row, column) if has_position else None,
            )
        )
    return SceneDescription(tuple(objects), background)
