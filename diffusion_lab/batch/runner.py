"""`diffusion-lab batch MANIFEST --out DIR`: many Prompt-to-Prompt edits, run headlessly by papermill.

    manifest (CSV / YAML) --validate every row (manifest.py)--> rows, each keyed by sha256(row JSON + model)
      --skip rows already done (rows/<id>/status.json "ok" with that key)--> chunks of --chunk-size rows
      --papermill: edit_chunk.ipynb, ONE kernel and ONE model load per chunk (rows.py)--> rows/<id>/...
      --> report.md / report.html (contact sheet + metrics table), summary.json; exit code 1 if any row failed

Executors: chunks run one after another (--workers 1), in N parallel local processes (--workers N), or on a Dask
cluster (--executor dask: a LocalCluster of --workers processes, or the scheduler at --scheduler ADDRESS, e.g.
one started by dask-jobqueue on SLURM or dask-kubernetes). Only plain data travels: a task gets a dict of row
dicts and paths and returns a dict; the notebook reads its rows from a JSON chunk file. Workers must see OUT_DIR
and the input images at the same paths (a shared file system), and have diffusion-lab installed.

A chunk whose kernel dies (or is stopped by --chunk-timeout) or whose worker process is lost is noticed within
about a second; its unfinished rows run once more in a fresh kernel, then fail with both reasons.

A row whose result is suspect is done but shown as "warning" (report, summary.json, status.json "suspect"), with
its numbers: its reconstruction more than 10 dB below the input's own VAE round trip (rows.SUSPECT_DB), an edit's
background outside a scene's objects more than 15 dB below it there (rows.SUSPECT_EDIT_DB), or that round trip
itself below 20 dB (rows.VAE_FLOOR_DB: the model cannot represent the input, e.g. a transparent image composited on
white).

Safe to kill at any moment: every file is written atomically (files.py), a row is done only once its status.json
says so, and a rerun with the same command skips finished rows and retries failed and unfinished ones. Exit codes:
0 every row of the manifest is done; 1 at least one row failed, or was invalid and skipped (--skip-invalid): see the
report; 2 the manifest or the command is invalid (nothing ran); 130 interrupted.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import concurrent.futures.process
import hashlib
import math
import os
import secrets
import sys
import textwrap
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from .files import (
    PARTIAL_NOTEBOOK_SUFFIX,
    OutputLockedError,
    UnsafePathError,
    RunLock,
    atomic_write_json,
    inside,
    read_json,
    sweep_leftovers,
)
from .claims import RowClaim, RowClaimed, claim_holder, describe_holder
from .lifeline import Heartbeat, this_process, watch_worker
from .manifest import InvalidRow, ManifestError, Row, read_manifest, row_key, validate_manifest
from .rows import STATUS_FILE, failed_status, is_done, now, row_dir

NOTEBOOK = Path(__file__).with_name("edit_chunk.ipynb")
DEFAULT_CHUNK_SIZE = 8
DEFAULT_KERNEL = "python3"
EXECUTORS = ("local", "dask")
POLL_SECONDS = 0.5
CLAIM_WAIT_SECONDS = 30.0  # how long a new run waits for rows still claimed by processes of an earlier run
SCHEDULER_TIMEOUT = "60s"  # how long to try reaching an external Dask scheduler
_WEIGHT_SUFFIXES = {".json", ".safetensors", ".txt", ".model"}


class BatchError(RuntimeError):
    """The batch cannot start (bad manifest, invalid rows without --skip-invalid, missing kernel or model)."""


@dataclass
class BatchResult:
    """What a run did. exit_code: 0 all done, 1 a row failed or was skipped as invalid, 2 invalid manifest or
    rows (nothing ran), 130 interrupted."""

    exit_code: int
    out_dir: Path
    run_id: str | None = None
    counts: dict = field(default_factory=dict)
    chunks: list = field(default_factory=list)  # per chunk: wall_seconds, import/load/row seconds, rows
    invalid: list = field(default_factory=list)  # InvalidRow
    reports: dict = field(default_factory=dict)
    executed: list = field(default_factory=list)  # ids of the rows run by this run
    skipped: list = field(default_factory=list)  # ids of the rows done by an earlier run
    seconds: float = 0.0


# ---------------------------------------------------------------------------------------------------------
# The model: tokenizer for validation, fingerprint for the row keys
# ---------------------------------------------------------------------------------------------------------


def model_location(model: str) -> Path | None:
    """The local folder of a model name: the built-in shapes-tiny, an existing folder, or a hub id's cached
    snapshot; None when there is none (a hub id never downloaded)."""
    from ..models.loading import BUILTIN_MODELS

    if model in BUILTIN_MODELS:
        return Path(BUILTIN_MODELS[model])
    path = Path(os.path.expanduser(model))
    if path.is_dir():
        return path.resolve()
    try:
        from huggingface_hub import snapshot_download

        return Path(snapshot_download(model, local_files_only=True))
    except Exception:
        return None


def model_fingerprint(model: str, cache_file: Path | None = None) -> str:
    """sha256 over the model folder's config and weight files (names and contents): a row's key changes when
    the weights change (shapes-tiny is retrained, a checkpoint is updated). File hashes are cached in
    `cache_file` by (path, size, mtime). A hub id without a local snapshot is fingerprinted by its name."""
    folder = model_location(model)
    if folder is None:
        return "name:" + model
    cache = read_json(cache_file, {}) if cache_file else {}
    fresh, digest = {}, hashlib.sha256()
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and p.suffix in _WEIGHT_SUFFIXES):
        if path.name == "training_info.json" or any(part.startswith(".") for part in path.relative_to(folder).parts):
            continue
        stat = path.stat()
        entry_key = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
        file_hash = cache.get(entry_key)
        if file_hash is None:
            from .manifest import file_sha256

            file_hash = file_sha256(path)
        fresh[entry_key] = file_hash
        digest.update(path.relative_to(folder).as_posix().encode() + b"\0" + file_hash.encode() + b"\n")
    if cache_file and fresh != cache:
        atomic_write_json(cache_file, fresh)
    return "sha256:" + digest.hexdigest()


def load_tokenizer(model: str):
    """The model's tokenizer alone (what validation needs), without loading any weights."""
    from transformers import AutoTokenizer

    from ..models import ModelNotFoundError
    from ..models.loading import mark_untrained_words

    folder = model_location(model)
    try:
        if folder is not None:
            tokenizer = AutoTokenizer.from_pretrained(str(folder), subfolder="tokenizer", local_files_only=True)
            mark_untrained_words(tokenizer, folder)  # refused at validation, as load_pipeline's are at run time
            return tokenizer
        return AutoTokenizer.from_pretrained(model, subfolder="tokenizer",
                                             local_files_only=os.environ.get("HF_HUB_OFFLINE") == "1")
    except (OSError, ValueError) as error:
        raise ModelNotFoundError(
            f"could not read the tokenizer of the model {model!r} (a built-in name, a diffusers folder or a hub id): {error}"
        ) from None


