"""Per-model defaults (diffusion_lab.models.defaults): one default guidance per model, used by every entry point."""

import pytest
import torch

from diffusion_lab.editing import edit_generated
from diffusion_lab.generation import text_to_image
from diffusion_lab.models import load_pipeline
from diffusion_lab.models.defaults import (
    SHAPES_TINY,
    STABLE_DIFFUSION,
    inversion_guidance,
    inversion_guidance_for_edit,
    model_defaults,
    model_family,
    resolve_guidance,
)
from diffusion_lab.models.shapes_tiny import MODEL_DIR, build_untrained_pipeline
from diffusion_lab.models.tiny_random import build_tiny_random_pipeline


def test_families_of_names_folders_and_pipelines():
    assert model_family("shapes-tiny") == SHAPES_TINY
    assert model_family(str(MODEL_DIR)) == SHAPES_TINY  # a folder train_shapes_tiny exported (training_info.json)
    assert model_family("stable-diffusion-v1-5/stable-diffusion-v1-5") == STABLE_DIFFUSION
    assert model_family(build_untrained_pipeline()) == SHAPES_TINY
    assert model_family(build_tiny_random_pipeline()) == STABLE_DIFFUSION  # stands in for SD checkpoints
    assert model_defaults("shapes-tiny")["guidance_scale"] == 5.0 and model_defaults("shapes-tiny").image_size == 64
    assert model_defaults("some/checkpoint").guidance_scale == 7.5


def test_guidance_resolution_and_inversion_guidance():
    assert resolve_guidance("shapes-tiny", None) == 5.0 and resolve_guidance("shapes-tiny", 2) == 2.0
    assert resolve_guidance("some/checkpoint", None) == 7.5
    assert inversion_guidance("ddim") == 1.0 and inversion_guidance("null_text") == 7.5
    assert inversion_guidance("edit_friendly") == 3.5
    assert inversion_guidance_for_edit("ddim", 5.0) == 1.0 and inversion_guidance_for_edit("direct", 5.0) == 5.0
    with pytest.raises(ValueError, match="unknown inversion method"):
        inversion_guidance("nul_text")


def test_generation_and_editing_share_the_models_default_guidance():
    """Issue 21: edit_generated defaulted to 7.5 while text_to_image and the benchmarks used 5 on shapes-tiny."""
    pipe = load_pipeline("shapes-tiny")
    prompt = "a large red circle on a gray background"
    edit = edit_generated(pipe, prompt, [prompt], num_steps=2, seed=1, progress=False)
    assert edit.guidance_scale == 5.0
    alone = text_to_image(pipe, [prompt], num_steps=2, seed=1, progress=False)
    explicit = text_to_image(pipe, [prompt], num_steps=2, seed=1, guidance_scale=5.0, progress=False)
    assert (alone.images == explicit.images).all()
    # the source row is plain sampling at the same guidance (batched with the target: equal to float tolerance;
    # at guidance 7.5 it differs by far more)
    torch.testing.assert_close(edit.latents[:1], alone.latents, atol=1e-4, rtol=0)
    at_seven_and_a_half = text_to_image(pipe, [prompt], num_steps=2, seed=1, guidance_scale=7.5, progress=False)
    assert (edit.latents[:1] - at_seven_and_a_half.latents).abs().max() > 1e-2
    tiny = build_tiny_random_pipeline()
    assert edit_generated(tiny, "a cat", ["a dog"], num_steps=1, progress=False).guidance_scale == 7.5


def test_invert_takes_its_defaults_from_the_models_defaults(monkeypatch):
    """invert(guidance_scale=None) inverts for models.defaults.inversion_guidance(method, pipe), and null-text's
    loop is the model's ModelDefaults.null_text_settings ("fast" for shapes-tiny, the paper's for Stable Diffusion)
    with its null_text_learning_rate where set."""
    import dataclasses

    from diffusion_lab.inversion import METHODS, NullTextSettings, invert
    from diffusion_lab.models import defaults

    assert set(defaults.INVERSION_GUIDANCE) == set(METHODS)  # every method has a default guidance, and only they
    assert NullTextSettings.paper().learning_rate == 1e-2 and NullTextSettings().learning_rate == 0.1
    assert model_defaults(SHAPES_TINY).null_text_settings == "fast"
    assert model_defaults(STABLE_DIFFUSION).null_text_settings == "paper"
    assert model_defaults(SHAPES_TINY).null_text_learning_rate is None  # the settings' own rate
    pipe = build_tiny_random_pipeline()
    size = pipe.unet.config.sample_size
    latents = torch.randn(1, pipe.unet.config.in_channels, size, size, generator=torch.Generator().manual_seed(0))
    changed = dataclasses.replace(
        defaults._FAMILY_DEFAULTS[STABLE_DIFFUSION], null_text_learning_rate=0.05,
        inversion_guidance={**defaults.INVERSION_GUIDANCE, "null_text": 6.0},
    )
    monkeypatch.setitem(defaults._FAMILY_DEFAULTS, STABLE_DIFFUSION, changed)
    inversion = invert(pipe, None, "a cat", method="null_text", num_steps=1, latents=latents, inner_steps=1,
                       progress=False)
    assert inversion.guidance_scale == 6.0 and inversion.settings["learning_rate"] == 0.05
    explicit = invert(pipe, None, "a cat", method="null_text", num_steps=1, guidance_scale=2.0, latents=latents,
                      inner_steps=1, learning_rate=0.2, progress=False)
    assert explicit.guidance_scale == 2.0 and explicit.settings["learning_rate"] == 0.2
    assert inversion.settings["check_first"] is False  # the tiny random pipeline is Stable Diffusion: the paper's
    fast = invert(pipe, None, "a cat", method="null_text", num_steps=1, latents=latents, null_text_settings="fast",
                  progress=False)
    assert fast.settings == {**dataclasses.asdict(NullTextSettings()), "eta": 0.0, "prediction_type": "epsilon"}
