"""Batch runs under faults (diffusion_lab.batch.runner): a chunk's kernel killed mid-chunk, killed again on its
retry, and a chunk that runs past --chunk-timeout. Each run must end, within seconds of the fault, with every row
accounted for (ok, or failed with the reason). The model is the UNTRAINED shapes-tiny architecture (4-step edits)."""

import threading
import time
from pathlib import Path

import pytest

from diffusion_lab.batch import run_batch

psutil = pytest.importorskip("psutil")

SOURCE = "a large red circle on a gray background"
TARGETS = ["a large red square on a gray background", "a large blue circle on a gray background"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from diffusion_lab.models.shapes_tiny import build_untrained_pipeline

    folder = tmp_path_factory.mktemp("model") / "shapes-tiny-untrained"
    build_untrained_pipeline(seed=0).save_pretrained(folder, safe_serialization=True)
    return folder


def manifest(tmp_path: Path, rows: int, num_steps: int = 4) -> Path:
    lines = [f"defaults: {{num_steps: {num_steps}, guidance_scale: 5}}", "rows:"]
    for index in range(rows):
        lines.append(f"  - {{id: r{index}, source_prompt: {SOURCE}, target_prompts: [{TARGETS[index % 2]}], "
                     f"seed: {index}}}")
    path = tmp_path / "rows.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def kernels() -> list:
    found = []
    for process in psutil.Process().children(recursive=True):
        try:
            if process.status() != psutil.STATUS_ZOMBIE and "ipykernel" in " ".join(process.cmdline()):
                found.append(process)
        except psutil.Error:  # ended meanwhile
            pass
    return found


def run_in_thread(**kwargs):
    """run_batch in a thread (the test kills its kernels meanwhile); returns (thread, holder of the result)."""
    holder = {}

    def target():
        holder["result"] = run_batch(progress=False, log=lambda message: None, **kwargs)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, holder


def test_kernel_killed_mid_chunk_is_noticed_and_its_rows_run_again_in_a_fresh_kernel(tmp_path, model_dir):
    """Killing only the kernel of a running chunk hung the driver forever (nbclient's blocking get_msg)."""
    out = tmp_path / "out"
    thread, holder = run_in_thread(manifest=manifest(tmp_path, 3), out_dir=out, model=str(model_dir), chunk_size=3)
    first = out / "rows" / "r0" / "status.json"
    deadline = time.monotonic() + 240
    while not first.exists():
        assert thread.is_alive() and time.monotonic() < deadline, "the first row did not finish"
        time.sleep(0.05)
    victims = kernels()
    assert len(victims) == 1
    victims[0].kill()
    killed_at = time.monotonic()
    retry_notebook = None
    while retry_notebook is None and thread.is_alive():  # the retry chunk's notebook appears once it starts
        retry_notebook = next(iter((out / "chunks").glob("*-retry.json")), None)
        time.sleep(0.05)
    assert retry_notebook is not None and time.monotonic() - killed_at < 10, "the dead kernel was not noticed"
    thread.join(240)
    assert not thread.is_alive(), "the run did not end"
    result = holder["result"]
    assert result.counts == {"ok": 3, "warning": 0, "failed": 0, "invalid": 0, "not run": 0} and result.exit_code == 0
    first_chunk, retry = result.chunks
    assert "kernel died (killed by signal 9)" in first_chunk["error"] and retry["error"] is None
    assert retry["rows"] == ["r1", "r2"] or retry["rows"] == ["r2"]  # r0 (done) is not run again
    assert "r0" not in retry["states"]


def test_kernel_killed_again_on_the_retry_fails_the_rows_with_both_reasons(tmp_path, model_dir):
    out = tmp_path / "out"
    thread, holder = run_in_thread(manifest=manifest(tmp_path, 3), out_dir=out, model=str(model_dir), chunk_size=3)
    first = out / "rows" / "r0" / "status.json"
    killed, deadline = set(), time.monotonic() + 300
    while thread.is_alive():
        assert time.monotonic() < deadline, "the run did not end"
        if first.exists():
            for kernel in kernels():
                if kernel.pid not in killed:
                    kernel.kill()
                    killed.add(kernel.pid)
        time.sleep(0.05)
    result = holder["result"]
    assert len(killed) == 2 and result.exit_code == 1
    assert result.counts["ok"] + result.counts["failed"] == 3 and result.counts["not run"] == 0
    import json

    for row in ("r1", "r2"):
        status = json.loads((out / "rows" / row / "status.json").read_text())
        if status["status"] == "failed":
            assert "kernel died" in status["error"] and "run once more in a fresh kernel" in status["error"]


def test_chunk_timeout_bounds_the_whole_chunk(tmp_path, model_dir):
    """--chunk-timeout 60 did not stop a chunk whose kernel had died after 150 s; now the kernel is stopped when the
    time is spent, kernel start included, and the rows fail (after one retry) saying so."""
    started = time.monotonic()
    result = run_batch(manifest(tmp_path, 2, num_steps=50), tmp_path / "out", str(model_dir), chunk_size=2,
                       chunk_timeout=3, progress=False, log=lambda message: None)
    elapsed = time.monotonic() - started
    assert result.counts == {"ok": 0, "warning": 0, "failed": 2, "invalid": 0, "not run": 0} and result.exit_code == 1
    assert [chunk["wall_seconds"] < 3 + 8 for chunk in result.chunks] == [True, True], result.chunks
    assert elapsed < 60, elapsed
    status = (tmp_path / "out" / "rows" / "r0" / "status.json").read_text()
    assert "ran past --chunk-timeout 3 s" in status and "run once more" in status
    assert "**total time**: " in (tmp_path / "out" / "report.md").read_text()  # the report says how long it took


def test_warm_kernels_run_every_chunk_in_one_kernel_and_stop_it_at_the_end(tmp_path, model_dir):
    """--warm-kernels: kernel start, imports and model load once per worker, not once per chunk."""
    result = run_batch(manifest(tmp_path, 4), tmp_path / "out", str(model_dir), chunk_size=2, warm_kernels=True,
                       progress=False, log=lambda message: None)
    assert result.counts == {"ok": 4, "warning": 0, "failed": 0, "invalid": 0, "not run": 0} and result.exit_code == 0
    assert len(result.chunks) == 2, [(chunk["name"], chunk["error"]) for chunk in result.chunks]
    first, second = result.chunks
    assert first["kernel_pid"] == second["kernel_pid"] and first["error"] is None and second["error"] is None
    assert second["import_seconds"] + second["load_seconds"] < 0.5 * (first["import_seconds"] + first["load_seconds"])
    assert len(list((tmp_path / "out" / "notebooks").glob("*.ipynb"))) == 2  # each chunk keeps its log
    assert not kernels()  # stopped when the run ended
