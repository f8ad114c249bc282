"""A row is claimed before it starts: rows/<id>/.claim, locked (fcntl.flock) by the process that edits the row.

    with RowClaim(row_folder, owner):    # RowClaimed when a live process holds it (its run, host and pid)
        re-read the row's status; skip it when it is done; else edit it and write its status

The lock is the claim: it is held while the row runs and released when its process ends, however it ends (kill
-9, a lost node), so a claim can never be left behind by a dead process and nothing guesses from pids or times
whether its holder still lives. The file stays (as OUT/.batch.lock does) and holds the last holder's identity
(run id, chunk, host, pid, when), which is what a refused claim reports. The runner takes the same claim before
it marks an unfinished row failed, so it never overwrites a row that a live process is editing.

Where fcntl is missing (Windows) the claim is advisory only: the identity is written, nothing is locked.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from .files import FileLockHeld, hold_file_lock

CLAIM_FILE = ".claim"


class RowClaimed(RuntimeError):
    """Another live process holds the row's claim; `holder` is its identity (run, host, pid, ...) or {}."""

    def __init__(self, row_id: str, holder: dict):
        self.row_id, self.holder = row_id, holder
        super().__init__(f"row {row_id!r} is being edited by {describe_holder(holder)}")


def describe_holder(holder: dict) -> str:
    if not holder:
        return "another process (its claim names no one)"
    return (f"pid {holder.get('pid')} on {holder.get('host')} (run {holder.get('run')}, since "
            f"{holder.get('claimed', '?')})")


def _parse_holder(text: str) -> dict:
    try:
        holder = json.loads(text or "{}")
    except ValueError:
        return {}
    return holder if isinstance(holder, dict) else {}


def _read_holder(handle) -> dict:
    try:
        handle.seek(0)
        return _parse_holder(handle.read())
    except OSError:
        return {}


class RowClaim:
    """The claim on one row's folder; `owner` (plain JSON) is written into the claim file once it is held."""

    def __init__(self, folder: str | os.PathLike, owner: dict):
        self.folder = Path(folder)
        self.path = self.folder / CLAIM_FILE
        self.owner = owner
        self._handle = None

    def acquire(self) -> "RowClaim":
        try:
            self._handle = hold_file_lock(self.path, json.dumps(self.owner))
        except FileLockHeld as held:
            raise RowClaimed(self.folder.name, _parse_holder(held.text)) from None
        return self

    def release(self) -> None:
        if self._handle is not None:
            self._handle.close()  # closing the descriptor releases the flock
            self._handle = None

    def __enter__(self) -> "RowClaim":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def claim_holder(folder: str | os.PathLike) -> dict | None:
    """The identity of the live process holding the row's claim, or None when no one holds it."""
    path = Path(folder) / CLAIM_FILE
    if not path.is_file():
        return None
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows: claims lock nothing
        return None
    with open(path, encoding="utf-8") as handle:
        try:
            fcntl.flock(handle.fileno(), fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError:
            return _read_holder(handle)
    return None
