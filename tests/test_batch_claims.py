"""A row is claimed, not guessed (diffusion_lab.batch.claims): each row is decided when it starts, a done row is
never redone or overwritten, a row claimed by a live process is not started twice, and the runner never fails a
row that is done or claimed. Real rows run on the UNTRAINED shapes-tiny architecture (2-step edits)."""

import json
import socket
import types

import pytest

from diffusion_lab.batch import rows as batch_rows
from diffusion_lab.batch import runner
from diffusion_lab.batch.claims import CLAIM_FILE, RowClaim, RowClaimed, claim_holder

SOURCE = "a large red circle on a gray background"
SQUARE = "a large red square on a gray background"


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from diffusion_lab.models.shapes_tiny import build_untrained_pipeline

    folder = tmp_path_factory.mktemp("model") / "shapes-tiny-untrained"
    build_untrained_pipeline(seed=0).save_pretrained(folder, safe_serialization=True)
    return folder


def spec(row_id: str, seed: int = 0) -> dict:
    return {"id": row_id, "key": f"key-{row_id}", "image": {"kind": "generated"}, "seed": seed, "num_steps": 2,
            "guidance_scale": 5.0, "inversion": None,
            "edit": {"source_prompt": SOURCE, "target_prompts": [SQUARE], "edit": "replace"}}


def status_of(out, row_id: str) -> dict:
    return json.loads((out / "rows" / row_id / "status.json").read_text())


def write_chunk(out, rows: list[dict], run: str = "run-new") -> str:
    path = out / "chunks" / "c.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"name": "c", "run": run, "rows": rows, "threads": 1}))
    return str(path)


def test_a_claim_holds_run_host_and_pid_and_refuses_a_second_holder(tmp_path):
    owner = {"run": "run-a", "host": socket.gethostname(), "pid": 123, "claimed": "now"}
    with RowClaim(tmp_path / "r0", owner):
        assert claim_holder(tmp_path / "r0") == owner
        with pytest.raises(RowClaimed, match=r"pid 123 on .* \(run run-a"):
            RowClaim(tmp_path / "r0", {"run": "run-b"}).acquire()
    assert claim_holder(tmp_path / "r0") is None  # released with its holder
    assert json.loads((tmp_path / "r0" / CLAIM_FILE).read_text())["run"] == "run-a"  # the last holder stays named
    with RowClaim(tmp_path / "r0", {"run": "run-b"}):
        assert claim_holder(tmp_path / "r0")["run"] == "run-b"


def test_the_chunk_decides_per_row_and_never_redoes_a_row_done_meanwhile(tmp_path, model_dir, monkeypatch):
    """process_chunk chose its pending rows once, when the chunk started: a row that an earlier run's orphaned
    kernel finished meanwhile was edited again and its ok status overwritten."""
    out = tmp_path / "out"
    rows = [spec("r0"), spec("r1", seed=1)]
    real_run_row = batch_rows.run_row
    ran = []

    def run_row_while_another_process_finishes_r1(pipe, row, *args, **kwargs):
        ran.append(row["id"])
        if row["id"] == "r0":  # meanwhile an earlier run's kernel finishes r1
            real_run_row(pipe, rows[1], out, str(model_dir), {"run": "run-old", "chunk": None, "notebook": None})
        return real_run_row(pipe, row, *args, **kwargs)

    monkeypatch.setattr(batch_rows, "run_row", run_row_while_another_process_finishes_r1)
    summary = batch_rows.process_chunk(write_chunk(out, rows), out, str(model_dir), verbose=False)
    assert ran == ["r0"] and summary["rows"] == {"r0": "ok", "r1": "skipped"}
    assert status_of(out, "r1")["run"] == "run-old" and status_of(out, "r0")["run"] == "run-new"


def test_a_row_claimed_by_a_live_process_is_not_started(tmp_path, model_dir):
    out = tmp_path / "out"
    with RowClaim(out / "rows" / "r0", {"run": "run-old", "host": "h", "pid": 42}):
        summary = batch_rows.process_chunk(write_chunk(out, [spec("r0")]), out, str(model_dir), verbose=False)
    assert summary["rows"] == {"r0": "claimed"} and summary["load_seconds"] == 0.0  # no model load for nothing
    assert not (out / "rows" / "r0" / "status.json").exists()


def _ok_row(out, row_id: str, run: str) -> None:
    folder = out / "rows" / row_id
    folder.mkdir(parents=True)
    (folder / "edit-1.png").write_bytes(b"png")
    (folder / "status.json").write_text(json.dumps({"id": row_id, "key": f"key-{row_id}", "status": "ok", "run": run,
                                                    "files": ["edit-1.png"]}))


def test_unfinished_rows_of_a_run_never_fail_a_row_done_by_an_earlier_run_or_claimed(tmp_path):
    """_record_unfinished failed every row without a status of the CURRENT run: rows that the killed run's orphans
    had finished ok were overwritten with 'its chunk ended before this row finished'."""
    out = tmp_path / "out"
    _ok_row(out, "done", "run-old")
    pending = [types.SimpleNamespace(id=name) for name in ("done", "claimed", "lost")]
    keys = {row.id: f"key-{row.id}" for row in pending}
    results = [{"rows": ["done", "claimed", "lost"], "error": "the chunk's kernel died", "notebook": None}]
    logged = []
    with RowClaim(out / "rows" / "claimed", {"run": "run-old", "host": "h", "pid": 42}):
        runner._record_unfinished(out, pending, keys, "run-new", results, False, logged.append)
    assert status_of(out, "done")["status"] == "ok" and status_of(out, "done")["run"] == "run-old"
    assert not (out / "rows" / "claimed" / "status.json").exists()
    assert any("'claimed' is being edited by pid 42" in line for line in logged), logged
    lost = status_of(out, "lost")
    assert lost["status"] == "failed" and "kernel died" in lost["error"] and lost["run"] == "run-new"


def test_a_second_run_waits_for_rows_claimed_by_an_earlier_runs_process_then_refuses(tmp_path, model_dir,
                                                                                       monkeypatch, capsys):
    manifest = tmp_path / "rows.yaml"
    manifest.write_text(f"- {{id: r0, source_prompt: {SOURCE}, target_prompts: [{SQUARE}], num_steps: 2}}\n")
    out = tmp_path / "out"
    monkeypatch.setattr(runner, "CLAIM_WAIT_SECONDS", 1.0)
    with RowClaim(out / "rows" / "r0", {"run": "run-old", "host": "node7", "pid": 4242}):
        code = runner.main([str(manifest), "--out", str(out), "--model", str(model_dir), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2
    assert "waiting up to 1 s for 1 row(s) still being edited" in err
    assert "still being edited by a process of an earlier run: pid 4242 on node7 (run run-old" in err
    assert "kill 4242 on node7" in err and not (out / "rows" / "r0" / "status.json").exists()
