"""Atomic file writes: a file appears under its final name only when complete.

It is written to a hidden temporary file `.NAME.xxxxxxxx.tmp` in the SAME folder (so on the same file system),
created as open() creates files (the umask applies), and moved into place with os.replace, which is atomic on
POSIX and Windows: a reader, or a run killed at any moment, sees the old file or the new one, never half of one.
Used by the batch runner (diffusion_lab.batch.files, which also sweeps the leftovers of killed runs), saved
inversions (Inversion.save) and training checkpoints.
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path

TMP_SUFFIX = ".tmp"


def _temporary_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.{secrets.token_hex(4)}{TMP_SUFFIX}")


def _stage(path: Path, data: bytes, fsync: bool = True) -> Path:
    """Write `data` completely to a new hidden temporary file next to `path` (its folder made if needed) and return
    the temporary file's path; on any failure the temporary file is removed and the error raised."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _temporary_name(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)  # umask applies
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            if fsync:
                os.fsync(handle.fileno())
    except BaseException:
        _remove(tmp)
        raise
    return tmp


def _remove(tmp: Path) -> None:
    try:
        os.unlink(tmp)
    except OSError:
        pass


def atomic_write_bytes(path: str | os.PathLike, data: bytes, fsync: bool = True) -> Path:
    """Write `data` to a hidden temporary file next to `path`, then os.replace it into place."""
    path = Path(path)
    tmp = _stage(path, data, fsync)
    try:
        os.replace(tmp, path)
    except BaseException:
        _remove(tmp)
        raise
    return path


def atomic_write_many(contents: dict) -> dict:
    """Write several files {path: bytes} that must agree (the report's md, html and summary.json): every one is
    written completely to its temporary file first, and only then are they moved into place, one os.replace
    after the other (microseconds apart), so a kill leaves the old set or the new set, not a mix written
    seconds apart. Returns {path: Path}."""
    staged = []
    try:
        for path, data in contents.items():
            path = Path(path)
            staged.append((_stage(path, data), path))
    except BaseException:
        for tmp, _ in staged:
            _remove(tmp)
        raise
    for tmp, path in staged:
        os.replace(tmp, path)
    return {path: path for _, path in staged}


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, data) -> Path:
    """Strict JSON (allow_nan=False: NaN and Infinity are not JSON; other readers refuse them): ValueError."""
    return atomic_write_text(path, json.dumps(data, indent=2, sort_keys=False, allow_nan=False) + "\n")
