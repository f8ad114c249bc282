"""pipelines/bench_gpu.py: the full-size configs are the released architectures; the benchmark runs on the CPU
at tiny size (what CI can do; the full-size run needs a GPU)."""

import json

import pytest
import torch



@pytest.fixture(scope="module")
def bench_gpu(import_script):
    return import_script("pipelines/bench_gpu.py")


def test_full_size_configs_have_the_released_parameter_counts(bench_gpu):
    """Built on the meta device (no memory): parameter counts of runwayml SD 1.5 and SDXL base 1.0."""
    expected = {
        "sd15": {"unet": 859_520_964, "vae": 83_653_863, "text_encoder": 123_060_480},
        "sdxl": {"unet": 2_567_463_684, "vae": 83_653_863, "text_encoder": 123_060_480,
                 "text_encoder_2": 694_659_840},
    }
    for model, counts in expected.items():
        with torch.device("meta"):
            components = bench_gpu.full_size_components(model)
        assert {name: sum(p.numel() for p in module.parameters()) for name, module in components.items()} == counts


def test_tiny_benchmark_runs_on_the_cpu(bench_gpu, tmp_path):
    rows = bench_gpu.main(["--tiny", "--steps", "2", "--inner-steps", "1", "--out", str(tmp_path)])
    assert set(rows) == {"sd15", "sdxl"}
    for row in rows.values():
        assert row["resolution"] == 32 and row["dtype"] == "float32"
        for key in ("sample_s", "null_text_s", "p2p_edit_s", "edit_reusing_inversion_s", "peak_memory_gib"):
            assert row[key] > 0, key
        assert row["null_text_inner_steps_run"] <= 2
    record = json.loads((tmp_path / "results.json").read_text())
    assert record["tiny"] is True and set(record["rows"]) == {"sd15", "sdxl"}
    assert "| sdxl | 32 | float32 | 2 |" in (tmp_path / "results.md").read_text()
    with pytest.raises(SystemExit, match="float32"):
        bench_gpu.main(["--tiny", "--dtype", "float16", "--out", str(tmp_path)])
