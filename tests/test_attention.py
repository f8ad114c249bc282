"""Prompt-to-Prompt attention control on the tiny random SD pipeline, with a hand-written DDIM loop."""

import pytest
import torch
from diffusers import DDIMScheduler
from diffusers.models.attention_processor import Attention, AttnProcessor, AttnProcessor2_0

from diffusion_lab.attention import (
    AttentionController,
    AttentionRefine,
    AttentionReplace,
    AttentionReweight,
    AttentionStore,
    ControlledAttentionProcessor,
    LocalBlend,
    cross_attention_per_word,
    register_attention_control,
    self_attention_components,
    upsample_map,
)
from diffusion_lab.models.tiny_random import build_tiny_random_pipeline

STEPS = 4



@pytest.fixture(scope="module")
def pipe():
    return build_tiny_random_pipeline(seed=0)


def embed(pipe, prompts):
    tokenizer = pipe.tokenizer
    ids = tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length, return_tensors="pt")
    with torch.no_grad():
        return pipe.text_encoder(ids.input_ids)[0]  # (prompts, tokens, dim)


def sample(pipe, prompts, controller=None, guidance=7.5, steps=STEPS, latent_size=(16, 16), seed=0):
    """A minimal DDIM loop that drives the controller the way the shared sampler must."""
    scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    scheduler.set_timesteps(steps)
    conditional = embed(pipe, prompts)
    unconditional = embed(pipe, [""] * len(prompts))
    noise = torch.randn(1, 4, *latent_size, generator=torch.Generator().manual_seed(seed))
    latents = noise.expand(len(prompts), -1, -1, -1).clone()  # P2P: the same noise for every prompt
    guided = guidance > 1
    if controller is not None:
        controller.set_batch_layout(len(prompts), has_uncond=guided)
    with torch.no_grad():
        for step_index, t in enumerate(scheduler.timesteps):
            if controller is not None:
                controller.set_step(step_index, steps)
            unet_input = torch.cat([latents, latents]) if guided else latents
            text = torch.cat([unconditional, conditional]) if guided else conditional
            prediction = pipe.unet(unet_input, t, encoder_hidden_states=text).sample
            if guided:
                uncond_prediction, cond_prediction = prediction.chunk(2)
                prediction = uncond_prediction + guidance * (cond_prediction - uncond_prediction)
            latents = scheduler.step(prediction, t, latents).prev_sample
            if controller is not None:
                latents = controller.blend_latents(latents, step_index)
    return latents


class Recording:
    """Stands in for a controller (same answers) and keeps (input, output) of its cross-attention calls."""

    def __init__(self, controller, record_self=False):
        self.controller = controller
        self.record_self = record_self
        self.calls = []

    def __getattr__(self, name):
        return getattr(self.controller, name)

    def __call__(self, probabilities, is_cross, place_in_unet, layer_name):
        before = probabilities.clone()
        after = self.controller(probabilities, is_cross, place_in_unet, layer_name)
        if is_cross or self.record_self:
            self.calls.append((self.controller.step_index, layer_name, before, after.clone()))
        return after


# -- processor installation -------------------------------------------------------------------------


def test_register_derives_layers_from_names_and_restores(pipe):
    unet = pipe.unet
    original = unet.attn_processors
    assert all(type(p) is AttnProcessor2_0 for p in original.values())
    store = AttentionStore(num_prompts=1, store_self_attention=False, places=("down", "up"))
    with register_attention_control(unet, store) as control:
        names = [layer.name + ".processor" for layer in control.layers]
        assert names == list(original)
        current = unet.attn_processors
        for layer in control.layers:
            processor = current[layer.name + ".processor"]
            expected_cross = layer.name.endswith("attn2")
            assert layer.is_cross == expected_cross
            assert layer.place_in_unet == layer.name.split("_")[0]  # down_blocks / mid_block / up_blocks
            should_control = expected_cross and layer.place_in_unet in ("down", "up")
            assert layer.controlled == should_control
            if should_control:
                assert isinstance(processor, ControlledAttentionProcessor)
                assert processor.fallback is original[layer.name + ".processor"]
            else:  # not controlled: the very same fast SDPA processor
                assert processor is original[layer.name + ".processor"]
        assert {layer.place_in_unet for layer in control.controlled_layers} == {"down", "up"}
        with pytest.raises(RuntimeError, match="already registered"):
            register_attention_control(unet, AttentionStore(num_prompts=1))
    restored = unet.attn_processors
    assert all(restored[name] is original[name] for name in original)


