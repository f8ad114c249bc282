"""Which CPU convolution kernels run a UNet call: oneDNN (mkldnn) or PyTorch's native ones.

PyTorch sends CPU convolutions to oneDNN by default. oneDNN pays a fixed cost per call (primitive set-up and layout
conversions), which pays off for large feature maps and loses on small ones. A denoising loop calls the same
small convolutions thousands of times, so for small latents the native kernels win (measurements: README, "Speed
on a CPU"; `python pipelines/bench_speed.py`).

So `convolution_backend` picks native kernels on the CPU when the latent has at most `NATIVE_MAX_AREA` pixels and
leaves everything else (GPUs, 512x512 Stable Diffusion, training batches) to PyTorch's default, except for a call
of a workload that runs a frozen trace (traced_unet.py; also its eager calls before the trace, so that both compute
alike) with a batch of 2 rows or more: there the Python of the eager UNet is gone and oneDNN's larger kernels win
(measured per workload; README, "Speed on a CPU"). Set the environment variable
DIFFUSION_LAB_CPU_CONVOLUTIONS to "onednn" or "native" to force one.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Iterator

import torch

NATIVE_MAX_AREA = 32 * 32
TRACED_ONEDNN_MIN_ROWS = 2  # a traced call of this many rows or more runs on oneDNN
CHOICES = ("auto", "onednn", "native")


def cpu_convolutions_setting() -> str:
    """The DIFFUSION_LAB_CPU_CONVOLUTIONS environment variable: auto (default), onednn or native."""
    value = os.environ.get("DIFFUSION_LAB_CPU_CONVOLUTIONS", "auto").strip().lower() or "auto"
    if value not in CHOICES:
        raise ValueError(f"DIFFUSION_LAB_CPU_CONVOLUTIONS={value!r}: use one of {', '.join(CHOICES)}")
    return value


def use_native_convolutions(x: torch.Tensor, setting: str | None = None, traced: bool = False) -> bool:
    """True when a UNet call on x (B, C, h, w) should run on PyTorch's native CPU convolutions; traced: the call
    runs a frozen trace (then oneDNN from 2 rows on)."""
    setting = cpu_convolutions_setting() if setting is None else setting
    if setting not in CHOICES:
        raise ValueError(f"setting {setting!r}: use one of {', '.join(CHOICES)}")
    if x.device.type != "cpu" or setting == "onednn":
        return False
    if setting == "native":
        return True
    return x.shape[-2] * x.shape[-1] <= NATIVE_MAX_AREA and not (traced and x.shape[0] >= TRACED_ONEDNN_MIN_ROWS)


@contextmanager
def convolution_backend(x: torch.Tensor, setting: str | None = None, traced: bool = False) -> Iterator[bool]:
    """Run the body with the CPU convolution kernels `use_native_convolutions` picks for x; yields that choice.

    Restores PyTorch's previous setting afterwards, also on errors.
    """
    native = use_native_convolutions(x, setting, traced)
    previous = torch.backends.mkldnn.enabled
    if native:
        torch.backends.mkldnn.enabled = False
    try:
        yield native
    finally:
        torch.backends.mkldnn.enabled = previous
