"""A run folder's files: the log (log.jsonl, also printed) and safetensors written atomically (whole or absent)."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Optional

from safetensors.torch import save

from ..atomic_files import atomic_write_bytes


def log_record(run_dir: Path, record: dict) -> None:
    record = {"time": round(time.time(), 1), **record}
    with open(run_dir / "log.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")
    print(json.dumps(record), flush=True)


def atomic_save_file(tensors: dict, path: Path, metadata: Optional[dict] = None) -> None:
    """Tensors as safetensors, written atomically with the umask's permissions (diffusion_lab.atomic_files)."""
    data = save({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, metadata=metadata)
    atomic_write_bytes(path, data)