def test_controller_that_changes_nothing_matches_sdpa(pipe):
    unet = pipe.unet
    sample_in = torch.randn(2, 4, 16, 16, generator=torch.Generator().manual_seed(1))
    text = embed(pipe, ["a cat", "a dog"])
    with torch.no_grad():
        reference = unet(sample_in, 500, encoder_hidden_states=text).sample
        controller = AttentionController(num_prompts=2)
        with register_attention_control(unet, controller):
            controlled = unet(sample_in, 500, encoder_hidden_states=text).sample
    assert torch.allclose(controlled, reference, atol=1e-5)
    assert controller.latent_size == (16, 16) and controller.unet_batch_size == 2


def test_processor_4d_input_group_norm_residual_rescale_and_mask():
    torch.manual_seed(0)
    # an Attention block of the VAE kind: 4-D input, group norm, residual, rescaled output
    attn = Attention(
        query_dim=8, heads=2, dim_head=4, norm_num_groups=4, residual_connection=True,
        rescale_output_factor=2.0, bias=True, _from_deprecated_attn_block=True,
    )
    hidden = torch.randn(2, 8, 3, 5)
    controller = AttentionController(num_prompts=2)
    controller.set_batch_layout(2, has_uncond=False)
    controlled = ControlledAttentionProcessor(controller, "mid", "test", is_cross=False)
    with torch.no_grad():
        assert torch.allclose(controlled(attn, hidden), AttnProcessor()(attn, hidden), atol=1e-6)
    # cross-attention with an attention mask (keys 2 and 3 masked out)
    cross = Attention(query_dim=8, cross_attention_dim=6, heads=2, dim_head=4)
    hidden, text = torch.randn(2, 10, 8), torch.randn(2, 4, 6)
    mask = torch.tensor([[0.0, 0.0, -1e4, -1e4]] * 2)[:, None, :]  # (batch, 1, keys), additive
    controlled = ControlledAttentionProcessor(controller, "mid", "test", is_cross=True)
    with torch.no_grad():
        ours = controlled(cross, hidden, text, attention_mask=mask)
        reference = AttnProcessor()(cross, hidden, text, attention_mask=mask)
        unmasked = AttnProcessor()(cross, hidden, text)
    assert torch.allclose(ours, reference, atol=1e-6)
    assert not torch.allclose(ours, unmasked, atol=1e-3)


# -- AttentionStore --------------------------------------------------------------------------------------


def test_store_shapes_sum_to_one_and_per_step_maps(pipe):
    tokens = pipe.tokenizer.model_max_length
    store = AttentionStore(num_prompts=1, keep_steps_for_resolutions=(8,))
    with register_attention_control(pipe.unet, store):
        sample(pipe, ["a tiger on a couch"], store)
    assert store.available_resolutions() == [(8, 8), (16, 16)]  # derived from the 16x16 latents
    for side in (8, 16):
        maps = store.average_cross_attention(side)
        assert maps.shape == (side, side, tokens)
        assert torch.allclose(maps.sum(-1), torch.ones(side, side), atol=1e-5)
    assert store.average_self_attention(8).shape == (8, 8, 64)
    assert store.average_cross_attention(8, places=("mid",)).shape == (8, 8, tokens)
    # every layer stored once per step: the sums count the UNet calls, not the layers
    assert {layer.calls for layer in store.layers.values()} == {STEPS}
    assert store.kept_steps == list(range(STEPS))
    strip = store.cross_attention_over_steps(8)
    assert strip.shape == (STEPS, 8, 8, tokens)
    assert torch.allclose(strip.mean(0), store.average_cross_attention(8), atol=1e-6)
    with pytest.raises(ValueError, match="keep_steps_for_resolutions"):
        store.attention_at_step(0, 16)
    with pytest.raises(ValueError, match=r"stored sizes: \[\(8, 8\), \(16, 16\)\]"):
        store.average_cross_attention(4)

    words = cross_attention_per_word(store, pipe.tokenizer, "a tiger on a couch", 16, include_special_tokens=True)
    assert [word for word, _ in words] == ["<|startoftext|>", "a", "tiger", "on", "a", "couch", "<|endoftext|>"]
    maps = store.average_cross_attention(16)
    assert torch.allclose(torch.as_tensor(words[2][1]), maps[..., 2] + maps[..., 3])  # ti + ger
    components = self_attention_components(store, 8, n=3)
    assert components.shape == (3, 8, 8)
    assert upsample_map(words[1][1], 32).shape == (32, 32)
    store.reset()
    with pytest.raises(RuntimeError, match="no attention maps were stored"):
        store.average_cross_attention(8)


