"""The high-level Prompt-to-Prompt API (diffusion_lab.editing) on the tiny random SD pipeline and on the
shapes-tiny architecture (untrained): what each edit promises, batching, real images, and the errors."""

import json
import warnings

import numpy as np
import pytest
import torch

from diffusion_lab.attention import AttentionRefine, AttentionReplace, AttentionReweight, AttentionStore
from diffusion_lab.editing import (
    EditError,
    PromptEdit,
    auto_self_replace_resolution,
    edit_generated,
    edit_real,
    run_edit,
)
from diffusion_lab.generation import initial_noise, text_to_image
from diffusion_lab.models.tiny_random import build_tiny_random_pipeline

STEPS = 3
ATOL = 1e-4  # the controlled (explicit softmax) and fused attention paths differ by float rounding



@pytest.fixture(scope="module")
def pipe():
    return build_tiny_random_pipeline(seed=0)


@pytest.fixture
def unet_calls(pipe):
    """Counts UNet calls (errors must come before the first one)."""
    calls = []
    handle = pipe.unet.register_forward_pre_hook(lambda module, args: calls.append(1))
    yield calls
    handle.remove()


def generate(pipe, source, targets, **settings):
    settings = {"num_steps": STEPS, "seed": 1, "progress": False, **settings}
    return edit_generated(pipe, source, targets, **settings)


# -- generated images ------------------------------------------------------------------------------------


def test_result_layout_and_source_row_is_plain_generation(pipe):
    result = generate(pipe, "a red circle", ["a blue circle"])
    assert result.images.shape == (2, 32, 32, 3) and result.images.dtype == np.uint8
    assert result.source_image.shape == (32, 32, 3) and result.edited_images.shape == (1, 32, 32, 3)
    assert result.prompts == ["a red circle", "a blue circle"] and result.target_prompts == ["a blue circle"]
    assert isinstance(result.controller, AttentionReplace) and result.attention_store is result.controller
    assert result.initial_latents.shape == (1, 4, 16, 16) and result.seed == 1 and result.inversion is None
    alone = text_to_image(pipe, ["a red circle"], num_steps=STEPS, guidance_scale=7.5, seed=1, progress=False)
    torch.testing.assert_close(result.latents[:1], alone.latents, atol=ATOL, rtol=0)
    assert result.figure().size[0] > 2 * 32


def test_progress_bars_do_not_change_the_edit(pipe, monkeypatch):
    """progress=True (the default of labs and widgets) is deterministic DDIM like progress=False (a regression:
    progress once reached the sampler as its eta, so edits with progress bars sampled with eta=1 from the global RNG)."""
    monkeypatch.setenv("DIFFUSION_LAB_NO_PROGRESS", "1")
    quiet = generate(pipe, "a red circle", ["a blue circle"])
    with_bars = [generate(pipe, "a red circle", ["a blue circle"], progress=True) for _ in range(2)]
    assert all(torch.equal(quiet.latents, run.latents) for run in with_bars)


def test_identical_target_reproduces_the_source(pipe):
    # exactly in one batch (a replayed source branch runs the target at another batch size: equal to rounding)
    result = generate(pipe, "a red circle", ["a red circle"], source_cache=False)
    assert torch.equal(result.latents[0], result.latents[1])


def test_several_targets_in_one_batch_match_separate_runs(pipe):
    together = generate(pipe, "a red circle", ["a blue circle", "a red square"])
    first = generate(pipe, "a red circle", ["a blue circle"])
    second = generate(pipe, "a red circle", ["a red square"])
    torch.testing.assert_close(together.latents[1], first.latents[1], atol=ATOL, rtol=0)
    torch.testing.assert_close(together.latents[2], second.latents[1], atol=ATOL, rtol=0)


