"""Which CPU convolution kernels run a UNet call: oneDNN (mkldnn) or PyTorch's native ones.

PyTorch sends CPU convolutions to oneDNN by default. oneDNN pays a fixed cost per call (primitive set-up and layout
conversions), which pays off for large feature maps and loses on small ones. A denoising loop calls the same
small convolutions thousands of times, so for small latents the native kernels win (measurements: README, "Speed
on a CPU"; `python pipelines/bench_speed.py`).

So `convolution_backend` picks native kernels on the CPU when the latent has at most `NATIVE_MAX_AREA` pixels and
leaves everything else (GPUs, 512x512 Stable Diffusion, training batches) to PyTorch's default. Set the
environment variable DIFFUSION_LAB_CPU_CONVOLUTIONS to "onednn" or "native" to force one.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Iterator

import torch

NATIVE_MAX_AREA = 32 * 32
CHOICES = ("auto", "onednn", "native")


def cpu_convolutions_setting() -> str:
    """The DIFFUSION_LAB_CPU_CONVOLUTIONS environment variable: auto (default), onednn or native."""
    value = os.environ.get("DIFFUSION_LAB_CPU_CONVOLUTIONS", "auto").strip().lower() or "auto"
    if value not in CHOICES:
        raise ValueError(f"DIFFUSION_LAB_CPU_CONVOLUTIONS={value!r}: use one of {', '.join(CHOICES)}")
    return value


def use_native_convolutions(x: torch.Tensor, setting: str | None = None) -> bool:
    """True when a UNet call on x (B, C, h, w) should run on PyTorch's native CPU convolutions."""
    setting = cpu_convolutions_setting() if setting is None else setting
    if setting not in CHOICES:
        raise ValueError(f"setting {setting!r}: use one of {', '.join(CHOICES)}")
    if x.device.type != "cpu" or setting == "onednn":
        return False
    return setting == "native" or x.shape[-2] * x.shape[-1] <= NATIVE_MAX_AREA


@contextmanager
def convolution_backend(x: torch.Tensor, setting: str | None = None) -> Iterator[bool]:
    """Run the body with the CPU convolution kernels `use_native_convolutions` picks for x; yields that choice.

    Restores PyTorch's previous setting afterwards, also on errors.
    """
    native = use_native_convolutions(x, setting)
    previous = torch.backends.mkldnn.enabled
    if native:
        torch.backends.mkldnn.enabled = False
    try:
        yield native
    finally:
        torch.backends.mkldnn.enabled = previous
