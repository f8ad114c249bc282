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


def test_paper_sensitivity_checks_each_image_against_the_papers_own_spread(bench):
    """--paper-sensitivity: the paper's gap at learning rate x0.99 and x1.01 beside x1; an image passes when the
    default's gap is at most the largest of the three, and the report states the spread and the paired difference."""
    def row(scene, loop, gap, round_index=0):
        return {"round": round_index, "scene": scene, "loop": loop, "cpu_s": 1.0, "wall_s": 1.0,
                "forwards_with_autograd": 1, "backward": 1, "forwards": 1, "psnr": 30.0 - gap, "gap": gap}

    gaps = {0: (0.20, 0.25, 0.10, 0.22), 1: (0.05, 0.02, 0.08, 0.07)}  # paper, x0.99, x1.01, default
    rows = [row(s, loop, g) for s, values in gaps.items()
            for loop, g in zip(("paper, before", "paper, lr x0.99", "paper, lr x1.01", "default"), values)]
    rows += [row(s, "paper", gaps[s][0]) for s in gaps] + [row(0, "default", 9.0, round_index=1)]  # round 2 ignored
    lines = bench.paper_sensitivity_report(rows, (0.99, 1.01))
    assert "its gap moves by 0.040 dB (median), at most 0.100 dB, and is larger than at x1 in 2 of 4" in lines[0]
    assert "mean +0.020 dB" in lines[1] and "larger on 2 of 2 images, by at most +0.020 dB" in lines[1]
    assert lines[2].startswith("[PASS]") and "worst -0.010 dB (scene 1), above it on 0 of 2" in lines[2]
    rows = [dict(r, gap=0.30) if (r["scene"], r["loop"], r["round"]) == (0, "default", 0) else r for r in rows]
    failed = bench.paper_sensitivity_report(rows, (0.99, 1.01))[2]
    assert failed.startswith("[FAIL]") and "worst +0.050 dB (scene 0), above it on 1 of 2" in failed


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


def test_null_text_compare_runs_end_to_end_with_the_papers_sensitivity(bench, tmp_path):
    """--null-text-compare --quick --paper-sensitivity: every loop on every scene, the perturbed paper loops in the
    first round only, with the learning rates asked for, and the report's sensitivity section."""
    text = bench.main(["--null-text-compare", "--quick", "--paper-sensitivity", "0.9", "--threads", "1",
                       "--out", str(tmp_path)])
    saved = json.loads((tmp_path / "null_text_compare.json").read_text())
    assert saved["paper_sensitivity"] == [0.9]
    loops = sorted({(r["scene"], r["loop"]) for r in saved["rows"]})
    assert loops == sorted((s, loop) for s in (0, 1) for loop in ("paper, before", "paper", "default", "paper, lr x0.9"))
    assert "its learning rate x0.9" in text and "gap(default) <= the paper's largest gap" in text
    assert (tmp_path / "null_text_compare.md").read_text() == text