def test_without_attention_control_only_the_prompt_changes(pipe):
    plain = generate(pipe, "a red circle", ["a blue circle"], attention_control=False)
    assert type(plain.controller) is AttentionStore  # maps recorded, nothing edited
    assert plain.controller.average_cross_attention(8, prompt_index=1).shape == (8, 8, 16)
    alone = text_to_image(
        pipe, ["a blue circle"], num_steps=STEPS, guidance_scale=7.5, x_T=initial_noise(pipe, 1, 1), progress=False
    )
    torch.testing.assert_close(plain.latents[1:], alone.latents, atol=ATOL, rtol=0)
    controlled = generate(pipe, "a red circle", ["a blue circle"], cross_replace_steps=1.0, self_replace_steps=1.0)
    assert (controlled.latents[1] - plain.latents[1]).abs().max() > 1e-3


def test_refine_and_reweight_build_the_right_controllers(pipe):
    refine = generate(pipe, "a red circle", ["a big red circle"], edit="refine")
    assert isinstance(refine.controller, AttentionRefine)
    unchanged = generate(pipe, "a red circle", ["a red circle"], edit="reweight", reweight={"red": 1.0},
                         source_cache=False)  # one batch: exactly
    assert torch.equal(unchanged.latents[0], unchanged.latents[1])  # scale 1 on the source's own maps
    removed = generate(pipe, "a red circle", ["a red circle"], edit="reweight", reweight={"red": 0.0})
    assert (removed.latents[1] - removed.latents[0]).abs().max() > 1e-4
    chained = generate(pipe, "a red circle", ["a blue circle"], reweight={"blue": 2.0})
    assert isinstance(chained.controller, AttentionReweight)
    assert isinstance(chained.controller.previous, AttentionReplace)


def test_local_blend_keeps_the_source_outside_the_words_region(pipe):
    # A random model's maps are nearly uniform: only a high threshold leaves some of the image outside the mask.
    result = generate(pipe, "a red circle", ["a red square"], blend_words=["circle", "square"], blend_threshold=0.98)
    controller = result.controller
    mask = controller.local_blend.mask(controller, (16, 16))  # (prompts, 1, 16, 16): the last blend's mask
    outside = ~(mask[1] | mask[0])[0]  # (16, 16)
    assert outside.any() and not outside.all()
    assert torch.equal(result.latents[1][:, outside], result.latents[0][:, outside])
    assert not torch.equal(result.latents[1][:, ~outside], result.latents[0][:, ~outside])


def test_blend_mask_style_reaches_the_local_blend(pipe):
    """PromptEdit's blend_mask_style is LocalBlend's mask_style (it was reachable only by building a LocalBlend by
    hand); edit_generated passes it by name, and the official mask blends the latents with its own mask."""
    from diffusion_lab.attention import DEFAULT_MASK_STYLE

    assert PromptEdit("a red circle", ["a red square"]).blend_mask_style == DEFAULT_MASK_STYLE
    settings = dict(blend_words=["circle", "square"], blend_threshold=0.98, source_cache=False)
    official = generate(pipe, "a red circle", ["a red square"], blend_mask_style="official", **settings)
    ours = generate(pipe, "a red circle", ["a red square"], blend_mask_style="ours", **settings)
    assert official.controller.local_blend.mask_style == "official" and ours.controller.local_blend.mask_style == "ours"
    mask = official.controller.local_blend.mask(official.controller, (16, 16))  # (prompts, 1, 16, 16)
    assert not torch.equal(mask, ours.controller.local_blend.mask(ours.controller, (16, 16)))
    outside = ~(mask[1] | mask[0])[0]  # (16, 16)
    assert outside.any() and torch.equal(official.latents[1][:, outside], official.latents[0][:, outside])


def test_maps_for_figures_are_kept_on_request(pipe):
    result = generate(pipe, "a red circle", ["a blue circle"], store_self_attention=True, per_step_resolutions=(8,))
    assert result.controller.kept_steps == list(range(STEPS))
    assert result.controller.average_self_attention(16).shape == (16, 16, 256)


def test_auto_self_replace_resolution():
    assert [auto_self_replace_resolution(side) for side in (8, 16, 32, 64, 96)] == [8, 16, 16, 16, 24]


