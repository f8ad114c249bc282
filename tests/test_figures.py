"""Pictures of attention maps (diffusion_lab.attention.figures) from an edit of the tiny random pipeline."""

import numpy as np
import pytest
from PIL import Image

from diffusion_lab.attention import AttentionStore
from diffusion_lab.attention.figures import (
    attention_over_steps_figure,
    default_resolution,
    edit_attention_figure,
    self_attention_figure,
    word_attention_by_size_figure,
    word_attention_figure,
    word_overlay,
)
from diffusion_lab.attention.maps import mass_ratio_inside
from diffusion_lab.editing import edit_generated
from diffusion_lab.models.tiny_random import build_tiny_random_pipeline
from diffusion_lab.viz import MAX_MARKED_POINTS, image_grid, line_plot

STEPS = 3



@pytest.fixture(scope="module")
def pipe():
    return build_tiny_random_pipeline(seed=0)


@pytest.fixture(scope="module")
def result(pipe):
    return edit_generated(
        pipe, "a tiger on a couch", ["a tiger on a flower"], num_steps=STEPS, seed=0, store_self_attention=True,
        per_step_resolutions=(8,), progress=False,
    )


def test_default_resolution(result):
    # Latents of 16x16 here, maps of 16 and 8: cross-attention at max(8, 16 // 4), self-attention at 16.
    assert result.controller.latent_size == (16, 16)
    assert default_resolution(result.controller) == 8
    assert default_resolution(result.controller, is_cross=False) == 16
    empty = AttentionStore(num_prompts=1)
    with pytest.raises(RuntimeError, match="no attention maps were stored"):
        default_resolution(empty)


def test_word_maps_one_panel_per_word(pipe, result):
    def figure(**options):
        return word_attention_figure(result.controller, pipe.tokenizer, "a tiger on a couch", size=32, title="", **options)

    plain, overlaid, with_specials = figure(), figure(image=result.images[0]), figure(include_special_tokens=True)
    assert isinstance(plain, Image.Image) and plain.height > 32  # title + maps + labels
    panel = 32 + 2  # image_grid pads 2 pixels
    # 5 words ("tiger" is two tokens, one map); +1 panel for the image; +2 for the start and end tokens
    assert plain.width == 2 + 5 * panel
    assert [overlaid.width - plain.width, with_specials.width - plain.width] == [panel, 2 * panel]
    titled = word_attention_figure(result.controller, pipe.tokenizer, "a tiger on a couch", size=32)
    assert titled.width >= plain.width  # the default title (prompt, resolution) may widen the picture


def test_target_row_uses_its_own_prompt_and_index(pipe, result):
    figure = edit_attention_figure(result, size=32)
    source_row = word_attention_figure(result.controller, pipe.tokenizer, result.prompts[0], image=result.images[0], size=32)
    assert figure.height == 2 * source_row.height
    plain = edit_generated(pipe, "a cat", ["a dog"], num_steps=1, attention_control=False, progress=False)
    with pytest.raises(ValueError, match="pass the pipeline's tokenizer"):
        edit_attention_figure(plain)
    assert edit_attention_figure(plain, pipe.tokenizer, size=32).height > 0
    with pytest.raises(ValueError, match="'flower' is not a word of the prompt 'a tiger on a couch'"):
        word_overlay(result.images[0], result.controller, pipe.tokenizer, "a tiger on a couch", "flower")
    overlay = word_overlay(result.images[1], result.controller, pipe.tokenizer, "a tiger on a flower", "flower", prompt_index=1)
    assert overlay.size == (32, 32)
    assert not np.array_equal(np.asarray(overlay), result.images[1])


def test_strips_over_steps(pipe, result):
    strip = attention_over_steps_figure(result.controller, pipe.tokenizer, "a tiger on a couch", words=["tiger", "couch"])
    every_other = attention_over_steps_figure(
        result.controller, pipe.tokenizer, "a tiger on a couch", words=["tiger"], every=2, size=32, shared_scale=False
    )
    assert strip.height > every_other.height  # two strips against one
    with pytest.raises(ValueError, match="not kept step by step"):
        attention_over_steps_figure(result.controller, pipe.tokenizer, "a tiger on a couch", resolution=16)
    unkept = edit_generated(pipe, "a cat", ["a dog"], num_steps=1, progress=False)
    with pytest.raises(ValueError, match="keep_steps_for_resolutions"):
        attention_over_steps_figure(unkept.controller, pipe.tokenizer, "a cat")


def test_self_attention_components(pipe, result):
    figure = self_attention_figure(result.controller, num_components=3, image=result.images[0], size=32)
    fewer = self_attention_figure(result.controller, resolution=8, num_components=2, size=32)
    assert figure.width > fewer.width
    unstored = edit_generated(pipe, "a cat", ["a dog"], num_steps=1, progress=False)
    with pytest.raises(ValueError, match="store_self_attention=True"):
        self_attention_figure(unstored.controller)


def test_word_maps_by_size_one_row_per_map_size_on_one_scale(pipe, result):
    from diffusion_lab.attention.figures import TITLE_HEIGHT

    figure = word_attention_by_size_figure(result.controller, pipe.tokenizer, "a tiger on a couch", size=32)
    row = image_grid([np.zeros((32, 32, 3), np.uint8)] * 5, labels=["x"] * 5, scale=1)  # 5 words, like each row
    sizes = result.controller.available_resolutions()
    assert len(sizes) == 2 and figure.height == TITLE_HEIGHT + len(sizes) * (TITLE_HEIGHT + row.height)
    assert figure.width >= row.width


def test_mass_ratio_inside():
    mask = np.zeros((8, 8), bool)
    mask[:4, :4] = True  # a quarter of the pixels
    assert mass_ratio_inside(np.ones((4, 4)), mask) == pytest.approx(1.0)  # a uniform map
    inside = np.zeros((8, 8))
    inside[:4, :4] = 1.0
    assert mass_ratio_inside(inside, mask) == pytest.approx(4.0)  # all the mass inside: 1 / share
    with pytest.raises(ValueError, match="the mask is empty"):
        mass_ratio_inside(np.ones((4, 4)), np.zeros((8, 8), bool))


def test_image_grid_wraps_a_long_label_onto_a_second_line():
    black = [np.zeros((32, 32, 3), np.uint8)] * 2
    short = image_grid(black, labels=["a", "b"], scale=2)
    long = image_grid(black, labels=["a", "circle -> square + local blend"], scale=2)
    assert long.height == short.height + 12 and long.width == short.width  # one more label row, same width
    second_line = np.asarray(long)[2 + 64 + 12 : 2 + 64 + 24, 2 + 64 + 2 : 2 + 128 + 2]  # under the second image
    assert (second_line < 128).any()  # the rest of the label is drawn there, not cut off
    single_words = image_grid(black, labels=["triangle", "star"], scale=1)  # one word too long: cut, not wrapped
    assert single_words.height == image_grid(black, labels=["a", "b"], scale=1).height


def test_line_plot_marks_points_of_short_curves_only():
    """A table's few points are marked; a curve over every timestep (1000 points) is a plain line."""
    short = line_plot([10, 20, 50], {"a": [1, 2, 3]}, xlabel="S", ylabel="y")
    dense = line_plot(np.arange(MAX_MARKED_POINTS + 1), {"a": np.zeros(MAX_MARKED_POINTS + 1)}, xlabel="t", ylabel="y")
    assert short.axes[0].lines[0].get_marker() == "o"
    assert dense.axes[0].lines[0].get_marker() in ("None", None, "")
