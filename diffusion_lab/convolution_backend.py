"""Which CPU convolution kernels run a UNet call: oneDNN (mkldnn) or PyTorch's native ones.

PyTorch sends CPU convolutions to oneDNN by default. oneDNN pays a fixed cost per call (primitive set-up and layout
conversions), which pays off for large feature maps and loses on small ones. A denoising loop calls the same
small convolutions thousands of times, so for small latents the native kernels win. Measured on the 2-core CPU
of the course machines:

- shapes-tiny (16x16 latents), 50-step DDIM sample with guidance at batch 1, `python pipelines/bench_speed.py
  --threads 2`: median 1.13 s with native kernels against 1.41 s with oneDNN (a second run: 1.61 s against 1.99 s).
- a Stable Diffusion 1.x-sized UNet (random weights, 1 thread, batch 2, one forward; measured while another job
  shared the CPU, `bench_speed.py --sd-sides 16 32 64` repeats it): 16x16 latents 4.2 s with oneDNN against 3.5 s
  native; 32x32 14.2 s against 9.1 s; 64x64 (512x512 images) 38.8 s against 41.6 s.

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
