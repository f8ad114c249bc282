"""Files of a batch run: atomic writes (diffusion_lab.atomic_files), paths that cannot leave the output folder,
leftovers of killed runs.

Every file a batch run writes appears under its final name only when complete: it is written to a hidden
temporary file in the SAME folder (so on the same file system) and moved into place with os.replace, which is
atomic on POSIX and Windows. A run killed at any moment therefore leaves complete files plus, at worst, hidden
`.NAME.*.tmp` files (and `.NAME.partial.ipynb` notebooks), which the next run removes (`sweep_leftovers`).
"""

from __future__ import annotations

import io
import json
import os
import re
from pathlib import Path

from ..atomic_files import (  # noqa: F401  (the batch modules import them from here)
    TMP_SUFFIX,
    atomic_write_bytes,
    atomic_write_json,
    atomic_write_many,
    atomic_write_text,
)

PARTIAL_NOTEBOOK_SUFFIX = ".partial.ipynb"
_TMP_PATTERN = re.compile(r"^\..+\.[0-9a-f]{8}\.tmp$")


class UnsafePathError(ValueError):
    """A path that would leave the batch output folder."""


def inside(root: str | os.PathLike, *parts: str) -> Path:
    """root/parts..., resolved (symbolic links followed), or UnsafePathError when it is not inside root."""
    base = Path(root).resolve()
    target = base.joinpath(*parts).resolve()
    if target != base and base not in target.parents:
        raise UnsafePathError(f"{'/'.join(parts)!r} resolves to {str(target)!r}, outside the output folder {str(base)!r}")
    return target


def atomic_write_png(path: str | os.PathLike, picture) -> Path:
    """A PIL image or uint8 array (H, W, 3) as PNG."""
    from PIL import Image

    if not isinstance(picture, Image.Image):
        from ..viz import to_uint8_image

        picture = Image.fromarray(to_uint8_image(picture))
    buffer = io.BytesIO()
    picture.convert("RGB").save(buffer, format="png")
    return atomic_write_bytes(path, buffer.getvalue())


def read_json(path: str | os.PathLike, default=None):
    """The JSON in `path`, or `default` when it is missing or unreadable (never unpickles anything)."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return default


def sweep_leftovers(out_dir: str | os.PathLike) -> list[Path]:
    """Remove the temporary files of killed runs (hidden `.NAME.xxxxxxxx.tmp`, `.NAME.partial.ipynb`) under
    out_dir. Call it only while holding the run lock (no other run writes there)."""
    removed = []
    root = Path(out_dir)
    if not root.is_dir():
        return removed
    for folder, _, files in os.walk(root):
        for name in files:
            if name.startswith(".") and (_TMP_PATTERN.match(name) or name.endswith(PARTIAL_NOTEBOOK_SUFFIX)):
                path = Path(folder) / name
                try:
                    path.unlink()
                    removed.append(path)
                except OSError:
                    pass
    return removed


class OutputLockedError(RuntimeError):
    """Another batch run holds the output folder."""


class FileLockHeld(OSError):
    """Another live process holds the flock of `path`; `text` is what that holder wrote into the file ('' if nothing)."""

    def __init__(self, path: Path, text: str):
        self.path, self.text = path, text
        super().__init__(f"{path} is locked by another process")


def hold_file_lock(path: Path, text: str):
    """Take an exclusive, non-blocking flock on `path` (made if missing), write `text` into it (who holds it) and
    return the open file: the lock lasts while it stays open and ends with the process, however it ends. Raises
    FileLockHeld with the holder's text when a live process holds it. Where fcntl is missing (Windows) nothing is
    locked and the file is only a note of who wrote it last."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle = open(path, "a+", encoding="utf-8")
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        fcntl = None
    if fcntl is not None:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            try:
                handle.seek(0)
                held_by = handle.read()
            except OSError:
                held_by = ""
            handle.close()
            raise FileLockHeld(path, held_by) from None
    handle.seek(0)
    handle.truncate()
    handle.write(text)
    handle.flush()
    return handle


class RunLock:
    """An exclusive lock on an output folder (fcntl.flock on OUT/.batch.lock), released when the process ends,
    however it ends. Where fcntl is missing (Windows) the lock is advisory only (a pid file).

    The file stays after a run, on purpose: the lock is the flock on the open file, not the file's existence, so
    a leftover file locks nothing (it holds the pid of the last run). Deleting it on release would let two runs
    lock two different files: one that opened the old file just before it was deleted, and one that then made a
    new file."""

    def __init__(self, out_dir: str | os.PathLike):
        self.path = Path(out_dir) / ".batch.lock"
        self._handle = None

    def acquire(self) -> "RunLock":
        try:
            self._handle = hold_file_lock(self.path, str(os.getpid()))
        except FileLockHeld as held:
            owner = held.text.strip() or "unknown"
            raise OutputLockedError(
                f"another batch run (pid {owner}) is writing to {self.path.parent}; wait for it to finish, "
                "or choose another --out"
            ) from None
        return self

    def release(self) -> None:
        if self._handle is not None:
            self._handle.close()  # closing the descriptor releases flock
            self._handle = None

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()
