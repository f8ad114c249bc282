"""The token grounding loss used to train shapes-tiny's cross-attention (TokenCompose-style)."""

import json
import math

import numpy as np
import pytest
import torch

from diffusion_lab.shapes import BACKGROUND_OWNER, caption, random_scene, render, word_owners
from diffusion_lab.training import (
    BACKGROUND_WORD,
    OBJECT_WORD,
    POSITION_WORD,
    CrossAttentionRecorder,
    grounding_loss,
    object_coverage,
    word_regions,
)


def test_word_owners_follow_the_grammar():
    text = "a large red circle and a star on a white background"
    assert word_owners(text) == [None, 0, 0, 0, None, None, 1, None, None, BACKGROUND_OWNER, None]
    assert word_owners("a red shape on a navy background") == [None, 0, 0, None, None, BACKGROUND_OWNER, None]
    assert word_owners("") == []
    with pytest.raises(ValueError, match="not in the shapes vocabulary"):
        word_owners("a red banana")


def test_object_coverage_matches_the_render_masks():
    scene = random_scene(3, num_objects=2)
    coverage = object_coverage([scene], latent_size=16)  # (1, MAX_OBJECTS, 16, 16)
    masks = render(scene, 64).masks
    for j, mask in enumerate(masks):
        assert math.isclose(float(coverage[0, j].float().sum()) * 16, mask.sum(), rel_tol=1e-2)
    assert float(coverage[0, len(masks) :].abs().sum()) == 0


def test_word_regions_put_each_word_on_its_object():
    scene = random_scene(5, num_objects=2)
    coverage = object_coverage([scene])
    prompt = f"a {scene.objects[0].colour} {scene.objects[0].shape} and a {scene.objects[1].shape} on a {scene.background} background"
    regions, kinds = word_regions([prompt], coverage, num_tokens=16)
    # tokens: bos a colour shape and a shape on a bg background eos
    assert kinds[0].tolist()[:11] == [0, 0, 1, 1, 0, 0, 1, 0, 0, 2, 0]
    assert torch.equal(regions[0, 2], coverage[0, 0].float()) and torch.equal(regions[0, 6], coverage[0, 1].float())
    assert torch.allclose(regions[0, 9], 1 - coverage[0].float().sum(0))
    empty_regions, empty_kinds = word_regions([""], coverage, num_tokens=16)
    assert not empty_kinds.any()


def test_word_regions_supervise_only_timesteps_below_the_limit():
    scenes = [random_scene(seed, num_objects=1) for seed in (1, 2, 3)]
    prompts = [f"a {s.objects[0].colour} {s.objects[0].shape} on a {s.background} background" for s in scenes]
    coverage = object_coverage(scenes)
    _, every_level = word_regions(prompts, coverage, num_tokens=12)
    _, kinds = word_regions(prompts, coverage, num_tokens=12, timesteps=torch.tensor([10, 600, 599]), max_timestep=600)
    assert every_level.any(dim=1).all()
    assert torch.equal(kinds[0], every_level[0]) and torch.equal(kinds[2], every_level[2])
    assert not kinds[1].any()  # t = 600 >= the limit: no word of that row is grounded


def _maps(per_word: torch.Tensor, heads: int = 2) -> torch.Tensor:
    """(B, tokens, HW) per-word maps -> (B, heads, HW, tokens) probabilities as a layer would store them."""
    return per_word.transpose(1, 2)[:, None].expand(-1, heads, -1, -1)


