"""Prompt-to-Prompt's fast paths keep its outputs: the traced controlled UNet (runtime/traced_unet.py) and the
recorded source branch of repeated edits (attention/source_branch.py) against the outputs of the code before them
(tests/data/p2p_reference.npz, made by tests/p2p_reference_cases.py), and the cache's key and memory bound."""

import os
from pathlib import Path

import numpy as np
import pytest
import torch

from diffusion_lab.attention import AttentionStore, SourceBranchCache, register_attention_control, source_branch_bytes
from diffusion_lab.editing import edit_generated
from diffusion_lab.models.tiny_random import build_tiny_random_pipeline
from diffusion_lab.runtime import forget_traces, traced_unet
from diffusion_lab.runtime.traced_unet import _traces, unet_sample

REFERENCE = Path(__file__).parent / "data" / "p2p_reference.npz"


@pytest.fixture(scope="module")
def shapes_tiny():
    from diffusion_lab import load_pipeline

    return load_pipeline("shapes-tiny", device="cpu")


@pytest.fixture(scope="module")
def tiny():
    return build_tiny_random_pipeline(seed=0)


def _largest_difference(images: dict, reference) -> dict:
    return {name: int(np.abs(images[name].astype(int) - reference[name]).max()) for name in reference.files}


def test_fresh_and_replayed_edits_keep_the_reference_outputs(shapes_tiny):
    """Replace, local blend, refine, reweight (generated) and replace, local blend of a null-text inversion (real):
    fresh edits that record their source, then the same edits replayed from the recordings (only the target rows
    run), within 1/255 of the outputs before either existed."""
    from p2p_reference_cases import real_inversion, run_all

    reference = np.load(REFERENCE)
    cache = SourceBranchCache(max_entries=8)
    real = real_inversion(shapes_tiny)
    with torch.no_grad():
        recorded = run_all(shapes_tiny, real, source_cache=cache)  # fresh edits (three generated ones share a source)
        hits = cache.hits
        replayed = run_all(shapes_tiny, real, source_cache=cache)
    assert cache.hits - hits == len(reference.files)  # every case of the last round replayed its source
    for images in (recorded, replayed):
        assert max(_largest_difference(images, reference).values()) <= 1, _largest_difference(images, reference)


def test_traced_controlled_calls_keep_the_reference_outputs(shapes_tiny, monkeypatch):
    """The word swap and its local blend through traced controlled UNet calls, fresh and replayed."""
    from p2p_reference_cases import GENERATED, SEED, STEPS

    from diffusion_lab.editing import PromptEdit, run_edit

    reference = np.load(REFERENCE)
    monkeypatch.setattr(traced_unet, "CALLS_BEFORE_TRACING", 0)  # trace every controlled call at once
    forget_traces(shapes_tiny.unet)
    cache = SourceBranchCache()
    images = {}
    try:
        with torch.no_grad():
            for name in ("replace", "local_blend", "replace"):  # fresh, then two replayed from the recording
                images[name] = run_edit(shapes_tiny, PromptEdit.from_dict(GENERATED[name]), seed=SEED,
                                        num_steps=STEPS, progress=False, source_cache=cache).images
                difference = int(np.abs(images[name].astype(int) - reference[name]).max())
                assert difference <= 1, (name, difference)
            graphs = len(_traces(shapes_tiny.unet).graphs)
    finally:
        forget_traces(shapes_tiny.unet)
    assert graphs > 0 and cache.hits == 2


def test_the_stated_memory_of_a_recording_is_what_it_holds(shapes_tiny):
    cache = SourceBranchCache()
    with torch.no_grad():
        edit_generated(shapes_tiny, "a large red circle on a gray background", ["a large blue circle on a gray background"],
                       num_steps=10, progress=False, source_cache=cache)
    (recording,) = cache.entries.values()
    layers = [(module.heads, 16 // 2 ** name.startswith(("down_blocks.1", "up_blocks.1")) // 4 ** name.startswith("mid"),
               name.endswith("attn2")) for name, module in shapes_tiny.unet.named_modules() if name.endswith(("attn1", "attn2"))]
    assert recording.nbytes == source_branch_bytes(10, layers, 32, (1, 4, 16, 16))


def _edit(pipe, cache, **changes):
    settings = {"source_prompt": "a red circle", "target_prompts": ["a blue circle"], "num_steps": 3, "seed": 1,
                "progress": False, "source_cache": cache, **changes}
    return edit_generated(pipe, settings.pop("source_prompt"), settings.pop("target_prompts"), **settings)


def test_any_change_of_the_key_is_a_fresh_edit_and_other_targets_replay(tiny):
    cache = SourceBranchCache(max_entries=16)
    with torch.no_grad():
        fresh = _edit(tiny, cache)
        assert (cache.hits, cache.misses) == (0, 1)
        again = _edit(tiny, cache, target_prompts=["a green circle"])
        assert (cache.hits, cache.misses) == (1, 1)
        for changes in (dict(seed=2), dict(guidance_scale=3.0), dict(negative_prompt="blurry"), dict(num_steps=4),
                        dict(source_prompt="a red square", target_prompts=["a blue square"]),
                        dict(cross_replace_steps=0.5), dict(self_replace_steps=0.2)):
            misses = cache.misses
            _edit(tiny, cache, **changes)
            assert cache.misses == misses + 1, changes
        hits = cache.hits
        with_plain = _edit(tiny, cache, target_prompts=["a green circle"])
        assert cache.hits == hits + 1
        tiny.unet.conv_out.bias.add_(0.5)  # changed weights: a miss
        try:
            misses = cache.misses
            _edit(tiny, cache)
            assert cache.misses == misses + 1
        finally:
            tiny.unet.conv_out.bias.sub_(0.5)
    torch.testing.assert_close(again.latents[0], fresh.latents[0], atol=0, rtol=0)  # the recorded source row
    torch.testing.assert_close(with_plain.latents, again.latents, atol=1e-5, rtol=0)