def check_kernel(kernel_name: str) -> str | None:
    """Raise BatchError when there is no kernel of that name; return a warning when it runs another Python than
    this one (it would not see this environment's diffusion-lab)."""
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel

    try:
        spec = KernelSpecManager().get_kernel_spec(kernel_name)
    except NoSuchKernel:
        raise BatchError(
            f"no Jupyter kernel named {kernel_name!r}; install this Python's with "
            f"`{sys.executable} -m ipykernel install --sys-prefix --name {kernel_name}` or pass --kernel NAME"
        ) from None
    program = spec.argv[0] if spec.argv else ""
    generic = {"python", "python3", f"python{sys.version_info[0]}.{sys.version_info[1]}"}
    if program in generic:  # jupyter_client runs sys.executable for these
        return None
    try:
        same = Path(program).resolve() == Path(sys.executable).resolve()
    except OSError:
        same = False
    if not same:
        return (f"the Jupyter kernel {kernel_name!r} runs {program}, not this Python ({sys.executable}); the chunks "
                "will fail if diffusion-lab is not installed there (pass --kernel NAME)")
    return None


# ---------------------------------------------------------------------------------------------------------
# One chunk (the unit of work of every executor): plain dict in, plain dict out
# ---------------------------------------------------------------------------------------------------------


