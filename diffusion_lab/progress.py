"""Progress bars (tqdm.auto) that tests and batch logs can silence.

Set DIFFUSION_LAB_NO_PROGRESS=1 (the test suite and batch runs do) to turn every bar off.
"""

from __future__ import annotations

import os


def progress_enabled(requested: bool = True) -> bool:
    return bool(requested) and os.environ.get("DIFFUSION_LAB_NO_PROGRESS", "") not in ("1", "true", "yes")


def progress_bar(iterable, enabled: bool = True, **kwargs):
    """`tqdm.auto.tqdm(iterable)` when enabled (and not silenced by the environment), else the iterable."""
    if not progress_enabled(enabled):
        return iterable
    from tqdm.auto import tqdm

    return tqdm(iterable, **kwargs)
