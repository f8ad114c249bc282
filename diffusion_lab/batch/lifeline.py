"""Nothing outlives its driver: the processes a batch run starts end when the `batch` command (the driver) dies.

    driver (diffusion-lab batch) --> worker processes (--workers N, or a Dask LocalCluster's) --> kernels
                                 \\-> kernels (--workers 1)                      (and multiprocessing's resource tracker)

A kill -9 of the driver runs none of its clean-up, so every process below it watches for itself (a daemon
thread, every WATCH_SECONDS):
  * a local worker process (ProcessPoolExecutor) watches its parent, the driver: when it is gone, the worker kills
    its kernels and exits (`watch_worker`, the pool's initializer);
  * a Dask LocalCluster's worker processes exit with the driver by Dask's own mechanism (each holds a pipe to
    its nanny, which lives in the driver process; measured: gone within a second);
  * a chunk's kernel (`watch_kernel`, started by rows.process_chunk) watches its parent (the worker, or the
    driver) AND the driver itself: its parent may be an orphaned worker, which is alive. The driver is checked by
    pid when the kernel runs on the driver's machine (same host name and pid namespace; the pid's start time
    guards against a reused pid), and otherwise (a worker of an external Dask scheduler) by the driver's heartbeat
    file in the output folder, rewritten every HEARTBEAT_SECONDS: a kernel that sees it unchanged for
    HEARTBEAT_TIMEOUT seconds of its own clock stops (file contents, not times: no clock is compared across
    machines, and opening the file revalidates it on NFS);
  * the resource tracker ends by itself once the driver and the workers, which hold its pipe, are gone.
A worker of an external Dask cluster is not ours to stop: its task ends when its kernel does.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from pathlib import Path

WATCH_SECONDS = 0.25
HEARTBEAT_SECONDS = 1.0
HEARTBEAT_TIMEOUT = 30.0


def _pid_namespace() -> str | None:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return None


def process_start_time(pid: int) -> float | None:
    """The start time of process `pid` (psutil), or None when there is no such process."""
    import psutil

    try:
        return psutil.Process(pid).create_time()
    except (psutil.NoSuchProcess, psutil.AccessDenied, ProcessLookupError):
        return None


def this_process() -> dict:
    """Who this process is, as a claim or a driver names it: host, pid, pid namespace and start time."""
    return {"host": socket.gethostname(), "pid": os.getpid(), "pid_namespace": _pid_namespace(),
            "started": process_start_time(os.getpid())}


def same_machine(identity: dict) -> bool:
    """True when a process named by `identity` (this_process()) would be visible here by its pid."""
    return identity.get("host") == socket.gethostname() and identity.get("pid_namespace") == _pid_namespace()


def process_alive(identity: dict) -> bool | None:
    """True / False for a process on this machine (its pid runs and started when `identity` says), None when it
    runs elsewhere (cannot be told from here)."""
    if not same_machine(identity):
        return None
    import psutil

    try:
        process = psutil.Process(int(identity["pid"]))
        started = process.create_time()
        if process.status() == psutil.STATUS_ZOMBIE:  # dead, not yet reaped by its parent
            return False
    except psutil.AccessDenied:  # it exists (hidepid, another user): alive as far as can be told
        return True
    except (psutil.NoSuchProcess, ProcessLookupError):
        return False
    return identity.get("started") is None or abs(started - float(identity["started"])) < 1.0


# ---------------------------------------------------------------------------------------------------------
# The driver's side: its identity and heartbeat
# ---------------------------------------------------------------------------------------------------------


def heartbeat_path(out_dir, run_id: str) -> Path:
    return Path(out_dir) / "chunks" / f"{run_id}.heartbeat"


class Heartbeat:
    """Rewrites OUT/chunks/<run>.heartbeat every HEARTBEAT_SECONDS (a counter, written atomically) while the
    driver lives; removed when the run ends. `driver` is what the chunks carry: this process's identity plus the
    heartbeat's path."""

    def __init__(self, out_dir, run_id: str):
        self.path = heartbeat_path(out_dir, run_id)
        self.driver = {**this_process(), "heartbeat": str(self.path)}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True, name="diffusion-lab-heartbeat")

    def _beat(self) -> None:
        from .files import atomic_write_text

        count = 0
        while True:
            count += 1
            try:
                atomic_write_text(self.path, f"{count} {time.time():.3f}\n")
            except OSError:  # a full disk: the kernels stop after HEARTBEAT_TIMEOUT, as if the driver were gone
                pass
            if self._stop.wait(HEARTBEAT_SECONDS):
                return

    def __enter__(self) -> "Heartbeat":
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        try:
            self.path.unlink()
        except OSError:
            pass