def test_grounding_loss_is_zero_on_the_region_and_known_for_a_uniform_map():
    regions = torch.zeros(1, 3, 16, 16)
    regions[0, 1, :8, :8] = 1.0  # an object in the top-left quarter
    regions[0, 2] = 1 - regions[0, 1]  # the background word
    kinds = torch.tensor([[0, OBJECT_WORD, BACKGROUND_WORD]])
    inside = torch.zeros(1, 3, 256)
    inside[0, 1] = regions[0, 1].flatten() / regions[0, 1].sum()
    inside[0, 2] = regions[0, 2].flatten() / regions[0, 2].sum()
    inside[0, 0] = 1 / 256
    for side in (16, 8, 4):  # the same scene at every layer size
        pooled = torch.nn.functional.avg_pool2d(inside.reshape(1, 3, 16, 16), 16 // side).flatten(2)
        maps = [_maps(pooled * (256 / side**2))]
        assert float(grounding_loss(maps, regions, kinds)) < 1e-10
    uniform = [_maps(torch.full((1, 3, 256), 1 / 256))]
    # a uniform map has a quarter of its mass on the object and three quarters on the background
    expected = ((1 - 0.25) ** 2 + (1 - 0.75) ** 2) / 2
    assert math.isclose(float(grounding_loss(uniform, regions, kinds)), expected, rel_tol=1e-5)


def test_grounding_loss_without_supervised_words_is_zero_but_keeps_the_graph():
    maps = [torch.rand(2, 2, 64, 5, requires_grad=True)]
    loss = grounding_loss(maps, torch.zeros(2, 5, 16, 16), torch.zeros(2, 5, dtype=torch.long))
    loss.backward()
    assert float(loss.detach()) == 0 and maps[0].grad is not None


def test_recorder_gives_cross_attention_maps_with_gradients():
    from diffusion_lab.attention import register_attention_control
    from diffusion_lab.models.shapes_tiny import build_untrained_pipeline
    from diffusion_lab.training import tokenize

    pipe = build_untrained_pipeline(seed=0)
    scenes = [random_scene(i, num_objects=1) for i in range(2)]
    from diffusion_lab.shapes import caption

    prompts = [caption(s) for s in scenes]
    text = pipe.text_encoder(tokenize(pipe.tokenizer, prompts))[0]
    recorder = CrossAttentionRecorder(batch_size=2)
    with register_attention_control(pipe.unet, recorder) as control:
        pipe.unet(torch.randn(2, 4, 16, 16), torch.tensor([10, 500]), encoder_hidden_states=text)
    cross_layers = [layer for layer in control.layers if layer.is_cross]
    assert len(recorder.maps) == len(cross_layers) and all(layer.controlled == layer.is_cross for layer in control.layers)
    assert {m.shape[2] for m in recorder.maps} == {256, 64, 16}  # 16x16, 8x8 and the 4x4 middle
    assert all(torch.allclose(m.sum(-1), torch.ones(())) for m in recorder.maps)
    regions, kinds = word_regions(prompts, object_coverage(scenes), text.shape[1])
    loss = grounding_loss(recorder.maps, regions, kinds)
    loss.backward()
    assert 0 < float(loss.detach()) < 1
    assert pipe.unet.down_blocks[0].attentions[0].transformer_blocks[0].attn2.to_q.weight.grad is not None


def test_training_with_grounding_logs_the_loss(tmp_path):
    from diffusion_lab.models.shapes_tiny import build_untrained_pipeline
    from diffusion_lab.training import train_unet, train_vae
    from test_models import tiny_training_settings

    settings = tiny_training_settings(tmp_path, grounding_weight=0.01, eval_every=0, export_dir=None, unet_steps=2)
    pipe = build_untrained_pipeline(seed=0)
    train_vae(pipe, settings)
    train_unet(pipe, settings)
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    unet_records = [r for r in log if r["stage"] == "unet"]
    assert unet_records and all(0 <= r["grounding_loss"] <= 1 for r in unet_records)
    assert (tmp_path / "run" / "coverage_16_0.safetensors").exists()


def test_position_words_belong_to_their_object():
    text = "a red circle at the top left and a star in the center on a white background"
    owners = word_owners(text)
    words = text.split()
    assert [owners[i] for i, w in enumerate(words) if w in ("top", "left")] == [0, 0]
    assert owners[words.index("center")] == 1
    assert [owners[i] for i, w in enumerate(words) if w in ("at", "the", "in")] == [None] * 4


def test_position_words_are_grounded_on_their_object_as_a_kind_of_their_own():
    """Position words supervise their object's region like its attributes, with a kind of their own, so training can
    weigh them apart (position_grounding_weight); one call over all kinds gives the loss of before."""
    scene = random_scene(3, num_objects=2)
    text = caption(scene, include_position=True)
    coverage = object_coverage([scene])
    regions, kinds = word_regions([text], coverage, 32)
    words = text.split()
    for i, word in enumerate(words):
        owner = word_owners(text)[i]
        expected = (POSITION_WORD if word in ("top", "bottom", "left", "right", "center") else
                    BACKGROUND_WORD if owner == BACKGROUND_OWNER else OBJECT_WORD if owner is not None else 0)
        assert int(kinds[0, i + 1]) == expected, word
        if expected in (OBJECT_WORD, POSITION_WORD):
            assert torch.equal(regions[0, i + 1], coverage[0, owner].float())
    assert (kinds == POSITION_WORD).any() and (kinds == OBJECT_WORD).any()
    # maps that put every position word's attention on its object and the other words' uniformly
    side = 16
    attention = torch.full((1, 2, side * side, 32), 1.0 / (side * side))
    for i in torch.nonzero(kinds[0] == POSITION_WORD).flatten().tolist():
        inside = regions[0, i].flatten() > 0
        attention[0, :, :, i] = inside.float() / inside.sum()
    maps = [attention]
    is_position = kinds == POSITION_WORD
    assert float(grounding_loss(maps, regions, kinds * is_position)) < 1e-10
    others = float(grounding_loss(maps, regions, kinds.masked_fill(is_position, 0)))
    together = float(grounding_loss(maps, regions, kinds))
    supervised = int((kinds > 0).sum())
    assert others > 0.1
    assert math.isclose(together, others * int((kinds > 0).sum() - is_position.sum()) / supervised, rel_tol=1e-5)


def test_training_with_a_position_grounding_weight_logs_both_terms(tmp_path):
    from diffusion_lab.models.shapes_tiny import build_untrained_pipeline
    from diffusion_lab.training import train_unet, train_vae
    from test_models import tiny_training_settings

    settings = tiny_training_settings(tmp_path, grounding_weight=0.0, position_grounding_weight=0.3, eval_every=0,
                                      export_dir=None, unet_steps=2, position_caption_rate=1.0, caption_dropout=0.0)
    pipe = build_untrained_pipeline(seed=0)
    train_vae(pipe, settings)
    train_unet(pipe, settings)  # grounding_weight 0 with a position weight: the batches still carry the regions
    log = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    unet_records = [r for r in log if r["stage"] == "unet"]
    assert unet_records and all(0 < r["position_grounding_loss"] <= 1 and 0 <= r["grounding_loss"] <= 1
                                for r in unet_records)


def test_training_captions_name_positions_at_the_given_rate():
    import numpy as np

    from diffusion_lab.shapes import parse_caption
    from diffusion_lab.training import training_captions

    scenes = [random_scene(i, num_objects=1 + i % 3) for i in range(300)]
    without = training_captions(scenes, np.random.default_rng(0), position_rate=0.0)
    assert not any(" at the " in c or " in the center" in c for c in without)
    with_positions = training_captions(scenes, np.random.default_rng(0), drop_attribute=0.0, drop_caption=0.0, position_rate=0.5)
    named = [(c, s) for c, s in zip(with_positions, scenes) if " at the " in c or " in the center" in c]
    two_or_fewer = sum(len(s.objects) <= 2 for s in scenes)
    assert 0.35 * two_or_fewer < len(named) < 0.65 * two_or_fewer
    assert all(len(s.objects) <= 2 for _, s in named)  # three objects with positions would pass 32 tokens
    for text, scene in named:  # the named cells are the objects' own
        assert [o.position for o in parse_caption(text).objects] == [o.position for o in scene.objects]
