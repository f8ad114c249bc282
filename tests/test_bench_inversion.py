"""pipelines/bench_inversion.py: it runs end to end at tiny size, and names the scenes a mean would hide."""

import json

import numpy as np
import pytest



@pytest.fixture(scope="module")
def bench(import_script):
    return import_script("pipelines/bench_inversion.py")


def test_scenes_far_below_their_own_round_trip_are_named_worst_first(bench):
    ceiling = {"psnr": {"per_image": [30.0, 30.0, 28.0, 31.0]}}
    results = [{"method": "ddim", "steps": 50, "guidance": 1.0, "psnr": {"per_image": [29.5, 18.0, 27.0, 21.0]}},
               {"method": "direct", "steps": 50, "guidance": 7.5, "psnr": {"per_image": [30.0, 30.0, 28.0, 31.0]}}]
    lines = bench.images_far_below_their_round_trip(results, ceiling, [10, 11, 12, 13])
    assert lines[1] == "- ddim, S=50, w=1: 2 of 4, worst first: 11 (12.0 dB), 13 (10.0 dB)"
    assert len(lines) == 2  # direct misses nothing; scene 12 is 1 dB below its own ceiling, not 3
    assert bench.images_far_below_their_round_trip(results[1:], ceiling, [10, 11, 12, 13])[0].startswith("No image")


def test_quick_run_writes_the_table_and_psnr_per_image(bench, tmp_path):
    text = bench.main(["--quick", "--methods", "ddim", "direct", "edit_friendly", "--threads", "1",
                       "--out", str(tmp_path)])
    results = json.loads((tmp_path / "results.json").read_text())
    assert results["scene_seeds"] == [bench.HELD_OUT_SEED, bench.HELD_OUT_SEED + 1]
    for row in [results["ceiling"]] + results["cells"]:
        per_image = row["psnr"]["per_image"]
        assert len(per_image) == 2 and np.mean(per_image) == pytest.approx(row["psnr"]["mean"], abs=1e-3)
    assert "[PASS] edit-friendly reconstruction = VAE ceiling" in text
    assert (tmp_path / "results.md").read_text() == text and (tmp_path / "psnr.png").exists()


def test_null_text_comparison_states_the_ratio_and_the_worst_per_image_gap(bench):
    """--null-text-compare's report: CPU-time ratios paper / default, and PASS only if EVERY image's gap with the
    default is within the tolerance of its gap with the paper's loop (a mean would hide one worse image)."""
    def row(scene, loop, cpu, gap):
        return {"round": 0, "scene": scene, "loop": loop, "cpu_s": cpu, "wall_s": cpu, "forwards_with_autograd": 1,
                "backward": 1, "forwards": 1, "psnr": 30.0 - gap, "gap": gap}

    rows = [row(0, "paper, before", 12.0, 0.30), row(0, "paper", 9.0, 0.30), row(0, "default", 4.0, 0.10),
            row(1, "paper, before", 9.0, 0.05), row(1, "paper", 7.0, 0.05), row(1, "default", 3.0, 0.09)]
    text = bench.null_text_comparison_report(rows, "header", 0.05)
    assert "paper, before / default, CPU time: 3.00 overall, per image 3.00 to 3.00" in text
    assert "paper / default, CPU time: 2.29 overall" in text
    assert "[PASS] per image, gap(default) <= gap(paper) + 0.05 dB: worst difference +0.040 dB (scene 1)" in text
    assert "[FAIL]" in bench.null_text_comparison_report(rows, "header", 0.03)


def test_null_text_variant_scales_the_default_thresholds_and_leaves_the_defaults_alone(bench):
    """--null-text-threshold-scale / --final-threshold-scale / --final-fraction: a variant of the default loop for
    the compare, every step's threshold scaled; no flag, no variant; out-of-range values refused."""
    from diffusion_lab.inversion import NullTextSettings

    defaults = NullTextSettings()
    assert bench.default_loop_variant() is None
    variant = bench.default_loop_variant(1.5, 1 / 6)
    for step in range(45):  # before the final 10% of S = 50: 1.5x the default's threshold
        assert variant.threshold(step, 50) == pytest.approx(1.5 * defaults.threshold(step, 50))
    unscaled = defaults.early_stop_epsilon + defaults.early_stop_growth * 49 / 50
    assert variant.threshold(49, 50) == pytest.approx(1.5 * unscaled / 6)  # the final scale replaced, not multiplied
    assert variant.inner_steps == defaults.inner_steps and variant.check_first
    assert bench.default_loop_variant(final_fraction=0.2).final_fraction == 0.2
    assert NullTextSettings() == defaults  # the defaults themselves untouched
    for bad in ({"threshold_scale": 0.0}, {"final_threshold_scale": -1.0}, {"final_fraction": 1.5}):
        with pytest.raises(ValueError, match="must be"):
            bench.default_loop_variant(**bad)
