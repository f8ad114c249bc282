"""Fault table of batch editing: kill a part of a running batch and count what happened to every row.

    python pipelines/bench_faults.py [--rows 6] [--chunk-size 3] [--steps 10] [--model shapes-tiny]
                                     [--out outputs/bench_faults] [--faults kernel worker driver report]

Each fault runs `python -m diffusion_lab batch` on the same manifest into a fresh folder, as a user would, and
kills, once the first row is done:
    kernel    the Jupyter kernel of a running chunk (SIGKILL); the run must notice, retry its unfinished rows once
              in a fresh kernel and end by itself
    worker    one of the --workers 2 local worker processes (SIGKILL) while it runs a chunk
    driver    the `batch` command itself (SIGKILL); then the same command is run again (resume)
    report    the `batch` command in the middle of writing its report: after report.md is replaced and before
              report.html and summary.json are (the worst moment), by a wrapper that patches
              files.atomic_write_many to SIGKILL its own process there; then the same command is run again
Then, over the rows of the manifest:
    lost          rows without a final state (no status, or "not run") once the command(s) ended
    duplicated    rows edited to "ok" more than once (counted in the executed chunk notebooks' output lines)
    wrongly ok    rows marked ok whose files are missing or unreadable, whose metrics.json is not strict JSON, or
                  whose images are NaN / one constant colour
and the seconds from the kill to the start of the retry (kernel, worker) and to the end of the command (which
includes the retry chunk's kernel start, model load and rows), the final exit code, and whether report.md,
report.html and summary.json carry the same report id (right after the kill, and at the end).
The table is printed and written to <out>/bench_faults.md.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_batch import write_manifest  # noqa: E402  (the same manifest of word swaps)
FAULTS = ("kernel", "worker", "driver", "report")
REPORT_KILLER = """
import os, signal, sys
from diffusion_lab.batch import files, report
original = files.atomic_write_many
def killed_midway(contents):
    items = list(contents.items())
    original(dict(items[:1]))  # report.md replaced; html and summary.json not yet
    os.kill(os.getpid(), signal.SIGKILL)
