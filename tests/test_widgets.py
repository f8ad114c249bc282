"""The labs' panels, driven like a user would: set a control's .value, click a button, look at the picture.

Runs on the tiny random SD pipeline (its pictures are noise: only the plumbing is tested), a few steps each.
"""

import json

import numpy as np
import pytest
import torch

from diffusion_lab.models.tiny_random import build_tiny_random_pipeline
from diffusion_lab.widgets import common
from diffusion_lab.widgets.inversion_panel import InversionPanel, swap_shape
from diffusion_lab.widgets.naive_noising_panel import ForwardProcessPanel, NaiveEditPanel
from diffusion_lab.studies.posterior import marginal_study
from diffusion_lab.widgets.posterior_panel import SamplerPanel, caption_accuracy, schedule_of
from diffusion_lab.widgets.prompt_to_prompt import PromptToPromptPanel, examples, score_edit

PROMPT = "a large red circle on a gray background"



@pytest.fixture(scope="module")
def pipe():
    return build_tiny_random_pipeline(seed=0)


@pytest.fixture(scope="module")
def scene(pipe):
    return common.source_scene(pipe, 3, objects=[{"shape": "circle", "colour": "red", "size": "large"}], background="gray")


def picture_bytes(view: common.ImageView) -> bytes:
    return bytes(view.image.value)


# ------------------------------------------------------------------------------------------------------------
# common
# ------------------------------------------------------------------------------------------------------------


def test_source_scene_is_a_caption_and_an_image_of_the_pipelines_size(pipe, scene):
    image, prompt, _ = scene
    assert prompt == PROMPT
    assert image.size == (32, 32)  # the tiny pipeline: 16x16 latents, VAE factor 2


def test_model_defaults_switch_for_stable_diffusion():
    assert common.model_defaults("shapes-tiny")["image_size"] == 64
    sd = common.model_defaults("stable-diffusion-v1-5/stable-diffusion-v1-5")
    assert (sd["image_size"], sd["guidance_scale"]) == (512, 7.5)


def test_rounded_and_tables_are_stable():
    assert common.rounded({"a": [0.123456, np.float32(2.0)], "b": (1, float("nan"))}) == {"a": [0.123, 2.0], "b": [1, pytest.approx(float("nan"), nan_ok=True)]}
    table = common.markdown_table([{"x": 1.23456, "y": "z"}])
    assert table.splitlines()[2] == "| 1.235 | z |"


def test_save_outputs_writes_pngs_and_merges_metrics(tmp_path, scene):
    common.save_outputs(tmp_path, {"a": scene[0]}, {"x": 1.234567})
    common.save_outputs(tmp_path, metrics={"y": [0.5]})
    assert (tmp_path / "a.png").exists()
    assert json.loads((tmp_path / "metrics.json").read_text()) == {"x": 1.2346, "y": [0.5]}
    common.reset_metrics(tmp_path)
    assert not (tmp_path / "metrics.json").exists()


def test_lab_out_dir_follows_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv(common.OUT_ENV, str(tmp_path))
    assert common.lab_out_dir(None, "lab") == tmp_path / "lab"
    assert common.lab_out_dir(tmp_path / "x", "lab") == tmp_path / "x"


# ------------------------------------------------------------------------------------------------------------
# experiments that need no network
# ------------------------------------------------------------------------------------------------------------


def test_marginal_check_keeps_the_marginals_for_every_eta(pipe):
    x_0 = torch.linspace(-1, 1, 64)
    rows = marginal_study(schedule_of(pipe), x_0, num_steps=10, num_draws=4000, seed=0)
    for row in rows:
        assert row["mean coef"] == pytest.approx(row["target coef"], abs=0.05)
        if row["sampler"] != "sigma-hat":
            assert row["std"] == pytest.approx(row["target std"], rel=0.03)
    big_skip = [r for r in rows if r["sampler"] == "sigma-hat" and r["t -> t_prev"].startswith("401")]
    assert big_skip[0]["std"] > big_skip[0]["target std"] * 1.03  # sigma-hat leaves the family


def test_table1_reaches_every_timestep_at_s_equal_t(pipe):
    from diffusion_lab.widgets.posterior_panel import sampling_timesteps

    schedule = schedule_of(pipe)  # leading spacing, steps_offset 1: S = 1000 would need t = 1000
    assert sampling_timesteps(schedule, 1000).tolist() == list(range(999, -1, -1))
    assert sampling_timesteps(schedule, 10).tolist() == schedule.timesteps(10).tolist()


def test_caption_accuracy_of_renders_is_perfect():
    from diffusion_lab.shapes import random_scene, render

    scenes = [random_scene(i, num_objects=1) for i in range(6)]
    accuracy = caption_accuracy([render(s).image for s in scenes], scenes)
    assert min(accuracy.values()) == 1.0


