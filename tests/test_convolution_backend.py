"""CPU convolution backend choice: small latents on native kernels, same numbers, PyTorch's setting restored."""

import pytest
import torch

from diffusion_lab.runtime.convolution_backend import NATIVE_MAX_AREA, convolution_backend, use_native_convolutions
from diffusion_lab.denoisers import TextConditionedDenoiser
from diffusion_lab.models.tiny_random import build_tiny_random_pipeline


def test_choice_by_latent_area_and_setting(monkeypatch):
    monkeypatch.delenv("DIFFUSION_LAB_CPU_CONVOLUTIONS", raising=False)
    small, large = torch.zeros(2, 4, 16, 16), torch.zeros(2, 4, 64, 64)
    assert 16 * 16 <= NATIVE_MAX_AREA < 64 * 64
    assert use_native_convolutions(small) and not use_native_convolutions(large)
    assert use_native_convolutions(large, "native") and not use_native_convolutions(small, "onednn")
    monkeypatch.setenv("DIFFUSION_LAB_CPU_CONVOLUTIONS", "onednn")
    assert not use_native_convolutions(small)
    monkeypatch.setenv("DIFFUSION_LAB_CPU_CONVOLUTIONS", "fast")
    with pytest.raises(ValueError, match="DIFFUSION_LAB_CPU_CONVOLUTIONS='fast': use one of auto, onednn, native"):
        use_native_convolutions(small)


def test_setting_restored_also_after_an_error():
    before = torch.backends.mkldnn.enabled
    with pytest.raises(RuntimeError, match="inside"):
        with convolution_backend(torch.zeros(1, 4, 8, 8), "native") as native:
            assert native and torch.backends.mkldnn.enabled is False
            raise RuntimeError("inside")
    assert torch.backends.mkldnn.enabled == before


def test_native_and_onednn_give_the_same_unet_output(monkeypatch):
    pipe = build_tiny_random_pipeline(seed=0)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(1, 4, 16, 16, generator=generator)
    text = torch.randn(1, pipe.tokenizer.model_max_length, pipe.unet.config.cross_attention_dim, generator=generator)
    outputs = {}
    for backend in ("native", "onednn"):
        monkeypatch.setenv("DIFFUSION_LAB_CPU_CONVOLUTIONS", backend)
        with torch.no_grad():
            outputs[backend] = TextConditionedDenoiser(pipe.unet, text, torch.zeros_like(text), guidance_scale=3.0)(x, 500, 0)
    assert torch.allclose(outputs["native"], outputs["onednn"], atol=1e-5)