def test_store_non_square_latents_and_query_budget(pipe):
    store = AttentionStore(num_prompts=1, max_query_positions=64, store_self_attention=False)
    with register_attention_control(pipe.unet, store) as control:
        large = [p for p in pipe.unet.attn_processors.values() if isinstance(p, ControlledAttentionProcessor)]
        fast_calls = []
        for processor in large:
            fallback = processor.fallback
            processor.fallback = lambda *a, _f=fallback, **k: fast_calls.append(1) or _f(*a, **k)
        sample(pipe, ["a cat"], store, guidance=1.0, steps=2, latent_size=(16, 12))
    assert store.available_resolutions() == [(8, 6)]  # (16, 12) maps have 192 > 64 query positions
    assert store.average_cross_attention((8, 6)).shape == (8, 6, 16)
    # the 3 cross-attention layers at 16x12 (down block 0, the two of up block 1) ran the fused path
    assert len(fast_calls) == 3 * 2  # 3 layers x 2 steps
    assert control.removed


def test_store_with_the_diffusers_pipeline_call(pipe):
    store = AttentionStore(num_prompts=1, store_self_attention=False)
    store.set_batch_layout(1, has_uncond=True)  # the pipeline batches [uncond, cond] at guidance > 1
    with register_attention_control(pipe.unet, store):
        pipe("a tiger", num_inference_steps=2, guidance_scale=7.5, output_type="latent")
    assert store.average_cross_attention(8).shape == (8, 8, pipe.tokenizer.model_max_length)
    assert {layer.calls for layer in store.layers.values()} == {2}


def test_store_without_sampling_raises_loudly(pipe):
    store = AttentionStore(num_prompts=1)
    with register_attention_control(pipe.unet, store):
        pass  # the UNet is never called
    with pytest.raises(RuntimeError, match=r"no attention maps were stored.*set_step"):
        store.average_cross_attention(16)


def test_batch_layout_is_checked(pipe):
    store = AttentionStore(num_prompts=2)
    with register_attention_control(pipe.unet, store):
        with pytest.raises(RuntimeError, match=r"batch of 3 .* 2 or 4 rows"):
            with torch.no_grad():
                pipe.unet(torch.randn(3, 4, 8, 8), 10, encoder_hidden_states=embed(pipe, ["a"] * 3))
    unknown = AttentionStore()
    with register_attention_control(pipe.unet, unknown):
        with pytest.raises(RuntimeError, match="set_batch_layout"):
            with torch.no_grad():
                pipe.unet(torch.randn(1, 4, 8, 8), 10, encoder_hidden_states=embed(pipe, ["a"]))


# -- edits ------------------------------------------------------------------------------------------------


def test_replace_with_identical_prompts_reproduces_the_source(pipe):
    prompts = ["a cat on a couch", "a cat on a couch"]
    plain = sample(pipe, prompts[:1])
    controller = AttentionReplace(
        pipe.tokenizer, prompts, cross_replace_steps=1.0, self_replace_steps=1.0, self_replace_max_resolution=16
    )
    with register_attention_control(pipe.unet, controller):
        edited = sample(pipe, prompts, controller)
    assert torch.allclose(edited[1], edited[0], rtol=0, atol=1e-6)
    # explicit softmax vs fused attention and a batch of 2 vs 1: float round-off only (|latents| ~ 20)
    assert torch.allclose(edited[0], plain[0], rtol=1e-5, atol=1e-4)


