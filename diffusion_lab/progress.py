"""Progress bars (tqdm.auto) that tests and batch logs can silence.

Set DIFFUSION_LAB_NO_PROGRESS=1 (the test suite and batch runs do) to turn every bar off.
"""

from __future__ import annotations

import os
from typing import Iterable, TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")
NO_PROGRESS_ENV = "DIFFUSION_LAB_NO_PROGRESS"


def progress_disabled_by_env() -> bool:
    return os.environ.get(NO_PROGRESS_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def progress_bar(iterable: Iterable[T], enabled: bool = True, **kwargs) -> Iterable[T]:
    """tqdm.auto progress bar, silent when `enabled` is False or DIFFUSION_LAB_NO_PROGRESS=1."""
    return tqdm(iterable, disable=not enabled or progress_disabled_by_env(), **kwargs)