def run_chunk(payload: dict) -> dict:
    """Write the chunk file, execute edit_chunk.ipynb on it with papermill, keep the executed notebook as the
    chunk's log (notebooks/<name>.ipynb). Returns timings and the chunk's error (None when the notebook ran
    to its end; row failures are in the rows' status files, not here).

    payload["timeout"] (--chunk-timeout) bounds the whole chunk, kernel start and model load included: a
    watchdog kills the kernel when it is spent, and nbclient, which checks every second that its kernel is alive,
    returns at once. A kernel that dies on its own is noticed the same way."""
    import papermill
    from papermill.exceptions import PapermillExecutionError

    from .kernels import EncryptedKernelManager

    out = Path(payload["out_dir"])
    name = payload["name"]
    threads = payload.get("threads") or _worker_threads()
    chunk_file = inside(out, "chunks", f"{name}.json")
    result_file = f"chunks/{name}.result.json"
    notebook = f"notebooks/{name}.ipynb"
    atomic_write_json(chunk_file, {
        "name": name, "run": payload["run"], "model": payload["model"], "threads": threads,
        "notebook": notebook, "result_file": result_file, "rows": payload["rows"], "driver": payload.get("driver"),
    })
    partial = inside(out, "notebooks", f".{name}{PARTIAL_NOTEBOOK_SUFFIX}")
    partial.parent.mkdir(parents=True, exist_ok=True)
    managers: list = []
    processes: list = []  # the kernel's Popen (jupyter_client forgets it once the kernel is cleaned up)

    class ChunkKernelManager(EncryptedKernelManager):
        """Remembers itself and its kernel process, so the watchdog can stop it and the error can name how it
        ended."""

        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            managers.append(self)

        async def _async_post_start_kernel(self, **kwargs):
            process = getattr(self.provisioner, "process", None)
            if process is not None:
                processes.append(process)
            await super()._async_post_start_kernel(**kwargs)

    timeout = payload.get("timeout")
    timed_out, finished = threading.Event(), threading.Event()

    def watchdog() -> None:  # once the time is spent, kill the kernel (again each second, should it be starting)
        if finished.wait(float(timeout)):
            return
        timed_out.set()
        while not finished.is_set():
            starting = [getattr(getattr(m, "provisioner", None), "process", None) for m in managers]
            for process in [*processes, *starting]:
                if process is not None and process.poll() is None:
                    process.kill()
            finished.wait(1.0)

    error = None
    started = time.perf_counter()
    if timeout:
        threading.Thread(target=watchdog, daemon=True, name=f"watchdog-{name}").start()
    parameters = {"CHUNK_FILE": str(chunk_file), "OUT_DIR": str(out), "MODEL": payload["model"]}
    kernel_name = payload.get("kernel_name") or DEFAULT_KERNEL
    try:
        if payload.get("warm"):
            error = _run_in_warm_kernel(payload, parameters, kernel_name, partial, out, ChunkKernelManager,
                                        managers, processes)
        else:
            papermill.execute_notebook(
                str(payload.get("notebook_template") or NOTEBOOK), str(partial), parameters=parameters,
                kernel_name=kernel_name, progress_bar=False, log_output=False,
                cwd=str(out), kernel_manager_class=ChunkKernelManager,
            )
    except PapermillExecutionError as exc:
        error = f"{exc.ename}: {exc.evalue}"
    except Exception as exc:  # the kernel did not start, died, or was stopped by the watchdog
        error = f"{type(exc).__name__}: {exc}"
    finally:
        finished.set()
    if payload.get("warm") and error is not None:
        shutdown_warm_kernels(payload["run"])  # never reuse a kernel that failed, died or timed out
    wall = time.perf_counter() - started
    if timed_out.is_set():
        error = f"the chunk ran past --chunk-timeout {float(timeout):g} s and its kernel was stopped"
    elif error is not None and "DeadKernelError" in error:
        code = next((p.returncode for p in processes if p.returncode is not None), None)
        how = "" if code is None else (f" (killed by signal {-code})" if code < 0 else f" (exit code {code})")
        error = f"the chunk's kernel died{how} after {wall:.1f} s"
    if partial.exists():
        os.replace(partial, inside(out, notebook))
    summary = read_json(inside(out, result_file), {}) or {}
    return {"name": name, "rows": [row["id"] for row in payload["rows"]], "wall_seconds": wall, "error": error,
            "notebook": notebook, "attempt": payload.get("attempt", 1), "threads": threads,
            "import_seconds": summary.get("import_seconds", 0.0),
            "load_seconds": summary.get("load_seconds", 0.0), "row_seconds": summary.get("row_seconds", 0.0),
            "kernel_age_seconds": summary.get("kernel_age_seconds"), "kernel_pid": summary.get("pid"),
            "states": summary.get("rows", {})}


_WARM_KERNELS: dict = {}  # this process's kernels kept across chunks (--warm-kernels): (run, kernel name) -> manager


def _run_in_warm_kernel(payload, parameters, kernel_name, partial, out, manager_class, managers, processes):
    """Execute the chunk notebook (parameterized as papermill does) with nbclient in this process's warm kernel,
    started on the first chunk and kept for the next ones: the kernel start, the imports and the model load
    (load_pipeline caches it) are paid once per worker instead of once per chunk. Returns the chunk's error."""
    import nbformat
    from nbclient import NotebookClient
    from nbclient.exceptions import CellExecutionError
    from papermill.parameterize import parameterize_notebook

    from papermill.iorw import load_notebook_node

    notebook = load_notebook_node(str(payload.get("notebook_template") or NOTEBOOK))  # cells get their tags
    notebook = parameterize_notebook(notebook, parameters, kernel_name=kernel_name, language="python")
    key = (payload["run"], kernel_name)
    manager = _WARM_KERNELS.get(key)
    process = getattr(getattr(manager, "provisioner", None), "process", None)
    if manager is None or process is None or process.poll() is not None:
        manager = manager_class(kernel_name=kernel_name)
        _WARM_KERNELS[key] = manager
    else:
        processes.append(process)
    managers.append(manager)
    client = NotebookClient(notebook, km=manager, kernel_name=kernel_name, timeout=None,
                            resources={"metadata": {"path": str(out)}})
    error = None
    try:
        client.execute()
    except CellExecutionError as exc:
        error = f"{exc.ename}: {exc.evalue}"
    finally:
        if client.kc is not None:
            client.kc.stop_channels()
        nbformat.write(notebook, str(partial))
    return error


def shutdown_warm_kernels(run: str | None = None) -> None:
    """Stop this process's warm kernels of the run `run` (all of them when None): at the end of a run, or after a
    chunk failed in one."""
    from jupyter_core.utils import run_sync

    for key in [key for key in list(_WARM_KERNELS) if run is None or key[0] == run]:  # a copy: a worker thread may add
        manager = _WARM_KERNELS.pop(key, None)
        if manager is None:
            continue
        process = getattr(getattr(manager, "provisioner", None), "process", None)
        if process is not None and process.poll() is None:
            process.kill()
            process.wait()
        try:
            run_sync(manager.cleanup_resources)()
        except Exception:  # noqa: BLE001 - connection files only
            pass