def test_a_recording_over_the_budget_is_dropped_and_the_edit_is_unchanged(tiny):
    small = SourceBranchCache(max_bytes=10_000)
    with torch.no_grad():
        plain = _edit(tiny, False)
        over = _edit(tiny, small)
        again = _edit(tiny, small)
    assert not small.entries and small.hits == 0 and small.nbytes == 0
    assert torch.equal(plain.latents, over.latents) and torch.equal(plain.latents, again.latents)
    with pytest.raises(ValueError, match="DIFFUSION_LAB_SOURCE_CACHE_MB"):
        import os

        os.environ["DIFFUSION_LAB_SOURCE_CACHE_MB"] = "lots"
        try:
            SourceBranchCache()
        finally:
            del os.environ["DIFFUSION_LAB_SOURCE_CACHE_MB"]


def test_a_traced_controlled_call_gives_the_eager_output_and_maps(tiny, monkeypatch):
    unet = tiny.unet.eval()
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 16, 16, generator=generator)
    text = torch.randn(2, 7, unet.config.cross_attention_dim, generator=generator)
    runs = {}
    for mode in ("0", "1"):
        monkeypatch.setenv("DIFFUSION_LAB_TRACED_UNET", mode)
        monkeypatch.setattr(traced_unet, "CALLS_BEFORE_TRACING", 0)
        forget_traces(unet)
        store = AttentionStore(num_prompts=2, store_self_attention=True)
        store.set_batch_layout(2, has_uncond=False)
        outputs = []
        with register_attention_control(unet, store), torch.no_grad():
            for step in range(3):
                store.set_step(step, 3)
                outputs.append(unet_sample(unet, x, 500 - 100 * step, text))
        runs[mode] = (torch.stack(outputs), store, len(_traces(unet).graphs))
    forget_traces(unet)
    (eager, eager_store, _), (traced, traced_store, graphs) = runs["0"], runs["1"]
    assert graphs == 1  # one graph served all three steps
    torch.testing.assert_close(traced, eager, atol=1e-5, rtol=0)
    assert eager_store.sums.keys() == traced_store.sums.keys() and eager_store.sums
    for name in eager_store.sums:
        torch.testing.assert_close(traced_store.sums[name], eager_store.sums[name], atol=1e-5, rtol=0)
        assert traced_store.layers[name].calls == eager_store.layers[name].calls == 3


def test_bench_speed_p2p_measures_before_and_after_with_the_ratios(tiny, import_script, monkeypatch):
    bench = import_script("pipelines/bench_speed.py")
    monkeypatch.setattr(bench, "CALLS_BEFORE_TRACING", 2)  # warm-up length only
    for name, default in (("DIFFUSION_LAB_TRACED_UNET", "1"), ("DIFFUSION_LAB_CPU_CONVOLUTIONS", "auto")):
        monkeypatch.setenv(name, os.environ.get(name, default))  # the bench sets them: restored after the test
    monkeypatch.setattr("diffusion_lab.shapes.caption", lambda scene: "a red circle")  # the tiny tokenizer: 16 tokens
    results = bench.time_p2p(tiny, rounds=1, steps=2, guidance=5.0, null_text=True)
    assert set(results) == {"plain sample, before", "fresh edit, before", "repeated edit, before",
                            "plain sample, after", "fresh edit, after", "repeated edit, after",
                            "null-text inversion, before", "null-text inversion, after"}
    assert all(len(values) == 1 and values[0][0] > 0 and values[0][1] > 0 for values in results.values())
    lines = bench.p2p_table(results, "tiny", 2, 5.0, 1)
    assert any(line.startswith("after: fresh edit / (2 x sample) = ") and "repeated edit / sample = " in line
               for line in lines)
    assert any(line.startswith("null-text inversion, paper's loop before / default after = ") for line in lines)
    assert os.environ["DIFFUSION_LAB_TRACED_UNET"] == "1" and os.environ["DIFFUSION_LAB_CPU_CONVOLUTIONS"] == "auto"


def test_bench_panel_presses_run_in_a_real_kernel_and_replays_what_it_can(import_script):
    """The panel benchmark in a kernel (4 steps): a second press on the same source replays it (the edit and its
    comparison without control: 2 sources), the real image is inverted at its first press only."""
    bench = import_script("pipelines/bench_panel.py")
    results, ready = bench.measure(rounds=1, threads=1, compare=True, steps=4, warm_ups=0)
    assert ready.split()[1] == "4"
    assert [values[0]["source_replayed"] for values in results.values()] == [0, 0, 0, 2, 2]
    assert [values[0]["inverted"] for values in results.values()] == [1, 0, 0, 0, 0]
    assert all(values[0]["cpu_s"] > 0 and values[0]["round_trip_s"] >= values[0]["panel_s"] > 0
               for values in results.values())
    lines = bench.table(results, ready, 1, 1, True)
    assert lines[-1].startswith("| real image, another word |") and len(lines) == 4 + len(results)
