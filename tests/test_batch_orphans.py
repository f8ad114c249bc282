"""Nothing outlives the batch driver (diffusion_lab.batch.lifeline), and a resume never edits a row twice nor fails a
finished one (diffusion_lab.batch.claims). The driver is `python -m diffusion_lab batch`, killed with SIGKILL once
its first row is done; every process below it (workers, kernels, the resource tracker) is then checked by PID.
The model is the UNTRAINED shapes-tiny architecture."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

psutil = pytest.importorskip("psutil")

REPO = Path(__file__).resolve().parent.parent
SOURCE = "a large red circle on a gray background"
TARGET = "a large red square on a gray background"
GONE_WITHIN = 5.0  # seconds from the driver's kill to the last of its processes gone


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    from diffusion_lab.models.shapes_tiny import build_untrained_pipeline

    folder = tmp_path_factory.mktemp("model") / "shapes-tiny-untrained"
    build_untrained_pipeline(seed=0).save_pretrained(folder, safe_serialization=True)
    return folder


def write_manifest(tmp_path: Path, rows: int, num_steps: int) -> Path:
    lines = [f"defaults: {{num_steps: {num_steps}, guidance_scale: 5}}", "rows:"]
    lines += [f"  - {{id: r{index}, source_prompt: {SOURCE}, target_prompts: [{TARGET}], seed: {index}}}"
              for index in range(rows)]
    path = tmp_path / "rows.yaml"
    path.write_text("\n".join(lines) + "\n")
    return path


def environment() -> dict:
    env = {**os.environ, "DIFFUSION_LAB_NO_PROGRESS": "1", "TRANSFORMERS_VERBOSITY": "error"}
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def batch_command(manifest: Path, out: Path, model: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "diffusion_lab", "batch", str(manifest), "--out", str(out), "--model", str(model),
            "--no-progress", "--threads", "1", *extra]


def ok_rows(out: Path) -> set:
    done = set()
    for path in out.glob("rows/*/status.json"):
        try:
            if json.loads(path.read_text()).get("status") == "ok":
                done.add(path.parent.name)
        except ValueError:
            pass
    return done


def kill_driver_after_first_row(command: list[str], out: Path, kernels_expected: int, limit: float = 240,
                                 elsewhere=None):
    """Start the driver, wait until a row is done and `kernels_expected` kernels run, SIGKILL the driver; returns
    ({pid: command line} of the processes that were below it (and below `elsewhere`, an external cluster's
    processes), seconds until the last of them was gone or None, the survivors)."""
    driver = subprocess.Popen(command, cwd=REPO, env=environment(), stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL, start_new_session=True)

    def below() -> list:
        found = psutil.Process(driver.pid).children(recursive=True)
        for process in elsewhere or []:
            found += [p for p in process.children(recursive=True) if "ipykernel" in " ".join(_cmdline(p))]
        return found

    deadline = time.monotonic() + limit
    try:
        while True:
            assert driver.poll() is None, "the batch ended before the test could kill it"
            assert time.monotonic() < deadline, "no row finished in time"
            kernels = [p for p in below() if "ipykernel" in " ".join(_cmdline(p))]
            if ok_rows(out) and len(kernels) >= kernels_expected:
                break
            time.sleep(0.1)
        processes = below()  # the latest, with the tracker and workers
        lines = {process.pid: " ".join(_cmdline(process)) for process in processes}
        driver.send_signal(signal.SIGKILL)
        driver.wait()
        killed_at = time.monotonic()
        gone, alive = psutil.wait_procs(processes, timeout=GONE_WITHIN)
        seconds = time.monotonic() - killed_at if not alive else None
        survivors = [(p.pid, lines[p.pid][:100]) for p in alive]
        for process in alive:  # the test fails; leave nothing running
            process.kill()
        return lines, seconds, survivors
    finally:
        for process in below() if driver.poll() is None else []:
            process.kill()
        if driver.poll() is None:
            driver.kill()


def _cmdline(process) -> list[str]:
    try:
        return process.cmdline()
    except psutil.Error:
        return []


def _ancestors(process) -> list:
    try:
        return process.parents()
    except psutil.Error:
        return []


def kinds(lines: dict) -> set:
    """What the processes below the driver were, from their command lines {pid: line}."""
    found = set()
    for line in lines.values():
        found.add("kernel" if "ipykernel" in line else "tracker" if "resource_tracker" in line else "worker")
    return found


def resume_and_check(command: list[str], out: Path, rows: int) -> dict:
    """Run the same command again: it must end with every row ok, none failed."""
    rerun = subprocess.run(command, cwd=REPO, env=environment(), capture_output=True, text=True, timeout=300)
    summary = json.loads((out / "summary.json").read_text())
    states = {row["id"]: row["state"] for row in summary["rows"]}
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert states == {f"r{index}": "ok" for index in range(rows)}, states
    return states


def test_driver_killed_with_two_workers_takes_its_workers_kernels_and_tracker_with_it(tmp_path, model_dir):
    """Before: the 2 worker processes and the resource tracker survived the driver's kill -9 (and their kernels went
    on editing, their parent being the orphaned worker, alive)."""
    out = tmp_path / "out"
    command = batch_command(write_manifest(tmp_path, 4, 40), out, model_dir, "--workers", "2", "--chunk-size", "2")
    below, seconds, survivors = kill_driver_after_first_row(command, out, kernels_expected=2)
    assert kinds(below) == {"kernel", "worker", "tracker"}, below
    assert not survivors, f"alive {GONE_WITHIN} s after the driver's kill: {survivors}"
    resume_and_check(command, out, 4)


def test_driver_killed_with_dask_local_cluster_takes_everything_with_it(tmp_path, model_dir):
    pytest.importorskip("distributed")
    out = tmp_path / "out"
    command = batch_command(write_manifest(tmp_path, 2, 40), out, model_dir, "--executor", "dask", "--workers", "1",
                            "--chunk-size", "2")
    below, seconds, survivors = kill_driver_after_first_row(command, out, kernels_expected=1)
    assert "kernel" in kinds(below) and "worker" in kinds(below)
    assert not survivors, f"alive {GONE_WITHIN} s after the driver's kill: {survivors}"


def test_driver_killed_with_an_external_scheduler_stops_its_kernels_not_the_cluster(tmp_path, model_dir):
    """The cluster is not the run's: its worker stays, the kernel running the dead driver's chunk stops (it sees
    the driver gone, although its own parent, the Dask worker, lives)."""
    pytest.importorskip("distributed")
    dask = str(Path(sys.executable).with_name("dask"))
    if not Path(dask).is_file():
        pytest.skip("no `dask` command beside this Python (distributed installs it)")
    scheduler_file = tmp_path / "scheduler.json"
    env = environment()
    cluster = [subprocess.Popen([dask, "scheduler", "--scheduler-file", str(scheduler_file), "--port", "0",
                                 "--dashboard-address", ":0", "--no-show"], env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)]
    try:
        cluster.append(subprocess.Popen([dask, "worker", "--scheduler-file", str(scheduler_file), "--nthreads", "1",
                                         "--no-dashboard"], env=env, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL, start_new_session=True))
        out = tmp_path / "out"
        command = batch_command(write_manifest(tmp_path, 2, 40), out, model_dir, "--executor", "dask",
                                "--scheduler", str(scheduler_file), "--chunk-size", "2")
        worker = psutil.Process(cluster[1].pid)
        below, seconds, survivors = kill_driver_after_first_row(command, out, kernels_expected=1, elsewhere=[worker])
        assert "kernel" in kinds(below)
        assert not survivors, f"alive {GONE_WITHIN} s after the driver's kill: {survivors}"
        assert all(process.poll() is None for process in cluster), "the external cluster was stopped"
    finally:
        for process in cluster:
            process.kill()
            process.wait()
        for process in psutil.Process().children(recursive=True):
            if "ipykernel" in " ".join(_cmdline(process)):
                process.kill()


def test_a_kernel_elsewhere_stops_when_the_drivers_heartbeat_stops(tmp_path):
    """A kernel on another machine than the driver cannot see its pid: it reads the heartbeat file instead."""
    from diffusion_lab.batch.lifeline import DriverWatch

    beat = tmp_path / "run.heartbeat"
    beat.write_text("1")
    watch = DriverWatch({"host": "another-machine", "pid": 1, "heartbeat": str(beat)}, watch_parent=False,
                        heartbeat_timeout=0.5)
    for count in range(2, 8):  # beating: alive
        time.sleep(0.2)
        beat.write_text(str(count))
        assert watch.gone() is None
    time.sleep(0.7)  # stopped beating
    assert "has not changed for 0.5 s" in watch.gone()
    same_machine_dead = DriverWatch({**psutil_identity(), "pid": 2**22 + 17}, watch_parent=False)
    assert "the batch driver (pid" in same_machine_dead.gone()


def psutil_identity() -> dict:
    from diffusion_lab.batch.lifeline import this_process

    return this_process()