def test_replace_injects_source_maps_into_target_only(pipe):
    prompts = ["a cat on a couch", "a dog on a couch"]
    plain_source = sample(pipe, prompts[:1])
    plain_target = sample(pipe, prompts[1:])
    controller = AttentionReplace(pipe.tokenizer, prompts, cross_replace_steps=0.5, self_replace_steps=0.0)
    recording = Recording(controller)
    with register_attention_control(pipe.unet, recording) as control:
        assert all(layer.controlled == layer.is_cross for layer in control.layers)  # no self-attention needed
        edited = sample(pipe, prompts, recording)
    assert recording.calls, "the controller saw no cross-attention call"
    for step_index, layer_name, before, after in recording.calls:
        rows = before.view(4, -1, *before.shape[1:])  # (uncond src, uncond tgt, cond src, cond tgt) x heads
        out = after.view(4, -1, *after.shape[1:])
        assert torch.equal(out[:3], rows[:3])  # unconditional rows and the source are never edited
        assert not torch.allclose(rows[3], rows[2], atol=1e-4)  # the target's own maps differ
        if step_index < STEPS // 2:  # cross_replace_steps=0.5: the first half takes the source's maps
            assert torch.equal(out[3], rows[2])
        else:
            assert torch.equal(out[3], rows[3])
    assert torch.allclose(edited[0], plain_source[0], rtol=1e-5, atol=1e-4)  # the source is unchanged
    assert (edited[1] - plain_target[0]).abs().max() > 1e-2  # the target is edited


def test_self_attention_injected_only_at_small_resolutions(pipe):
    prompts = ["a cat on a couch", "a dog on a couch"]
    controller = AttentionReplace(
        pipe.tokenizer, prompts, cross_replace_steps=0.0, self_replace_steps=1.0, self_replace_max_resolution=8
    )
    recording = Recording(controller, record_self=True)
    with register_attention_control(pipe.unet, recording):
        sample(pipe, prompts, recording, steps=2)
    self_calls = [(name, before, after) for _, name, before, after in recording.calls if name.endswith("attn1")]
    assert {before.shape[1] for _, before, _ in self_calls} == {64}  # 16x16 layers ran the fused path
    for _, before, after in self_calls:
        rows, out = before.view(4, -1, 64, 64), after.view(4, -1, 64, 64)
        assert torch.equal(out[:3], rows[:3]) and torch.equal(out[3], rows[2])  # target := source
        assert not torch.allclose(rows[3], rows[2], atol=1e-4)
    # default: P2P's quarter of the latent side, 4x4 here, so no self-attention layer is touched
    default = AttentionReplace(pipe.tokenizer, prompts, cross_replace_steps=0.0, self_replace_steps=1.0)
    recording = Recording(default, record_self=True)
    with register_attention_control(pipe.unet, recording):
        sample(pipe, prompts, recording, steps=1)
    assert not [name for _, name, _, _ in recording.calls if name.endswith("attn1")]


def test_edit_requires_set_step(pipe):
    controller = AttentionReplace(pipe.tokenizer, ["a cat", "a dog"])
    controller.set_batch_layout(2, has_uncond=False)
    with register_attention_control(pipe.unet, controller):
        with pytest.raises(RuntimeError, match=r"controller.set_step\(step_index, num_steps\)"):
            with torch.no_grad():
                pipe.unet(torch.randn(2, 4, 16, 16), 10, encoder_hidden_states=embed(pipe, ["a cat", "a dog"]))


def synthetic_call(controller, generator_seed=0, heads=2, queries=16):
    """Run the controller on random (2 prompts with guidance) probabilities; return per-row views."""
    tokens = controller.tokens
    probabilities = torch.rand(4 * heads, queries, tokens, generator=torch.Generator().manual_seed(generator_seed))
    probabilities = probabilities / probabilities.sum(-1, keepdim=True)
    controller.set_batch_layout(2, has_uncond=True)
    controller.set_step(0, 10)
    out = controller(probabilities.clone(), True, "up", "layer")
    return probabilities.view(4, heads, queries, tokens), out.view(4, heads, queries, tokens)


def test_refine_keeps_new_tokens_and_aligns_the_rest(pipe):
    controller = AttentionRefine(pipe.tokenizer, ["a red circle", "a big red circle"], cross_replace_steps=1.0)
    rows, out = synthetic_call(controller)
    source, target, edited = rows[2], rows[3], out[3]
    assert torch.equal(edited[..., 2], target[..., 2])  # "big" is new: its own map
    for target_column, source_column in [(0, 0), (1, 1), (3, 2), (4, 3), (5, 4)]:
        assert torch.equal(edited[..., target_column], source[..., source_column])
    assert torch.equal(out[:3], rows[:3])


