"""The frozen-trace fast path of the UNet: the same numbers as eager diffusers, and only where that is safe."""

import warnings

import pytest
import torch

from diffusion_lab.runtime import traced_unet
from diffusion_lab.attention import AttentionStore, register_attention_control
from diffusion_lab.models.tiny_random import build_tiny_random_pipeline
from diffusion_lab.runtime.traced_unet import CALLS_BEFORE_TRACING, _traces, unet_sample


@pytest.fixture()
def unet_and_inputs():
    pipe = build_tiny_random_pipeline(seed=0)
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(2, 4, 16, 16, generator=generator)
    text = torch.randn(2, 7, pipe.unet.config.cross_attention_dim, generator=generator)
    return pipe.unet.eval(), x, text


def _call_until_traced(unet, x, t, text):
    with torch.no_grad():
        for _ in range(CALLS_BEFORE_TRACING + 1):
            output = unet_sample(unet, x, t, text)
    return output


def test_trace_gives_the_eager_output_for_other_batches_and_timesteps(unet_and_inputs):
    unet, x, text = unet_and_inputs
    _call_until_traced(unet, x, 500, text)
    assert len(_traces(unet).graphs) == 1
    with torch.no_grad():
        for batch, t in ((2, 500), (1, 981), (3, 1), (2, torch.tensor([10, 900]))):
            xb, tb = x[:1].expand(batch, -1, -1, -1).contiguous(), text[:1].expand(batch, -1, -1)
            eager = unet(xb, t, encoder_hidden_states=tb).sample
            assert torch.allclose(unet_sample(unet, xb, t, tb), eager, atol=1e-5)
    assert len(_traces(unet).graphs) == 1  # the batch size is not part of the key


def test_changed_weights_are_never_served_from_a_stale_trace(unet_and_inputs):
    unet, x, text = unet_and_inputs
    _call_until_traced(unet, x, 500, text)
    with torch.no_grad():
        unet.conv_out.bias.add_(1.0)  # in place, as an optimizer step does
        eager = unet(x, 500, encoder_hidden_states=text).sample
        assert torch.allclose(unet_sample(unet, x, 500, text), eager, atol=1e-5)
    assert not _traces(unet).graphs  # traces of the old weights were dropped


def test_controllers_autograd_and_the_switch_run_the_eager_unet(unet_and_inputs, monkeypatch):
    unet, x, text = unet_and_inputs
    _call_until_traced(unet, x, 500, text)
    store = AttentionStore(num_prompts=2)
    store.set_batch_layout(2, has_uncond=False)
    store.set_step(0, 1)
    with register_attention_control(unet, store), torch.no_grad():
        unet_sample(unet, x, 500, text)
    assert store.available_resolutions(is_cross=True), "the controller must see the call, so the trace must not run"
    output = unet_sample(unet, x.requires_grad_(), 500, text)  # autograd on: eager, with a graph
    assert output.requires_grad
    monkeypatch.setenv("DIFFUSION_LAB_TRACED_UNET", "0")
    calls = []
    monkeypatch.setattr(traced_unet, "_traces", lambda unet: calls.append(unet))
    with torch.no_grad():
        unet_sample(unet, x.detach(), 500, text)
    assert not calls
    monkeypatch.setenv("DIFFUSION_LAB_TRACED_UNET", "maybe")
    with pytest.raises(ValueError, match="use 1 \\(on\\)"):
        traced_unet.traced_unet_enabled()


def test_a_failing_trace_falls_back_to_eager_with_one_warning(unet_and_inputs, monkeypatch):
    unet, x, text = unet_and_inputs

    def no_torchscript(*args, **kwargs):
        raise RuntimeError("TorchScript is not available")

    monkeypatch.setattr(traced_unet, "_trace", no_torchscript)
    with pytest.warns(UserWarning, match="could not trace the UNet"):
        output = _call_until_traced(unet, x, 500, text)
    with torch.no_grad():
        assert torch.allclose(output, unet(x, 500, encoder_hidden_states=text).sample, atol=1e-5)  # native convolutions
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            unet_sample(unet, x, 500, text)  # no second warning


def test_differentiated_calls_are_traced_with_the_eager_gradients(unet_and_inputs, monkeypatch):
    """With autograd on (null-text inversion's inner loop) a plain call runs a trace that is not frozen: the same
    output and the same gradient in the text embeddings as the eager UNet; =inference leaves them eager."""
    unet, x, text = unet_and_inputs

    def output_and_gradient():
        embeddings = text.clone().requires_grad_(True)
        output = unet_sample(unet, x, 500, embeddings)
        (gradient,) = torch.autograd.grad(output.square().sum(), [embeddings])
        return output.detach(), gradient

    monkeypatch.setenv("DIFFUSION_LAB_TRACED_UNET", "inference")
    for _ in range(CALLS_BEFORE_TRACING + 1):
        eager_output, eager_gradient = output_and_gradient()
    assert not _traces(unet).graphs
    monkeypatch.setenv("DIFFUSION_LAB_TRACED_UNET", "1")
    for _ in range(CALLS_BEFORE_TRACING + 1):
        output, gradient = output_and_gradient()
    assert len(_traces(unet).graphs) == 1 and next(iter(_traces(unet).graphs))[-1] is True  # the differentiable key
    assert torch.allclose(output, eager_output, atol=1e-5)
    assert torch.allclose(gradient, eager_gradient, atol=1e-5, rtol=1e-4)
