"""The shapes world: scenes, captions, renderer, ground-truth edits and an analyzer."""

from .analyzer import ATTRIBUTES, Analysis, DetectedObject, analyze, attribute_accuracy, match_objects
from .captions import (
    BACKGROUND_OWNER,
    ObjectDescription,
    SceneDescription,
    caption,
    check_words,
    describe,
    parse_caption,
    vocabulary,
    word_owners,
)
from .edits import SCENE_EDIT_KINDS, SHAPE_SWAPS, SceneEdit, edit_scene, swap_shape
from .render import Render, render, render_image, shape_coverage
from .scene import (
    BACKGROUNDS,
    COLOURS,
    COLUMNS,
    MAX_OBJECTS,
    ROWS,
    SHAPES,
    SIZES,
    Scene,
    ShapeObject,
    random_object,
    random_scene,
)
