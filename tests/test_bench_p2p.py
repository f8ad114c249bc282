"""pipelines/bench_p2p.py: its scoring gives the ground truth perfect marks, and it runs end to end."""

import math

import numpy as np
import pytest
import torch

from diffusion_lab.shapes import edit_scene, random_scene, render



@pytest.fixture(scope="module")
def bench(import_script):
    return import_script("pipelines/bench_p2p.py")


@pytest.mark.parametrize("kind", ["colour", "shape", "background"])
def test_the_ground_truth_edit_scores_perfectly_and_the_source_does_not(bench, kind):
    scene = random_scene(3, num_objects=1)
    edit = edit_scene(scene, kind, rng=np.random.default_rng(0))
    source, target = render(scene), render(edit.target)
    truth = (target.image, target.masks[0])
    perfect = bench.score(kind, edit.new, target.image, source.image, source.masks[0], truth)
    assert perfect["success"] == 1.0 and math.isinf(perfect["gt_psnr"]) and perfect["gt_ssim"] == pytest.approx(1.0)
    assert perfect["iou"] > (0.3 if kind == "shape" else 0.95)  # a new shape covers other pixels...
    assert perfect["iou"] == pytest.approx(perfect["iou_ceiling"], abs=0.05)  # ...which the ceiling says
    assert perfect["truth_iou"] > 0.95  # and the true edited object is matched
    assert math.isinf(perfect["kept_psnr"])  # nothing changed where nothing should
    unchanged = bench.score(kind, edit.new, source.image, source.image, source.masks[0], truth)
    assert unchanged["success"] == 0.0 and unchanged["gt_psnr"] < 40


def test_cases_and_prompt_edits(bench):
    scene = random_scene(7, num_objects=1)
    cases = bench.make_cases(scene, 0, bench.KINDS, np.random.default_rng(7))
    by_kind = {case.kind: case for case in cases}
    assert by_kind["reweight"].target_prompt == by_kind["colour"].target_prompt
    assert scene.objects[0].colour not in by_kind["add"].source_prompt.split()
    assert len(by_kind["add"].target_prompt.split()) == len(by_kind["add"].source_prompt.split()) + 1

    class Settings:
        cross_replace, self_replace, reweight_scale, self_replace_max_resolution = 0.8, 0.4, 2.0, None

    add = by_kind["add"]
    assert bench.prompt_edit_for("add", add.source_prompt, [add.target_prompt], [add.new_value], Settings).edit == "refine"
    reweight = by_kind["reweight"]
    edit = bench.prompt_edit_for("reweight", reweight.source_prompt, [reweight.target_prompt], [reweight.new_value], Settings)
    assert edit.reweight == {reweight.new_value: 2.0}


def test_runs_end_to_end_on_the_untrained_architecture(bench, tmp_path):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        report = bench.main([
            "--model", "untrained", "--cases", "1", "--steps", "2", "--kinds", "colour", "add",
            "--inversion", "ddim", "--out", str(tmp_path), "--local-blend",
        ])
    finally:
        torch.set_num_threads(threads)
    for mode in ("generated", "real"):
        for kind in ("colour", "add"):
            for method in ("P2P", "no control", "naive noising"):
                assert f"| {mode} | {kind} | {method} | 1 |" in report
        assert f"| {mode} | colour | P2P + local blend | 1 |" in report  # word swaps only
        assert f"| {mode} | add | P2P + local blend |" not in report
        assert (tmp_path / f"examples_{mode}.png").exists() and (tmp_path / f"attention_{mode}.png").exists()
    assert "requirement" in report and (tmp_path / "bench_p2p.md").read_text() == report
    assert (tmp_path / "results.json").exists()


def test_word_swap_verdicts_judge_together_and_per_kind(bench):
    def records(kind, method, iou, success, n=4):
        return [{"mode": "generated", "kind": kind, "method": method, "iou": iou, "success": success,
                 "truth_iou": iou, "iou_ceiling": 1.0} for _ in range(n)]

    rows = (records("colour", "P2P", 0.85, 1.0) + records("colour", "no control", 0.45, 1.0)
            + records("shape", "P2P", 0.55, 1.0) + records("shape", "no control", 0.50, 1.0))
    lines = bench.word_swap_verdicts(rows, ["generated", "real"])
    together, _, colour, shape = lines  # no "real" records: no lines for that mode
    assert together.startswith("- generated, word swaps (colour + shape, 8 edits): P2P object IoU 0.70")
    assert together.endswith("NOT MET")
    assert colour.startswith("  - generated, colour swaps (4 edits)") and colour.endswith("80%) MET")
    assert shape.endswith("NOT MET")
    assert bench.requirement_met(0.8, 0.74, 0.8) and not bench.requirement_met(0.8, 0.76, 0.9)
    assert not bench.requirement_met(0.9, 0.2, 0.79)
