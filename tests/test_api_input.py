"""Input checks at the API's entry points: one prompt as a plain string, empty prompts, punctuation, and an
EditResult that prints as a short summary."""

import pytest

from diffusion_lab.editing import PromptEdit, run_edit
from diffusion_lab.generation import text_to_image
from diffusion_lab.inversion import invert
from diffusion_lab.models.tiny_random import build_tiny_random_pipeline
from diffusion_lab.shapes import check_words
from diffusion_lab.text import PromptError, check_prompt

PROMPT = "a large red circle on a gray background"


@pytest.fixture(scope="module")
def pipe():
    return build_tiny_random_pipeline(seed=0)


def test_a_plain_string_is_one_prompt(pipe):
    result = text_to_image(pipe, PROMPT, num_steps=2, progress=False)
    assert len(result.images) == 1  # was one image per character


@pytest.mark.parametrize("prompts", ["", "   ", [PROMPT, ""], []])
def test_empty_prompts_are_refused(pipe, prompts):
    with pytest.raises(ValueError, match="empty|at least one prompt"):
        text_to_image(pipe, prompts, num_steps=2, progress=False)


def test_inversion_refuses_an_empty_source_prompt(pipe):
    import numpy as np

    with pytest.raises(ValueError, match="source prompt is empty"):
        invert(pipe, np.zeros((32, 32, 3), np.uint8), "", num_steps=2, progress=False)


def test_punctuation_is_dropped_by_captions_and_named_by_the_prompt_check(pipe):
    assert check_words("a large red circle, on a gray background.") == check_words(PROMPT)
    from diffusion_lab.batch.runner import load_tokenizer

    tokenizer = load_tokenizer("shapes-tiny")
    with pytest.raises(PromptError, match=r"'background\.' carry punctuation"):
        check_prompt(tokenizer, "a large red circle on a gray background.")


def test_edit_result_prints_a_summary(pipe):
    result = run_edit(pipe, PromptEdit(PROMPT, ["a large red square on a gray background"]), num_steps=2,
                      progress=False)
    text = repr(result)
    assert text.startswith("EditResult(edit='replace'") and "tensor" not in text and len(text) < 400