def test_reweight_scales_word_and_chains_with_refine(pipe):
    prompts = ["a red circle", "a big red circle"]
    refine = AttentionRefine(pipe.tokenizer, prompts, cross_replace_steps=1.0)
    reweight = AttentionReweight(pipe.tokenizer, prompts, {"red": 3.0}, cross_replace_steps=1.0, previous=refine)
    rows, out = synthetic_call(reweight)
    source, target, edited = rows[2], rows[3], out[3]
    assert torch.allclose(edited[..., 3], 3.0 * source[..., 2])  # "red", aligned then scaled
    assert torch.allclose(edited[..., 2], target[..., 2])  # "big": own map, scale 1
    alone = AttentionReweight(pipe.tokenizer, ["a big cat", "a big cat"], {"big": 0.0}, cross_replace_steps=1.0)
    rows, out = synthetic_call(alone)
    assert torch.equal(out[3][..., 2], torch.zeros_like(out[3][..., 2]))
    assert torch.equal(out[3][..., 3], rows[2][..., 3])
    with pytest.raises(ValueError, match="'tiger' is not a word of the prompt 'a big cat'"):
        AttentionReweight(pipe.tokenizer, ["a big cat", "a big cat"], {"tiger": 2.0})


def test_cross_replace_steps_per_word_and_pairs(pipe):
    controller = AttentionReplace(
        pipe.tokenizer,
        ["a cat on a couch", "a dog on a couch"],
        cross_replace_steps={"default_": 0.8, "dog": (0.2, 0.4)},
    )
    controller.set_step(0, 10)
    alpha = controller.cross_replace_alpha()[0]
    assert alpha[2] == 0 and alpha[1] == 1 and alpha[5] == 1  # "dog" starts later
    controller.set_step(3, 10)
    assert controller.cross_replace_alpha()[0, 2] == 1
    controller.set_step(8, 10)
    assert controller.cross_replace_alpha().sum() == 0
    with pytest.raises(ValueError, match="'tiger'.* not a word of any target prompt"):
        AttentionReplace(pipe.tokenizer, ["a cat", "a dog"], cross_replace_steps={"tiger": 0.5})
    with pytest.raises(ValueError, match="Use AttentionRefine"):
        AttentionReplace(pipe.tokenizer, ["a cat", "a tiger"])


def test_local_blend_mask_and_blend(pipe):
    prompts = ["a cat on a couch", "a dog on a couch"]
    blend = LocalBlend(pipe.tokenizer, prompts, words=(("cat",), ("dog",)), threshold=0.5, start_blend=0.5, dilation=0,
                       mask_style="ours")
    controller = AttentionReplace(pipe.tokenizer, prompts, local_blend=blend)
    heads, tokens = 2, controller.tokens
    probabilities = torch.full((4, heads, 16, tokens), 1.0 / tokens)  # 4x4 maps, uniform
    cat_grid, dog_grid = torch.zeros(4, 4), torch.zeros(4, 4)
    cat_grid[:2, :2] = 1.0  # the source's "cat" attends to the top-left corner
    dog_grid[:2, 3] = 1.0  # the target's "dog" to the right of the top rows
    probabilities[2, :, :, 2] += cat_grid.flatten()
    probabilities[3, :, :, 2] += dog_grid.flatten()
    controller.set_batch_layout(2, has_uncond=True)
    controller.set_step(6, 10)
    controller.observe_unet_input(torch.zeros(4, 4, 8, 8))
    controller(probabilities.view(4 * heads, 16, tokens), True, "up", "layer")
    latents = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    mask = blend.mask(controller, (8, 8))
    assert mask.shape == (2, 1, 8, 8)
    assert mask[0, 0, :3, :3].all() and not mask[0, 0, 5:, :].any() and not mask[0, 0, :, 6:].any()
    assert mask[1, 0, :3, 6:].all() and not mask[1, 0, 5:, :].any() and not mask[1, 0, :, :4].any()
    blended = controller.blend_latents(latents, step_index=6)
    inside = mask[0, 0] | mask[1, 0]  # the union of the source's and the target's regions
    assert torch.equal(blended[0], latents[0])  # the source is never changed
    assert torch.equal(blended[1][:, inside], latents[1][:, inside])  # the edit inside the mask
    assert torch.equal(blended[1][:, ~inside], latents[0][:, ~inside])  # the source outside
    assert torch.equal(controller.blend_latents(latents, step_index=4), latents)  # before start_blend
    with pytest.raises(ValueError, match="'tiger' is not a word of the prompt 'a dog on a couch'"):
        LocalBlend(pipe.tokenizer, prompts, words=("cat", "tiger"))
    with pytest.raises(ValueError, match="one entry of words per prompt"):
        LocalBlend(pipe.tokenizer, prompts, words=("cat",))


