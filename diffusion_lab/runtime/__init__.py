"""The runtime corner: how a UNet call runs fast on this machine, without changing what it computes.

    output = call_unet(unet, x_t, t, text_embeddings, **unet_kwargs)   # = unet(...).sample

is the one function the maths (denoisers.TextConditionedDenoiser) calls. Around the plain call it applies two
tricks that leave the numbers as they are (to ~1e-6):
    convolution_backend.py   PyTorch's native CPU convolution kernels instead of oneDNN for small latents
                             (DIFFUSION_LAB_CPU_CONVOLUTIONS=auto|onednn|native)
    traced_unet.py           a frozen TorchScript trace of a small UNet for CPU inference, also with a
                             Prompt-to-Prompt controller registered, also with autograd on
                             (DIFFUSION_LAB_TRACED_UNET=1|inference|plain|0)
Benchmarks reset the trace with `forget_traces(unet)` (the first sample then pays for tracing) and read
`CALLS_BEFORE_TRACING`. Measured speed-ups: README, "Speed" (`python pipelines/bench_speed.py`).
"""

from __future__ import annotations

from torch import Tensor, nn

from .convolution_backend import CHOICES as CONVOLUTION_CHOICES
from .convolution_backend import convolution_backend
from .traced_unet import CALLS_BEFORE_TRACING, forget_traces, unet_sample

__all__ = ["CALLS_BEFORE_TRACING", "CONVOLUTION_CHOICES", "call_unet", "convolution_backend", "forget_traces"]


def call_unet(unet: nn.Module, sample: Tensor, t: int | Tensor, encoder_hidden_states: Tensor, **unet_kwargs) -> Tensor:
    """unet(sample, t, encoder_hidden_states=..., **unet_kwargs).sample, run with the CPU convolution kernels that
    suit the latent size and through a frozen trace where that cannot change the result."""
    return unet_sample(unet, sample, t, encoder_hidden_states, **unet_kwargs)  # in convolution_backend(sample, ...)