# ---------------------------------------------------------------------------------------------------------
# The watchers
# ---------------------------------------------------------------------------------------------------------


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except OSError:
        return None


class DriverWatch:
    """Tells whether the driver named by `driver` (Heartbeat.driver) and this process's parent still live."""

    def __init__(self, driver: dict | None, watch_parent: bool = True,
                 heartbeat_timeout: float = HEARTBEAT_TIMEOUT):
        self.driver = driver or {}
        self.parent = os.getppid() if watch_parent else None
        self.heartbeat_timeout = heartbeat_timeout
        self._beat = _read(self.driver["heartbeat"]) if self.driver.get("heartbeat") else None
        self._beat_seen = time.monotonic()

    def gone(self) -> str | None:
        """Why the driver counts as gone (a sentence), or None while it lives."""
        if self.parent is not None and os.getppid() != self.parent:
            return f"its parent process {self.parent} is gone"
        if self.driver.get("pid") is not None:
            alive = process_alive(self.driver)
            if alive is False:
                return f"the batch driver (pid {self.driver['pid']}) is gone"
            if alive:
                return None
        if self.driver.get("heartbeat"):
            beat = _read(self.driver["heartbeat"])
            if beat != self._beat:
                self._beat, self._beat_seen = beat, time.monotonic()
            elif time.monotonic() - self._beat_seen > self.heartbeat_timeout:
                return (f"the batch driver's heartbeat ({self.driver['heartbeat']}) has not changed for "
                        f"{self.heartbeat_timeout:g} s")
        return None


def _kill_children() -> None:
    import psutil

    try:
        children = psutil.Process().children(recursive=True)
    except psutil.Error:
        return
    for child in children:
        try:
            child.kill()
        except psutil.Error:
            pass


def _watch(watch: DriverWatch, what: str) -> threading.Thread:
    def loop() -> None:
        while True:
            reason = watch.gone()
            if reason:
                import sys

                print(f"diffusion-lab batch: {what} {os.getpid()} stops: {reason}", file=sys.stderr, flush=True)
                _kill_children()
                os._exit(70)
            time.sleep(WATCH_SECONDS)

    thread = threading.Thread(target=loop, daemon=True, name=f"diffusion-lab-{what}-watch")
    thread.start()
    return thread


_KERNEL_WATCH: dict = {}


def watch_kernel(driver: dict | None) -> None:
    """In a chunk's kernel: exit (and end its own children) as soon as its parent or the driver is gone. Once per
    kernel and driver (a warm kernel runs several chunks of one run)."""
    if not driver:
        return
    key = (driver.get("host"), driver.get("pid"), driver.get("heartbeat"))
    if key not in _KERNEL_WATCH:
        _KERNEL_WATCH[key] = _watch(DriverWatch(driver), "kernel")


def watch_worker(driver_pid: int) -> None:
    """A local worker process's initializer: exit, killing its kernels, as soon as its parent (the driver,
    `driver_pid`) is gone. Also asks Linux to SIGKILL it when the driver dies (PR_SET_PDEATHSIG), the fastest
    path; the watch covers the rest (the signal fires when the thread that started the worker ends, and is
    Linux only)."""
    if os.getppid() != driver_pid:  # the driver died before this worker started
        os._exit(70)
    _set_parent_death_signal()
    watch = DriverWatch(None)
    watch.parent = driver_pid
    _watch(watch, "worker")


def _set_parent_death_signal() -> None:
    import sys

    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes
        import signal

        libc = ctypes.CDLL(None, use_errno=True)
        PR_SET_PDEATHSIG = 1
        libc.prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    except (OSError, AttributeError):  # no prctl: the watch alone
        pass