def test_examples_and_scores():
    titles = [e["title"] for e in examples(PROMPT)]
    assert titles == ["circle -> square", "red -> blue", "refine: +large", "reweight red x0.2",
                      "circle -> square + local blend", "red -> blue + local blend"]
    refine = examples(PROMPT)[2]
    assert refine["source_prompt"] == "a red circle on a gray background" and refine["edit"] == "refine"
    assert swap_shape(PROMPT) == "a large red square on a gray background"
    from diffusion_lab.shapes import random_scene, render

    source = render(random_scene(0, num_objects=1, objects=[{"shape": "circle", "colour": "red", "size": "large"}],
                                 background="gray")).image
    assert score_edit(source, source, PROMPT)["target_matched"] == 1.0
    assert score_edit(source, source, "a photo of a cat")["layout_kept"] == 1.0  # not a shapes caption: no check


def test_run_examples_reports_the_numbers_of_the_generated_edits(pipe, scene):
    """Generated and real-image rows carry the same columns (shapes.scoring.edit_scores), so lab 4's two tables
    can be compared."""
    from diffusion_lab.widgets.prompt_to_prompt import run_examples

    same = {"title": "identity", "source_prompt": PROMPT, "target_prompts": [PROMPT], "edit": "replace"}
    columns = ["edit"] + [f"{run} {name}" for run in ("no P2P", "P2P") for name in ("target_matched", "iou", "outside_psnr")]
    generated, _ = run_examples(pipe, [same], num_steps=3)
    real, figure = run_examples(pipe, [same], num_steps=3, real_image=scene[0], inversion_method="ddim")
    assert list(generated[0]) == columns and list(real[0]) == columns
    assert figure.size[0] > figure.size[1]  # one row: input, reconstruction, no P2P, P2P


# ------------------------------------------------------------------------------------------------------------
# panels: set values, click, the picture changes
# ------------------------------------------------------------------------------------------------------------


def test_forward_process_panel_updates_on_release_of_the_slider(pipe, scene):
    panel = ForwardProcessPanel(pipe, scene[0], t=0)
    assert panel.t.continuous_update is False
    before, updates = picture_bytes(panel.pixels), panel.pixels.updates
    panel.t.value = 800  # what releasing the slider does
    assert panel.error is None
    assert panel.pixels.updates == updates + 1 and picture_bytes(panel.pixels) != before
    assert "alpha_bar_t" in panel.info.value


def test_naive_edit_panel_runs_on_click(pipe, scene):
    image, prompt, _ = scene
    panel = NaiveEditPanel(pipe, image, prompt, "a large red square on a gray background", num_steps=5,
                           guidance_scale=2.0)
    assert panel.result.picture is None
    panel.strength.value = 0.6
    panel.button.click()
    assert panel.error is None, panel.error
    assert panel.result.picture is not None and panel.noised.picture is not None
    first = picture_bytes(panel.result)
    panel.seed.value = 1
    panel.button.click()
    assert picture_bytes(panel.result) != first
    assert "PSNR" in panel.result.caption.value


def test_sampler_panel_shows_samples_and_the_predicted_x0(pipe):
    panel = SamplerPanel(pipe, [PROMPT, "a small blue star on a black background"], num_steps=5, guidance_scale=1.0)
    panel.eta.value = 0.5
    panel.button.click()
    assert panel.error is None, panel.error
    first = picture_bytes(panel.samples)
    panel.sigma_hat.value = True
    panel.button.click()
    assert panel.error is None and picture_bytes(panel.samples) != first
    assert panel.trajectory.picture is not None
    assert panel.progress.bar.value == panel.progress.bar.max


def test_sampler_panel_reports_errors_in_the_panel(pipe):
    panel = SamplerPanel(pipe, [PROMPT], num_steps=5)
    panel.prompts.value = ""
    panel.button.click()  # must not raise into the widget event loop
    assert isinstance(panel.error, ValueError)
    assert "prompt" in panel.progress.status.value and panel.button.disabled is False


def test_inversion_panel_caches_the_inversion(pipe, scene):
    image, prompt, _ = scene
    common.INVERSIONS.clear()
    panel = InversionPanel(pipe, image, prompt, "", method="negative_prompt", num_steps=5, guidance_scale=3.0)
    panel.button.click()
    assert panel.error is None, panel.error
    assert common.INVERSIONS.misses == 1 and "PSNR" in panel.numbers.value
    without_edit = picture_bytes(panel.view)
    panel.target.value = swap_shape(prompt)
    panel.button.click()  # same image and settings: the inversion comes from the cache
    assert panel.error is None and common.INVERSIONS.misses == 1 and common.INVERSIONS.hits >= 1
    assert picture_bytes(panel.view) != without_edit  # an edit column was added