def test_local_blend_in_the_loop_keeps_source_outside_the_mask(pipe):
    prompts = ["a cat on a couch", "a dog on a couch"]
    blend = LocalBlend(pipe.tokenizer, prompts, words=("cat", "dog"), threshold=0.9, start_blend=0.0, dilation=0,
                       mask_style="ours")
    controller = AttentionReplace(pipe.tokenizer, prompts, local_blend=blend)
    with register_attention_control(pipe.unet, controller):
        edited = sample(pipe, prompts, controller)
    mask = blend.mask(controller, (16, 16))[1, 0] | blend.mask(controller, (16, 16))[0, 0]
    assert mask.any() and not mask.all()
    assert torch.equal(edited[1][:, ~mask], edited[0][:, ~mask])


def test_local_blend_official_mask_is_the_p2p_repository_mask(pipe):
    """mask_style="official": the P2P repository's LocalBlend (maps of the chosen side averaged, max-pooled 3x3 on
    the map, nearest-upsampled, normalised, thresholded), against the same steps written out here; it is larger than
    ours (bilinear, dilated in latent pixels) when the maps are coarser than the latents."""
    import torch.nn.functional as F

    prompts = ["a cat on a couch", "a dog on a couch"]
    official = LocalBlend(pipe.tokenizer, prompts, words=(("cat",), ("dog",)), threshold=0.5, mask_style="official",
                          resolutions=(4,))
    ours = LocalBlend(pipe.tokenizer, prompts, words=(("cat",), ("dog",)), threshold=0.5, dilation=1, mask_style="ours")
    controller = AttentionReplace(pipe.tokenizer, prompts, local_blend=official)
    heads, tokens = 2, controller.tokens
    probabilities = torch.full((4, heads, 16, tokens), 1.0 / tokens)  # 4x4 maps, uniform
    cat_grid, dog_grid = torch.zeros(4, 4), torch.zeros(4, 4)
    cat_grid[:2, :2] = 1.0
    dog_grid[:2, 3] = 1.0
    probabilities[2, :, :, 2] += cat_grid.flatten()
    probabilities[3, :, :, 2] += dog_grid.flatten()
    controller.set_batch_layout(2, has_uncond=True)
    controller.set_step(6, 10)
    controller.observe_unet_input(torch.zeros(4, 4, 8, 8))
    controller(probabilities.view(4 * heads, 16, tokens), True, "up", "layer")
    mask = official.mask(controller, (8, 8))
    word_maps = torch.stack([(1.0 / tokens + cat_grid), (1.0 / tokens + dog_grid)])[:, None]  # (2, 1, 4, 4)
    expected = F.interpolate(F.max_pool2d(word_maps, 3, 1, 1), size=(8, 8), mode="nearest")
    expected = expected / expected.amax(dim=(2, 3), keepdim=True) > 0.5
    assert torch.equal(mask, expected)
    assert mask[0, 0, :6, :6].all() and not mask[0, 0, 6:].any() and not mask[0, 0, :, 6:].any()
    assert mask[1, 0, :6, 4:].all() and not mask[1, 0, :, :4].any()
    assert mask.sum() > ours.mask(controller, (8, 8)).sum()
    with pytest.raises(ValueError, match="mask_style must be one of ours, official"):
        LocalBlend(pipe.tokenizer, prompts, words=("cat", "dog"), mask_style="paper")
    default_official = LocalBlend(pipe.tokenizer, prompts, words=("cat", "dog"), mask_style="official")
    assert default_official.resolutions == (16,)
    with pytest.raises(ValueError, match="no stored cross-attention maps of sides"):
        default_official.mask(controller, (8, 8))