# -- real images -------------------------------------------------------------------------------------------


def test_edit_real_inverts_then_edits_and_the_inversion_is_reusable(pipe):
    from diffusion_lab.inversion import reconstruct

    image = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    result = edit_real(
        pipe, image, "a red circle", ["a blue circle"], num_steps=STEPS, inner_steps=2, progress=False
    )
    inversion = result.inversion
    assert inversion.method == "null_text" and inversion.num_steps == STEPS and result.seed is None
    assert result.guidance_scale == inversion.guidance_scale == 7.5
    torch.testing.assert_close(result.latents[:1], reconstruct(pipe, inversion, output_type="latents", progress=False),
                               atol=ATOL, rtol=0)
    again = edit_real(pipe, inversion, target_prompts=["a red square", "a blue circle"], progress=False)
    assert again.prompts[0] == "a red circle"  # the inversion's prompt
    torch.testing.assert_close(again.latents[0], result.latents[0], atol=ATOL, rtol=0)
    torch.testing.assert_close(again.latents[2], result.latents[1], atol=ATOL, rtol=0)
    with pytest.warns(UserWarning, match="will not reconstruct faithfully"):
        edit_real(pipe, inversion, "a blue square", ["a red square"], progress=False)
    # a reused inversion keeps its steps, method and settings: asking for others is an error, not ignored
    same_steps = edit_real(pipe, inversion, target_prompts=["a blue circle"], num_steps=STEPS, progress=False)
    torch.testing.assert_close(same_steps.latents[1], result.latents[1], atol=ATOL, rtol=0)
    for options, message in (({"num_steps": STEPS + 1}, f"this inversion has S = {STEPS} steps"),
                             ({"inversion_method": "direct"}, "'null_text' inversion reused as it is"),
                             ({"inner_steps": 5}, "inner_steps is an option of a new inversion")):
        with pytest.raises(EditError, match=message):
            edit_real(pipe, inversion, target_prompts=["a blue circle"], progress=False, **options)


def test_edit_real_with_direct_inversion_keeps_the_source_on_its_pivot(pipe):
    """Direct inversion: the source row IS the encoded image at any guidance; the targets sample freely (with the
    source's attention), so they equal a plain unrectified run only in the rows the rectifier does not touch."""
    image = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # any guidance is faithful for direct inversion: no warning
        result = edit_real(pipe, image, "a red circle", ["a blue circle"], inversion_method="direct",
                           num_steps=STEPS, guidance_scale=3.0, progress=False)
    inversion = result.inversion
    assert inversion.method == "direct" and result.guidance_scale == 3.0
    assert torch.equal(result.latents[0], inversion.z_0[0].cpu())
    baseline = edit_real(pipe, inversion, target_prompts=["a blue circle"], attention_control=False, progress=False,
                         guidance_scale=3.0)
    assert torch.equal(baseline.latents[0], inversion.z_0[0].cpu())
    plain = reconstruct_free(pipe, inversion, "a blue circle", 3.0)
    torch.testing.assert_close(baseline.latents[1], plain[0], atol=ATOL, rtol=0)  # no control: target not rectified
    assert not torch.allclose(result.latents[1], baseline.latents[1], atol=1e-3)  # P2P: the source's maps


def reconstruct_free(pipe, inversion, prompt, guidance_scale):
    from diffusion_lab.inversion import reconstruct

    return reconstruct(pipe, inversion, prompt=prompt, guidance_scale=guidance_scale, output_type="latents",
                       progress=False).cpu()


def test_edit_real_checks_the_edit_before_inverting(pipe, unet_calls):
    image = np.zeros((32, 32, 3), dtype=np.uint8)
    with pytest.raises(EditError, match="edit='refine'"):
        edit_real(pipe, image, "a cat on a couch", ["a tiger on a couch"])
    with pytest.raises(EditError, match="source prompt"):
        edit_real(pipe, image, target_prompts=["a dog"])
    assert not unet_calls