report.atomic_write_many = killed_midway
from diffusion_lab.__main__ import main
sys.exit(main(sys.argv[1:]))
"""


def descendants(pid: int) -> list:
    import psutil

    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.NoSuchProcess:
        return []


def is_kernel(process) -> bool:
    try:
        return "ipykernel" in " ".join(process.cmdline())
    except Exception:
        return False


def is_worker(process) -> bool:
    try:
        return "multiprocessing" in " ".join(process.cmdline()) and "resource_tracker" not in " ".join(process.cmdline())
    except Exception:
        return False


def wait_for_first_row(out: Path, process: subprocess.Popen, limit: float = 600) -> None:
    deadline = time.monotonic() + limit
    while not any(json.loads(p.read_text()).get("status") == "ok" for p in out.glob("rows/*/status.json")):
        if process.poll() is not None:
            raise RuntimeError(f"the batch ended before its first row: {process.stdout.read()}")
        if time.monotonic() > deadline:
            raise RuntimeError("no row finished in time")
        time.sleep(0.1)


def account(out: Path, ids: list[str]) -> dict:
    """Lost / duplicated / wrongly-ok rows of a finished output folder (see the module docstring)."""
    import numpy as np
    from PIL import Image

    from diffusion_lab.batch.report import report_ids

    summary = json.loads((out / "summary.json").read_text()) if (out / "summary.json").is_file() else {"rows": []}
    states = {row["id"]: row["state"] for row in summary["rows"]}
    lost = [row_id for row_id in ids if states.get(row_id) not in ("ok", "failed")]
    edits = {row_id: 0 for row_id in ids}
    for notebook in out.glob("notebooks/*.ipynb"):
        for cell in json.loads(notebook.read_text()).get("cells", []):
            for output in cell.get("outputs", []):
                for line in "".join(output.get("text", "")).splitlines():
                    row_id, _, rest = line.partition(": ")
                    if row_id in edits and rest.startswith("ok in"):
                        edits[row_id] += 1
    duplicated = [row_id for row_id, count in edits.items() if count > 1]
    wrongly_ok = []
    for row_id in ids:
        status_path = out / "rows" / row_id / "status.json"
        if not status_path.is_file():
            continue
        status = json.loads(status_path.read_text())
        if status.get("status") != "ok":
            continue
        try:
            for name in status["files"]:
                path = out / "rows" / row_id / name
                if name.endswith(".json"):
                    json.loads(path.read_text(), parse_constant=lambda c: (_ for _ in ()).throw(ValueError(c)))
                else:
                    with Image.open(path) as image:
                        pixels = np.asarray(image.convert("RGB"), dtype=np.float64)
                    if name in ("source.png",) or name.startswith("edit-"):
                        assert np.isfinite(pixels).all() and pixels.max() > pixels.min(), f"{name} is constant"
        except Exception as error:  # noqa: BLE001 - any problem makes the "ok" wrong
            wrongly_ok.append(f"{row_id} ({error})")
    agree = len(set(report_ids(out).values())) == 1 and None not in report_ids(out).values()
    return {"lost": lost, "duplicated": duplicated, "wrongly_ok": wrongly_ok, "ok": sum(s == "ok" for s in states.values()),
            "failed": sum(s == "failed" for s in states.values()), "reports_agree": agree}


def run_fault(fault: str, manifest: Path, out: Path, args, ids: list[str]) -> dict:
    env = {**os.environ, "DIFFUSION_LAB_NO_PROGRESS": "1", "TRANSFORMERS_VERBOSITY": "error", "PYTHONUNBUFFERED": "1"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    batch = ["batch", str(manifest), "--out", str(out), "--model", args.model, "--chunk-size", str(args.chunk_size),
             "--no-progress"]
    if fault == "worker":
        batch += ["--workers", "2"]
    head = [sys.executable, "-c", REPORT_KILLER] if fault == "report" else [sys.executable, "-m", "diffusion_lab"]
    started = time.monotonic()
    process = subprocess.Popen(head + batch, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                               text=True)
    killed_at, victim = None, None
    if fault != "report":
        wait_for_first_row(out, process)
        if fault == "driver":
            victim = process.pid
            process.send_signal(signal.SIGKILL)
        else:
            pick = is_kernel if fault == "kernel" else is_worker
            deadline = time.monotonic() + 60
            while victim is None and time.monotonic() < deadline:
                candidates = [p for p in descendants(process.pid) if pick(p)]
                if fault == "worker":  # a worker whose kernel is running a chunk
                    candidates = [p for p in candidates if any(is_kernel(k) for k in descendants(p.pid))]
                if candidates:
                    victim = candidates[0].pid
                    candidates[0].kill()
                time.sleep(0.1)
        killed_at = time.monotonic()
    noticed = None
    if fault in ("kernel", "worker"):  # noticed: the retry chunk's file appears (written when it starts)
        while process.poll() is None and noticed is None:
            if any(out.glob("chunks/*-retry.json")):
                noticed = round(time.monotonic() - killed_at, 1)
            time.sleep(0.05)
    output = process.communicate(timeout=args.timeout)[0]
    ended = time.monotonic()
    code = process.returncode
    if fault == "report":
        killed_at = ended
    after_kill_agree = account(out, ids)["reports_agree"] if (out / "summary.json").exists() else None
    rerun_code = None
    if fault in ("driver", "report"):
        time.sleep(2)  # the killed driver's kernels notice within a second that their parent is gone
        rerun = subprocess.run([sys.executable, "-m", "diffusion_lab"] + batch, cwd=REPO, env=env, text=True,
                               capture_output=True, timeout=args.timeout)
        rerun_code, output = rerun.returncode, output + rerun.stdout + rerun.stderr
    counts = account(out, ids)
    return {"fault": fault, "victim": victim, "exit_code": code, "rerun_exit_code": rerun_code,
            "seconds_kill_to_retry": noticed,
            "seconds_kill_to_end": None if killed_at is None else round(ended - killed_at, 1),
            "total_seconds": round(time.monotonic() - started, 1), "reports_agree_after_kill": after_kill_agree,
            **counts, "log": output[-3000:]}


def table(results: list[dict], rows: int) -> str:
    lines = [f"| fault ({rows} rows) | rows lost | duplicated | wrongly ok | ok / failed | kill -> retry started | "
             "kill -> command ended | exit (rerun) | reports agree after kill / at end |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        rerun = "" if r["rerun_exit_code"] is None else f" ({r['rerun_exit_code']})"
        after = {None: "-", True: "yes", False: "no"}[r["reports_agree_after_kill"]]
        lines.append(f"| {r['fault']} killed | {len(r['lost'])} | {len(r['duplicated'])} | {len(r['wrongly_ok'])} | "
                     f"{r['ok']} / {r['failed']} | "
                     + ("-" if r.get("seconds_kill_to_retry") is None else f"{r['seconds_kill_to_retry']} s")
                     + f" | {r['seconds_kill_to_end']} s | {r['exit_code']}{rerun} | "
                     f"{after} / {'yes' if r['reports_agree'] else 'no'} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=6)
    parser.add_argument("--chunk-size", type=int, default=3)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--model", default="shapes-tiny")
    parser.add_argument("--out", default="outputs/bench_faults")
    parser.add_argument("--faults", nargs="+", choices=FAULTS, default=list(FAULTS))
    parser.add_argument("--timeout", type=float, default=900, help="seconds one command may take")
    args = parser.parse_args(argv)
    import shutil

    root = Path(args.out).resolve()
    root.mkdir(parents=True, exist_ok=True)
    manifest = write_manifest(root / "manifest.yaml", args.rows, args.steps, "generated")  # bench_batch's manifest
    ids = [f"bench-{index:03d}" for index in range(args.rows)]
    results = []
    for fault in args.faults:
        out = root / fault
        shutil.rmtree(out, ignore_errors=True)
        result = run_fault(fault, manifest, out, args, ids)
        results.append(result)
        print(f"{fault}: {json.dumps({k: v for k, v in result.items() if k != 'log'})}", flush=True)
    text = table(results, args.rows)
    print("\n" + text)
    (root / "bench_faults.md").write_text(text + "\n")
    (root / "results.json").write_text(json.dumps(results, indent=1))
    bad = sum(len(r["lost"]) + len(r["duplicated"]) + len(r["wrongly_ok"]) for r in results)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
