"""A run folder's files: the log (log.jsonl, also printed) and safetensors written atomically (whole or absent)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Optional

from safetensors.torch import save_file


def log_record(run_dir: Path, record: dict) -> None:
    record = {"time": round(time.time(), 1), **record}
    with open(run_dir / "log.jsonl", "a") as f:
        f.write(json.dumps(record) + "\n")
    print(json.dumps(record), flush=True)


def atomic_save_file(tensors: dict, path: Path, metadata: Optional[dict] = None) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    save_file({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, str(tmp), metadata=metadata)
    os.replace(tmp, path)