def test_panels_run_the_models_default_null_text_loop(pipe, scene):
    """The panels used to pass inner_steps=10 to null-text inversion: for shapes-tiny neither the paper's loop nor
    the library's default (6 Adam steps at most). Now the model's own default: 6 for shapes-tiny, 10 for SD."""
    from diffusion_lab.inversion import NullTextSettings
    from diffusion_lab.models.loading import load_pipeline

    image, prompt, _ = scene
    assert InversionPanel(pipe, image, prompt, method="null_text").inner_steps.value == 10  # SD family: the paper's
    shapes = load_pipeline("shapes-tiny")
    real_image, real_prompt, _ = common.source_scene(shapes, 3, objects=[{"shape": "circle", "colour": "red"}])
    fast = NullTextSettings().inner_steps
    assert fast != 10 and InversionPanel(shapes, real_image, real_prompt, method="null_text").inner_steps.value == fast
    common.INVERSIONS.clear()
    panel = PromptToPromptPanel(shapes, real_image, real_prompt, real_prompt, swap_shape(real_prompt), num_steps=10,
                                inversion_method="null_text")
    panel.source_kind.value = "real image"
    panel.compare.value = False
    panel.button.click()
    assert panel.error is None, panel.error
    (inversion,) = common.INVERSIONS.entries.values()
    assert inversion.settings["inner_steps"] == fast


def test_prompt_to_prompt_panel_generated_and_real(pipe, scene):
    image, prompt, _ = scene
    common.INVERSIONS.clear()
    panel = PromptToPromptPanel(pipe, image, prompt, PROMPT, swap_shape(PROMPT), num_steps=10, guidance_scale=3.0,
                                inversion_method="negative_prompt")
    panel.button.click()
    assert panel.error is None, panel.error
    generated = picture_bytes(panel.images)
    assert panel.maps.picture is not None and "analyzer" in panel.numbers.value
    panel.source_kind.value = "real image"
    panel.compare.value = False
    panel.button.click()
    assert panel.error is None, panel.error
    assert picture_bytes(panel.images) != generated and common.INVERSIONS.misses == 1
    panel.edit.value = "reweight"
    panel.target_prompt.value = PROMPT
    panel.reweight_word.value = "red"
    panel.reweight_scale.value = 0.0
    panel.button.click()  # a second edit of the same real image: no new inversion
    assert panel.error is None, panel.error
    assert common.INVERSIONS.misses == 1


def test_prompt_to_prompt_panel_explains_a_bad_edit(pipe, scene):
    panel = PromptToPromptPanel(pipe, scene[0], scene[1], PROMPT, PROMPT, num_steps=10)
    panel.edit.value = "reweight"  # without a word to reweight
    panel.button.click()
    assert panel.error is not None and "reweight" in str(panel.error)
    assert panel.progress.bar.bar_style == "danger"


def test_word_maps_by_size_measures_the_object_words_at_every_size():
    from diffusion_lab.models import load_pipeline
    from diffusion_lab.widgets.prompt_to_prompt import word_maps_by_size

    shapes_tiny = load_pipeline("shapes-tiny", device="cpu")
    figure, rows = word_maps_by_size(shapes_tiny, PROMPT, seed=0, num_steps=10)
    assert figure.width > 0
    sizes = {row["map size"] for row in rows}
    assert sizes == {"16x16", "8x8", "4x4"} and {row["word"] for row in rows} == {"red", "circle"}
    assert len(rows) == 6 and all(np.isfinite(row["mass on object / uniform"]) for row in rows)


def test_panels_refuse_empty_prompts_before_any_work(pipe, scene):
    image, prompt, _ = scene
    panel = NaiveEditPanel(pipe, image, prompt, "", num_steps=2)
    panel.button.click()
    assert isinstance(panel.error, ValueError) and "empty" in str(panel.error)
    assert panel.progress.bar.bar_style == "danger" and panel.result.picture is None
    assert panel.source.picture is not None  # the panel's input stays
    inversion = InversionPanel(pipe, image, "  ", "", method="negative_prompt", num_steps=2)
    inversion.button.click()
    assert isinstance(inversion.error, ValueError) and "empty" in str(inversion.error)


def test_labels_are_whole_and_views_hidden_before_the_first_run(pipe, scene):
    image, prompt, _ = scene
    panel = PromptToPromptPanel(pipe, image, prompt, prompt)
    assert panel.source_prompt.style.description_width == "initial"
    assert panel.target_prompt.style.description_width == "initial"
    assert panel.images.image.layout.display == "none"  # no broken-image icon before the first run