def _worker_threads() -> int:
    """torch threads for a chunk whose driver did not choose (a Dask worker of an external scheduler): the idle
    cores of the machine it runs on, shared by the worker's task slots. Without it, torch took every core in
    each of a worker's kernels."""
    slots = 1
    try:
        from distributed import get_worker

        slots = int(get_worker().state.nthreads)
    except (ImportError, ValueError, AttributeError):  # not inside a Dask worker
        pass
    return local_threads(max(1, slots))


class _SequentialExecutor:
    """Runs submitted calls one after another in a daemon thread (--workers 1): no extra process, and an
    interrupted driver exits at once (its kernel notices and stops)."""

    def __init__(self):
        self._jobs: list = []
        self._thread = threading.Thread(target=self._work, daemon=True, name="diffusion-lab-batch")
        self._lock = threading.Lock()
        self._event = threading.Event()
        self._closed = False
        self._thread.start()

    def submit(self, function, *args) -> concurrent.futures.Future:
        future: concurrent.futures.Future = concurrent.futures.Future()
        with self._lock:
            self._jobs.append((future, function, args))
        self._event.set()
        return future

    def _work(self) -> None:
        while True:
            with self._lock:
                job = self._jobs.pop(0) if self._jobs else None
                if job is None and self._closed:
                    return
            if job is None:
                self._event.wait(0.2)
                self._event.clear()
                continue
            future, function, args = job
            if not future.set_running_or_notify_cancel():
                continue
            try:
                future.set_result(function(*args))
            except BaseException as error:  # noqa: BLE001 - handed to the caller
                future.set_exception(error)

    def shutdown(self, cancel: bool = False) -> None:
        with self._lock:
            if cancel:
                for future, _, _ in self._jobs:
                    future.cancel()
                self._jobs.clear()
            self._closed = True
        self._event.set()


class _Executor:
    """submit(payload) -> a future with .done() / .result(); close(). local: threads or processes; dask: a Client."""

    def __init__(self, kind: str, workers: int, scheduler: str | None, log):
        self.kind, self.client, self.cluster, self.pool = kind, None, None, None
        self.workers = workers
        if kind == "local":
            self.pool = _SequentialExecutor() if workers == 1 else self._new_pool()
            return
        try:
            from distributed import Client, LocalCluster
        except ImportError:
            raise BatchError("--executor dask needs dask and distributed: pip install 'diffusion-lab[dask]'") from None
        if scheduler:
            try:
                if scheduler.endswith(".json") and Path(scheduler).is_file():
                    self.client = Client(scheduler_file=scheduler, timeout=SCHEDULER_TIMEOUT)
                else:
                    self.client = Client(scheduler, timeout=SCHEDULER_TIMEOUT)
            except (OSError, TimeoutError, ValueError) as error:
                raise BatchError(f"could not reach the Dask scheduler {scheduler!r}: {error}") from None
            log(f"dask: connected to {self.client.scheduler.address}")
        else:
            self.cluster = LocalCluster(n_workers=workers, threads_per_worker=1, processes=True,
                                        dashboard_address=None)
            self.client = Client(self.cluster)
            log(f"dask: LocalCluster of {workers} worker process(es) at {self.cluster.scheduler_address}")

    def submit(self, payload: dict):
        if self.client is not None:
            return self.client.submit(run_chunk, payload, key=f"diffusion-lab-{payload['run']}-{payload['name']}",
                                      pure=False)
        try:
            return self.pool.submit(run_chunk, payload)
        except concurrent.futures.process.BrokenProcessPool:  # a worker process died: a fresh pool for the retry
            self.pool.shutdown(wait=False, cancel_futures=True)
            self.pool = self._new_pool()
            return self.pool.submit(run_chunk, payload)

    def _new_pool(self):
        import multiprocessing

        return concurrent.futures.ProcessPoolExecutor(max_workers=self.workers,
                                                      mp_context=multiprocessing.get_context("spawn"),
                                                      initializer=watch_worker, initargs=(os.getpid(),))

    def close(self, cancel: bool = False) -> None:
        if self.pool is not None:
            if isinstance(self.pool, _SequentialExecutor):
                self.pool.shutdown(cancel=cancel)
            else:
                self.pool.shutdown(wait=not cancel, cancel_futures=cancel)
        if self.client is not None:
            self.client.close()
        if self.cluster is not None:
            self.cluster.close()


# ---------------------------------------------------------------------------------------------------------
# The run
# ---------------------------------------------------------------------------------------------------------


def _progress(total: int, initial: int, enabled: bool):
    from ..progress import progress_bar

    return progress_bar(None, enabled=enabled, total=total, initial=initial, desc="rows", unit="row",
                        dynamic_ncols=True, file=sys.stderr)


def _chunks(rows: list, size: int) -> list[list]:
    return [rows[start : start + size] for start in range(0, len(rows), size)]


