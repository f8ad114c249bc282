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
