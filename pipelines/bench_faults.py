"""Fault table of batch editing: kill a part of a running batch and count what happened to every row.

    python pipelines/bench_faults.py [--rows 6] [--chunk-size 3] [--steps 10] [--model shapes-tiny]
                                     [--out outputs/bench_faults]
                                     [--faults kernel worker driver driver-workers driver-dask driver-scheduler report]

Each fault runs `python -m diffusion_lab batch` on the same manifest into a fresh folder, as a user would, and
kills, once the first row is done:
    kernel    the Jupyter kernel of a running chunk (SIGKILL); the run must notice, retry its unfinished rows once
              in a fresh kernel and end by itself
    worker    one of the --workers 2 local worker processes (SIGKILL) while it runs a chunk
    driver    the `batch` command itself (SIGKILL); then the same command is run again (resume)
    driver-workers    the same with --workers 2 (local worker processes)
    driver-dask       the same with --executor dask --workers 2 (a Dask LocalCluster started by the command)
    driver-scheduler  the same with --executor dask --scheduler FILE: an external cluster (`dask scheduler` and
                      2 `dask worker` processes that this script starts and stops; they are not the run's and stay)
    report    the `batch` command in the middle of writing its report: after report.md is replaced and before
              report.html and summary.json are (the worst moment), by a wrapper that patches
              files.atomic_write_many to SIGKILL its own process there; then the same command is run again
Then, over the rows of the manifest:
    lost          rows without a final state (no status, or "not run") once the command(s) ended
    duplicated    rows edited to "ok" more than once: ok statuses written by different chunks (the status files
                  are polled every 50 ms during the whole fault) or lines "<id>: ok in" in the executed notebooks
    wrongly failed  rows failed at the end (every row of this manifest can be edited), or failed after being ok
    wrongly ok    rows marked ok whose files are missing or unreadable, whose metrics.json is not strict JSON, or
                  whose images are NaN / one constant colour
and the seconds from the kill to the start of the retry (kernel, worker) and to the end of the command (which
includes the retry chunk's kernel start, model load and rows), for a driver killed: the processes that were below
it (and the external workers' kernels) still alive 10 s after the kill (left running through the resume, as a
user's would be; stopped after it) and the seconds until the last was gone,
the final exit code, and whether report.md, report.html and summary.json carry the same report id (right after
the kill, and at the end).
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
FAULTS = ("kernel", "worker", "driver", "driver-workers", "driver-dask", "driver-scheduler", "report")
ORPHAN_WAIT = 10.0  # seconds after a driver's kill by which every process below it must be gone
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
            raise RuntimeError(f"the batch ended before its first row: {Path(process.args_log).read_text()[-3000:]}")
        if time.monotonic() > deadline:
            raise RuntimeError("no row finished in time")
        time.sleep(0.1)


class StatusWatch:
    """Polls every row's status.json (50 ms) in a thread: which ok statuses each row got (by chunk and time), and
    whether a row was failed after it had been ok."""

    def __init__(self, out: Path, ids: list[str]):
        import threading

        self.out, self.ids = out, ids
        self.oks = {row_id: set() for row_id in ids}
        self.failed_after_ok = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while not self._stop.is_set():
            for row_id in self.ids:
                try:
                    status = json.loads((self.out / "rows" / row_id / "status.json").read_text())
                except (OSError, ValueError):
                    continue
                if status.get("status") == "ok":
                    self.oks[row_id].add((status.get("run"), status.get("chunk"), status.get("finished")))
                elif status.get("status") == "failed" and self.oks[row_id]:
                    self.failed_after_ok.add(row_id)
            self._stop.wait(0.05)

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def account(out: Path, ids: list[str], watch: StatusWatch | None = None) -> dict:
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
    if watch is not None:
        edits = {row_id: max(count, len(watch.oks[row_id])) for row_id, count in edits.items()}
    duplicated = [row_id for row_id, count in edits.items() if count > 1]
    wrongly_failed = sorted({row_id for row_id in ids if states.get(row_id) == "failed"}
                            | (watch.failed_after_ok if watch is not None else set()))
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
    return {"lost": lost, "duplicated": duplicated, "wrongly_failed": wrongly_failed, "wrongly_ok": wrongly_ok, "ok": sum(s == "ok" for s in states.values()),
            "failed": sum(s == "failed" for s in states.values()), "reports_agree": agree}


def start_external_cluster(folder: Path, env: dict, workers: int = 2) -> tuple[list, Path]:
    """`dask scheduler` and `workers` single-thread `dask worker` processes (the external cluster of the
    driver-scheduler fault); returns (their Popens, the scheduler file)."""
    dask = str(Path(sys.executable).with_name("dask"))
    scheduler_file = folder / "scheduler.json"
    scheduler_file.unlink(missing_ok=True)
    common = {"env": env, "stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL, "start_new_session": True}
    cluster = [subprocess.Popen([dask, "scheduler", "--scheduler-file", str(scheduler_file), "--port", "0",
                                 "--dashboard-address", ":0", "--no-show"], **common)]
    cluster += [subprocess.Popen([dask, "worker", "--scheduler-file", str(scheduler_file), "--nthreads", "1",
                                  "--no-dashboard"], **common) for _ in range(workers)]
    return cluster, scheduler_file


def stop(processes: list) -> None:
    for process in processes:
        if process.poll() is None:
            process.kill()
        process.wait()


def kernels_below(pids: list[int]) -> list:
    return [child for pid in pids for child in descendants(pid) if is_kernel(child)]


def run_fault(fault: str, manifest: Path, out: Path, args, ids: list[str]) -> dict:
    import psutil

    env = {**os.environ, "DIFFUSION_LAB_NO_PROGRESS": "1", "TRANSFORMERS_VERBOSITY": "error", "PYTHONUNBUFFERED": "1"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    batch = ["batch", str(manifest), "--out", str(out), "--model", args.model, "--chunk-size", str(args.chunk_size),
             "--no-progress"]
    cluster = []
    if fault in ("worker", "driver-workers"):
        batch += ["--workers", "2"]
    elif fault == "driver-dask":
        batch += ["--executor", "dask", "--workers", "2"]
    elif fault == "driver-scheduler":
        cluster, scheduler_file = start_external_cluster(out.parent, env)
        batch += ["--executor", "dask", "--scheduler", str(scheduler_file)]
    head = [sys.executable, "-c", REPORT_KILLER] if fault == "report" else [sys.executable, "-m", "diffusion_lab"]
    started = time.monotonic()
    watch = StatusWatch(out, ids)
    leftovers = []
    try:
        log_path = out.parent / f"{fault}.log"  # a file, not a pipe: orphans holding a pipe kept communicate() waiting
        with open(log_path, "w") as log_file:
            process = subprocess.Popen(head + batch, cwd=REPO, env=env, stdout=log_file, stderr=subprocess.STDOUT)
        process.args_log = str(log_path)
        killed_at, victim, below, orphans, orphans_gone, leftovers = None, None, [], None, None, []
        if fault != "report":
            wait_for_first_row(out, process)
            if fault.startswith("driver"):
                victim = process.pid
                below = descendants(process.pid) + kernels_below([p.pid for p in cluster[1:]])
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
        if below:  # every process below the killed driver: gone within ORPHAN_WAIT seconds?
            gone, alive = psutil.wait_procs(below, timeout=ORPHAN_WAIT)
            orphans = len(alive)
            orphans_gone = None if alive else round(time.monotonic() - killed_at, 1)
            leftovers = alive  # counted, and left running through the resume (as a user's would be)
        noticed = None
        if fault in ("kernel", "worker"):  # noticed: the retry chunk's file appears (written when it starts)
            while process.poll() is None and noticed is None:
                if any(out.glob("chunks/*-retry.json")):
                    noticed = round(time.monotonic() - killed_at, 1)
                time.sleep(0.05)
        process.wait(timeout=args.timeout)
        output = log_path.read_text(errors="replace")
        ended = time.monotonic()
        code = process.returncode
        if fault == "report":
            killed_at = ended
        after_kill_agree = account(out, ids)["reports_agree"] if (out / "summary.json").exists() else None
        rerun_code = None
        if fault.startswith("driver") or fault == "report":
            rerun = subprocess.run([sys.executable, "-m", "diffusion_lab"] + batch, cwd=REPO, env=env, text=True,
                                   capture_output=True, timeout=args.timeout)
            rerun_code, output = rerun.returncode, output + rerun.stdout + rerun.stderr
        cluster_kept = all(p.poll() is None for p in cluster) if cluster else None
    finally:
        for leftover in leftovers:  # orphans that outlived even the resume
            try:
                leftover.kill()
            except psutil.Error:
                pass
        watch.stop()
        stop(cluster)
    counts = account(out, ids, watch)
    return {"fault": fault, "victim": victim, "exit_code": code, "rerun_exit_code": rerun_code,
            "seconds_kill_to_retry": noticed,
            "seconds_kill_to_end": None if killed_at is None else round(ended - killed_at, 1),
            "processes_below_driver": len(below), "orphans_after_wait": orphans, "seconds_to_no_orphan": orphans_gone,
            "external_cluster_kept": cluster_kept,
            "total_seconds": round(time.monotonic() - started, 1), "reports_agree_after_kill": after_kill_agree,
            **counts, "log": output[-3000:]}


LABELS = {"kernel": "kernel killed", "worker": "worker killed (--workers 2)", "driver": "driver killed",
          "driver-workers": "driver killed, --workers 2", "driver-dask": "driver killed, Dask LocalCluster (2)",
          "driver-scheduler": "driver killed, external Dask scheduler (2 workers)",
          "report": "driver killed in its report write"}


def table(results: list[dict], rows: int) -> str:
    lines = [f"| fault ({rows} rows) | rows lost | edited twice | wrongly failed | wrongly ok | ok / failed | "
             f"processes below the driver: alive {ORPHAN_WAIT:g} s after the kill (all gone after) | "
             "kill -> retry started | kill -> command ended | exit (rerun) | reports agree after kill / at end |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        rerun = "" if r["rerun_exit_code"] is None else f" ({r['rerun_exit_code']})"
        after = {None: "-", True: "yes", False: "no"}[r["reports_agree_after_kill"]]
        orphans = "-" if r["orphans_after_wait"] is None else (
            f"{r['orphans_after_wait']} of {r['processes_below_driver']}"
            + (f" ({r['seconds_to_no_orphan']} s)" if r["seconds_to_no_orphan"] is not None else ""))
        lines.append(f"| {LABELS[r['fault']]} | {len(r['lost'])} | {len(r['duplicated'])} | "
                     f"{len(r['wrongly_failed'])} | {len(r['wrongly_ok'])} | {r['ok']} / {r['failed']} | {orphans} | "
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
    bad = sum(len(r["lost"]) + len(r["duplicated"]) + len(r["wrongly_failed"]) + len(r["wrongly_ok"])
              + (r["orphans_after_wait"] or 0) for r in results)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