# -- errors --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"target_prompts": ["a tiger on a couch"]}, r"align.*edit='refine'"),  # 'tiger' is two tokens
        ({"edit": "reweight"}, r"needs reweight=\{word: scale\}"),
        ({"reweight": {"tiger": 2.0}}, r"reweight word 'tiger' is not in the target prompt 'a dog on a couch'"),
        ({"blend_words": ["tiger"]}, r"blend word 'tiger' is in none of the prompts"),
        ({"source_prompt": "a cat " * 10}, r"the source prompt .* tokens but the tokenizer allows 16"),
        ({"target_prompts": ["a dog on a couch", "a dog " * 10]}, r"target prompt 2 .* allows 16"),
        ({"edit": "swap"}, r"unknown edit 'swap'; choose one of replace, refine, reweight"),
        ({"target_prompts": []}, r"at least one target prompt"),
        ({"cross_replace_steps": {"tiger": 0.5}}, r"'tiger', which is not a word of any target prompt"),
        ({"self_replace_steps": 1.5}, r"self_replace_steps must satisfy"),
        ({"blend_words": ["cat", "dog"], "blend_mask_style": "paper"},
         r"blend_mask_style must be one of ours, official .*got 'paper'"),
    ],
)
def test_clear_errors_before_any_unet_call(pipe, unet_calls, settings, message):
    description = {"source_prompt": "a cat on a couch", "target_prompts": ["a dog on a couch"], **settings}
    with pytest.raises(EditError, match=message):
        run_edit(pipe, PromptEdit.from_dict(description), num_steps=STEPS, progress=False)
    assert not unet_calls


def test_prompt_edit_from_dict(pipe):
    data = {
        "source_prompt": "a red circle",
        "target_prompts": "a blue circle",  # one target may be a string
        "cross_replace_steps": {"default_": [0.0, 0.8], "blue": 0.4},  # JSON lists become (start, end) pairs
        "self_replace_steps": [0.1, 0.3],
    }
    edit = PromptEdit.from_dict(data)
    assert edit.target_prompts == ["a blue circle"] and edit.self_replace_steps == (0.1, 0.3)
    assert edit.cross_replace_steps == {"default_": (0.0, 0.8), "blue": 0.4}
    assert PromptEdit.from_dict(json.loads(json.dumps(edit.to_dict()))) == edit
    edit.check(pipe.tokenizer)
    with pytest.raises(EditError, match=r"unknown edit setting\(s\) \['seed'\]"):
        PromptEdit.from_dict({**data, "seed": 3})
    with pytest.raises(EditError, match="an edit needs \\['target_prompts'\\]"):
        PromptEdit.from_dict({"source_prompt": "a cat"})


# -- the shapes-tiny architecture (word-level tokenizer, 16x16 latents) ----------------------------------------


@pytest.fixture(scope="module")
def shapes_pipe():
    from diffusion_lab.models.shapes_tiny import build_untrained_pipeline

    return build_untrained_pipeline(seed=0)


def test_shapes_tiny_word_swap_injects_self_attention_at_every_layer(shapes_pipe):
    source = "a large red circle on a gray background"
    result = edit_generated(shapes_pipe, source, ["a large blue circle on a gray background"], num_steps=2, progress=False)
    assert result.images.shape == (2, 64, 64, 3)
    # 16x16 latents: self-attention maps of every layer (16, 8 and the mid block's 4) are injected
    assert result.controller.self_replace_max_resolution == 16
    assert result.controller.available_resolutions() == [(4, 4), (8, 8), (16, 16)]
    result.controller.set_step(0, 10)  # step 0 of 10 lies in self_replace_steps=0.4
    assert result.controller.self_replace_now(16) and result.controller.self_replace_now(4)
    with pytest.raises(EditError, match="'tiger'.*not in this model's vocabulary"):
        edit_generated(shapes_pipe, source, ["a large tiger on a gray background"], num_steps=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a colour word added: refine, no warning
        edit_generated(shapes_pipe, "a large circle", ["a large red circle"], edit="refine", num_steps=1, progress=False)