def local_threads(workers: int) -> int:
    """torch threads per local kernel: the idle cores shared by the workers.

    Idle = cores minus the 1-minute load average. PyTorch's OpenMP threads spin at every parallel region, so
    a kernel with more threads than free cores, e.g. 2 threads while a training job holds one of 2 cores, ran
    the example manifest 17x slower (9.5 minutes against 34 s with --threads 1, measured)."""
    cores = os.cpu_count() or 1
    try:
        busy = round(os.getloadavg()[0])
    except (AttributeError, OSError):  # no load average (Windows)
        busy = 0
    return max(1, (cores - min(busy, cores - 1)) // max(1, workers))


def run_batch(
    manifest,
    out_dir,
    model: str = "shapes-tiny",
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    workers: int = 1,
    executor: str = "local",
    scheduler: str | None = None,
    skip_invalid: bool = False,
    progress: bool = True,
    kernel_name: str = DEFAULT_KERNEL,
    chunk_timeout: float | None = None,
    threads: int | None = None,
    validate_only: bool = False,
    warm_kernels: bool = False,
    allow_images_outside: bool = False,
    log=None,
) -> BatchResult:
    """Validate MANIFEST, then run its unfinished rows into OUT_DIR (see the module docstring); the result's
    exit_code is what the command returns. Raises BatchError / ManifestError when nothing can start."""
    log = log or (lambda message: print(message, file=sys.stderr, flush=True))
    started = time.perf_counter()
    if chunk_size < 1 or workers < 1:
        raise BatchError("--chunk-size and --workers must be at least 1")
    if chunk_timeout is not None and not (math.isfinite(chunk_timeout) and chunk_timeout > 0):
        raise BatchError(f"--chunk-timeout must be a positive number of seconds, got {chunk_timeout:g} "
                         "(leave it out for no limit)")
    if threads is not None and threads < 1:
        raise BatchError(f"--threads must be at least 1, got {threads} (leave it out for the default)")
    if executor not in EXECUTORS:
        raise BatchError(f"unknown executor {executor!r}; choose one of {', '.join(EXECUTORS)}")
    if scheduler and executor != "dask":
        raise BatchError("--scheduler needs --executor dask")
    if warm_kernels and executor != "local":
        raise BatchError("--warm-kernels needs --executor local (a Dask worker would keep its kernel after the run)")
    out = Path(out_dir).expanduser().resolve()
    if not validate_only:
        check_output_folder(out)

    import warnings

    from .manifest import ManifestWarning

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", ManifestWarning)
        parsed = read_manifest(manifest)
    for warning in caught:
        log(f"warning: {warning.message}")
    model = str(Path(model).expanduser().resolve()) if Path(model).expanduser().is_dir() else model
    tokenizer = load_tokenizer(model)
    from ..models.defaults import model_defaults

    defaults = model_defaults(model)
    valid, invalid = validate_manifest(parsed, tokenizer, defaults["num_steps"], defaults["guidance_scale"],
                                       allow_images_outside=allow_images_outside)
    for bad in invalid:
        log(f"invalid {bad.message}")
    if invalid and (not skip_invalid or validate_only):
        where = "" if validate_only else "; nothing was run (fix them, or pass --skip-invalid to run the others)"
        log(f"{len(invalid)} of {len(parsed.rows)} rows are invalid{where}")
        return BatchResult(2, out, invalid=invalid, seconds=time.perf_counter() - started)
    if validate_only:
        log(f"all {len(valid)} rows are valid")
        return BatchResult(0, out, invalid=invalid, seconds=time.perf_counter() - started)
    if executor == "local" or not scheduler:
        warning = check_kernel(kernel_name)
        if warning:
            log(f"warning: {warning}")
    # An external scheduler is reached BEFORE the output folder and its lock exist: an unreachable one leaves
    # nothing behind (it left OUT_DIR with its lock file).
    connected = _Executor(executor, workers, scheduler, log) if scheduler else None
    try:
        return _run_locked(out, parsed, model, valid, invalid, chunk_size, workers, executor, scheduler, progress,
                           kernel_name, chunk_timeout, threads, connected, started, log, warm_kernels)
    finally:
        if connected is not None:
            connected.close()


def check_output_folder(out: Path) -> None:
    """BatchError unless `out` is a folder or can be made one: not a file, nor below a file (mkdir raised
    FileExistsError / NotADirectoryError)."""
    for folder in (out, *out.parents):
        try:
            if not (folder.exists() or folder.is_symlink()):
                continue
            is_folder = folder.is_dir()
        except OSError as error:  # e.g. a folder above it that this user may not enter
            raise BatchError(f"cannot use {str(out)!r} as the output folder (--out): {error.strerror or error}") from None
        if not is_folder:
            what = "is a file" if folder == out else f"is inside {str(folder)!r}, which is a file"
            raise BatchError(f"--out must be a folder, and {str(out)!r} {what}; give a folder (it is made when missing)")
        return


def _make_output_folder(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        check_output_folder(out)  # a file made there since the check: its message
        raise BatchError(f"could not make the output folder {str(out)!r} (--out): {error.strerror or error}") from None


def _run_locked(out, parsed, model, valid, invalid, chunk_size, workers, executor, scheduler, progress,
                kernel_name, chunk_timeout, threads, connected, started, log, warm_kernels=False) -> BatchResult:
    _make_output_folder(out)  # checked before validation; made only now (an unreachable scheduler leaves nothing)
    with RunLock(out):
        for row in valid:
            row_dir(out, row.id)  # every output folder is checked to stay inside OUT_DIR before any work
        _wait_for_claimed_rows(out, valid, log)  # first: an earlier run's live process may still be writing
        sweep_leftovers(out)
        run_id = time.strftime("%Y%m%d-%H%M%S") + "-" + secrets.token_hex(2)
        fingerprint = model_fingerprint(model, out / ".cache" / "model-files.json")
        keys = {row.id: row_key(row, fingerprint) for row in valid}
        done = [row for row in valid if is_done(out, row.id, keys[row.id])]
        done_ids = {row.id for row in done}
        pending = [row for row in valid if row.id not in done_ids]
        atomic_write_json(out / "manifest.json", {
            "manifest": str(parsed.path), "model": model, "model_fingerprint": fingerprint, "run": run_id,
            "rows": [{**row.spec, "key": keys[row.id], "number": row.number} for row in valid],
            "invalid": [{"number": bad.number, "id": bad.id, "errors": bad.errors} for bad in invalid],
        })
        if threads is None and (executor == "local" or not scheduler):
            threads = local_threads(workers)
        payloads = [
            {"name": f"{run_id}-chunk-{index:03d}", "run": run_id, "out_dir": str(out), "model": model,
             "rows": [{**row.spec, "key": keys[row.id]} for row in rows], "threads": threads,
             "kernel_name": kernel_name, "timeout": chunk_timeout, "warm": warm_kernels}
            for index, rows in enumerate(_chunks(pending, chunk_size), start=1)
        ]
        log(f"{len(valid)} rows: {len(done)} done earlier, {len(pending)} to run in {len(payloads)} chunk(s) "
            f"of up to {chunk_size}" + (f"; {len(invalid)} invalid, skipped" if invalid else ""))
        chunk_results, interrupted = [], False
        if payloads:
            try:
                with Heartbeat(out, run_id) as heartbeat:  # the kernels stop when the driver (this process) is gone
                    for payload in payloads:
                        payload["driver"] = heartbeat.driver
                    chunk_results = _execute(payloads, executor, workers, scheduler, progress, keys, out, run_id,
                                             len(valid), len(done), log, connected)
            except KeyboardInterrupt:
                interrupted = True
                log("interrupted: finished rows are kept; rerun the same command to continue")
        _record_unfinished(out, pending, keys, run_id, chunk_results, interrupted, log)
        entries = _entries(out, parsed, valid, invalid, keys)
        counts = {state: sum(e["state"] == state for e in entries)
                  for state in ("ok", "warning", "failed", "invalid", "not run")}
        from .report import write_report

        info = {"manifest": str(parsed.path), "model": model, "model fingerprint": fingerprint[:23],
                "run": run_id, "finished": now(), "chunk size": chunk_size,
                "executor": executor + (f" ({scheduler})" if scheduler else f" ({workers} worker(s))"),
                "total time": f"{time.perf_counter() - started:.1f} s (this run: validation, chunks and retries)"}
        reports = write_report(out, entries, info)
    unfinished = counts["failed"] + counts["not run"] + counts["invalid"]  # invalid: skipped by --skip-invalid
    exit_code = 130 if interrupted else (1 if unfinished else 0)
    log(f"rows: {counts['ok'] + counts['warning']} ok ({len(done)} done earlier), {counts['failed']} failed"
        + (f", {counts['warning']} of the ok ones suspect (warning: see the report)" if counts["warning"] else "")
        + (f", {counts['not run']} not run" if counts["not run"] else "")
        + (f", {counts['invalid']} invalid (skipped)" if counts["invalid"] else "")
        + f"\nreport: {reports['html']}")
    return BatchResult(exit_code, out, run_id, counts, chunk_results, invalid, reports,
                       executed=[row.id for row in pending], skipped=[row.id for row in done],
                       seconds=time.perf_counter() - started)


def _finished_in_run(out, row_id: str, key: str, run_id: str) -> bool:
    """True when the row has a status (ok or failed) written by this run for this key, or is done (ok for this
    key, also when an earlier run's process finished it meanwhile: such a row is never run or failed again)."""
    status = read_json(row_dir(out, row_id) / STATUS_FILE)
    if status and status.get("run") == run_id and status.get("key") == key:
        return True
    return is_done(out, row_id, key, status)


def _wait_for_claimed_rows(out, rows: list[Row], log, wait: float | None = None) -> None:
    """Rows claimed by live processes of an earlier run (orphans of a driver killed on a machine where they could
    not be stopped, e.g. workers of an external Dask cluster still finishing a row): wait up to `wait` seconds
    (CLAIM_WAIT_SECONDS) for them to end, then refuse with BatchError, naming them. Never runs a row twice at once."""
    wait = CLAIM_WAIT_SECONDS if wait is None else wait
    deadline, said = time.monotonic() + wait, False
    while True:
        held = {}
        for row in rows:
            holder = claim_holder(row_dir(out, row.id))
            if holder is not None:
                held[row.id] = holder
        if not held:
            return
        first = next(iter(held.values()))
        if time.monotonic() >= deadline:
            raise BatchError(
                f"{len(held)} row(s) ({', '.join(sorted(held)[:5])}{', ...' if len(held) > 5 else ''}) are still being "
                f"edited by a process of an earlier run: {describe_holder(first)}; waited {wait:g} s. Wait for it "
                f"to end (or stop it: kill {first.get('pid')} on {first.get('host')}), then run the command again")
        if not said:
            log(f"waiting up to {wait:g} s for {len(held)} row(s) still being edited by a process of an earlier "
                f"run ({describe_holder(first)})")
            said = True
        time.sleep(POLL_SECONDS)


def _execute(payloads, executor_kind, workers, scheduler, progress, keys, out, run_id, total, initial, log,
             connected=None) -> list:
    """Submit every chunk; until all are back, poll the rows' status files to advance the progress bar.

    A chunk that ends with an error (its kernel died or ran past --chunk-timeout, its worker process was lost)
    is run once more, in a fresh kernel, with only its rows that have no status of this run; rows still
    unfinished after that are marked failed by _record_unfinished with both errors."""
    executor = connected or _Executor(executor_kind, workers, scheduler, log)
    bar = _progress(total, initial, progress)
    futures = {}
    results, waiting = [], set()
    failures = 0
    cancel = True

    def submit(payload: dict) -> None:
        futures[executor.submit(payload)] = payload

    try:
        for payload in payloads:
            submit(payload)
            waiting.update(row["id"] for row in payload["rows"])
        while futures:
            time.sleep(POLL_SECONDS)
            for row_id in list(waiting):
                if _finished_in_run(out, row_id, keys[row_id], run_id):
                    waiting.discard(row_id)
                    failures += read_json(row_dir(out, row_id) / STATUS_FILE, {}).get("status") != "ok"
                    bar.update(1)
                    if failures:
                        bar.set_postfix(failed=failures)
            for future in [f for f in futures if f.done()]:
                payload = futures.pop(future)
                try:
                    result = future.result()
                except Exception as error:  # the task itself failed (a lost worker process, an import error)
                    result = {"name": payload["name"], "rows": [r["id"] for r in payload["rows"]],
                              "attempt": payload.get("attempt", 1), "wall_seconds": 0.0,
                              "error": f"the worker running the chunk was lost ({type(error).__name__}: {error})"}
                results.append(result)
                if not result.get("error"):
                    continue
                log(f"chunk {result['name']}: {result['error']}")
                left = [row for row in payload["rows"] if not _finished_in_run(out, row["id"], row["key"], run_id)]
                if left and payload.get("attempt", 1) == 1:
                    log(f"chunk {payload['name']}: running its {len(left)} unfinished row(s) once more in a fresh kernel")
                    submit({**payload, "name": payload["name"] + "-retry", "rows": left, "attempt": 2})
        cancel = False
    finally:
        bar.close()
        if executor is not connected:
            executor.close(cancel=cancel)
        elif cancel:  # the external scheduler's client stays open: take back what it still has queued
            for future in futures:
                future.cancel()
        shutdown_warm_kernels(run_id)  # --workers 1 ran them in this process (worker processes' end with them)
    return sorted(results, key=lambda result: result["name"])


def _record_unfinished(out, pending: list[Row], keys, run_id, chunk_results, interrupted: bool, log=None) -> None:
    """A row of this run without a status of this run (its kernel died, timed out, or never started, also when
    run again once) is failed, with its chunks' errors, so the report and the exit code say so; a rerun of the
    command retries it. Never a row that is done (an ok status for its key, from any run), nor one that a live
    process claims (the runner takes the row's claim to write the failure)."""
    errors: dict = {}
    for result in sorted(chunk_results, key=lambda result: result.get("attempt", 1)):
        for row_id in result.get("rows", []):
            errors.setdefault(row_id, []).append((result.get("error"), result.get("notebook")))
    owner = {"run": run_id, "chunk": None, **this_process(), "claimed": now()}
    for row in pending:
        if _finished_in_run(out, row.id, keys[row.id], run_id):
            continue
        if interrupted and row.id not in errors:
            continue  # never started: "not run" in the report
        try:
            claim = RowClaim(row_dir(out, row.id), owner).acquire()
        except RowClaimed as held:
            if log:
                log(f"{held}: left as it is")
            continue
        attempts = errors.get(row.id, [("the run was interrupted", None)])
        message = f"its chunk ended before this row finished: {attempts[0][0] or 'no status was written'}"
        if len(attempts) > 1:
            message += f"; run once more in a fresh kernel: {attempts[-1][0] or 'no status was written'}"
        context = {"run": run_id, "chunk": None, "notebook": attempts[-1][1]}
        try:
            if not is_done(out, row.id, keys[row.id]):  # re-read under the claim
                atomic_write_json(row_dir(out, row.id) / STATUS_FILE,
                                  failed_status({"id": row.id, "key": keys[row.id]}, message, context))
        finally:
            claim.release()


def _entries(out, parsed, valid: list[Row], invalid: list[InvalidRow], keys) -> list[dict]:
    entries = []
    for row in valid:
        status = read_json(row_dir(out, row.id) / STATUS_FILE)
        if not status or status.get("key") != keys[row.id]:
            state = "not run"
            status = None
        else:
            state = "ok" if is_done(out, row.id, keys[row.id], status) else "failed"
            if state == "ok" and status.get("suspect"):  # done, but far below its own VAE round trip
                state = "warning"
        entries.append({"number": row.number, "id": row.id, "state": state, "spec": row.spec, "status": status,
                        "key": keys[row.id]})
    for bad in invalid:
        entries.append({"number": bad.number, "id": bad.id, "state": "invalid", "errors": bad.errors,
                        "values": bad.values})
    return sorted(entries, key=lambda entry: entry["number"])


# ---------------------------------------------------------------------------------------------------------
# Command line
# ---------------------------------------------------------------------------------------------------------


def _at_least_one(text: str) -> int:
    """argparse type of --chunk-size, --workers, --threads: an integer >= 1 (0 and negatives are refused, exit 2)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {text}")
    return value


def _seconds(text: str) -> float:
    """argparse type of --chunk-timeout: a positive, finite number of seconds."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number of seconds, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds, got {text} "
                                         "(leave it out for no limit)")
    return value


HELP_EPILOG = textwrap.fill(
    "Suspect rows are done but reported as 'warning' with their numbers: a reconstruction more than 10 dB below the "
    "input's own VAE round trip, an edit's background (outside a scene's objects) more than 15 dB below it, or a "
    "round trip below 20 dB (the model cannot represent the input). Image paths are read relative to the manifest's "
    "folder and must stay inside it (--allow-images-outside lifts that). Workers and kernels end when this command "
    "dies; a rerun resumes, never editing a finished row again. Exit codes: 0 all rows done, 1 a row failed or was "
    "skipped as invalid, 2 invalid manifest or command, 130 interrupted.", width=100,
)


def add_arguments(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    if not parser.epilog:
        parser.epilog = HELP_EPILOG
    parser.add_argument("manifest", help="CSV or YAML manifest: one edit per row (see the README's \"Batch editing\" "
                                         "section)")
    parser.add_argument("--out", required=True, help="output folder (rows/, notebooks/, report.html, ...)")
    parser.add_argument("--model", default="shapes-tiny",
                        help="built-in model name, diffusers folder or hub id (default: shapes-tiny)")
    parser.add_argument("--chunk-size", type=_at_least_one, default=DEFAULT_CHUNK_SIZE,
                        help=f"rows per papermill run (one kernel, one model load); default {DEFAULT_CHUNK_SIZE}")
    parser.add_argument("--workers", type=_at_least_one, default=1,
                        help="chunks in parallel (local processes or Dask workers); default 1")
    parser.add_argument("--executor", choices=EXECUTORS, default="local",
                        help="local processes, or a Dask cluster (default: local)")
    parser.add_argument("--scheduler", default=None,
                        help="Dask scheduler address (tcp://host:8786) or scheduler file (.json); "
                             "none: a LocalCluster of --workers processes")
    parser.add_argument("--skip-invalid", action="store_true", help="run the valid rows and report the invalid ones")
    parser.add_argument("--validate-only", action="store_true", help="check the manifest and stop")
    parser.add_argument("--kernel", default=DEFAULT_KERNEL, help="Jupyter kernel name (default: python3)")
    parser.add_argument("--chunk-timeout", type=_seconds, default=None,
                        help="seconds a chunk may run, kernel start and model load included; its kernel is then "
                             "stopped and its unfinished rows run once more (default: no limit)")
    parser.add_argument("--threads", type=_at_least_one, default=None,
                        help="torch threads per kernel, at least 1 (default: idle CPU cores / workers locally, "
                             "the worker's own idle cores on Dask)")
    parser.add_argument("--warm-kernels", action="store_true",
                        help="keep one kernel per local worker across chunks: kernel start, imports and model load "
                             "once per worker instead of once per chunk (the chunk notebooks run with nbclient)")
    parser.add_argument("--allow-images-outside", action="store_true",
                        help="read image files outside the manifest's folder too (by default an image path must "
                             "resolve inside it: relative paths are read from there, '../x' and absolute paths "
                             "elsewhere are invalid rows)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def run_from_args(args: argparse.Namespace) -> int:
    from ..models import ModelNotFoundError

    try:
        result = run_batch(
            args.manifest, args.out, args.model, chunk_size=args.chunk_size, workers=args.workers,
            executor=args.executor, scheduler=args.scheduler, skip_invalid=args.skip_invalid,
            progress=not args.no_progress, kernel_name=args.kernel, chunk_timeout=args.chunk_timeout,
            threads=args.threads, validate_only=args.validate_only, warm_kernels=args.warm_kernels,
            allow_images_outside=args.allow_images_outside,
        )
    except (BatchError, ManifestError, ModelNotFoundError, OutputLockedError, UnsafePathError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return result.exit_code


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="diffusion-lab batch", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    return run_from_args(add_arguments(parser).parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
