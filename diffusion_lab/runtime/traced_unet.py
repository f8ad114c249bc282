"""A traced, frozen copy of a small UNet for plain inference on the CPU: the same numbers, less Python.

A denoising loop calls the UNet hundreds of times with the same shapes. For a model as small as shapes-tiny,
diffusers' Python (module calls, checks, reshapes; about 200 modules per call) costs about as much on a CPU as
the arithmetic. `torch.jit.trace` records one call as a graph, `torch.jit.freeze` folds the weights into it,
and later calls run in the TorchScript interpreter (the speed-up: README, "Speed on a CPU";
`python pipelines/bench_speed.py`).

It is used only where it cannot change a result (outputs agree with the eager UNet to ~1e-6):
- the UNet is on the CPU, in eval mode, no extra UNet arguments;
- with autograd on (null-text inversion differentiates the UNet in its text embeddings) only without a controller,
  through a trace that is not frozen (autograd runs through the graph: gradients agree with the eager ones to ~1e-6);
- every attention layer runs one of diffusers' stock processors, or a Prompt-to-Prompt controller registered with
  attention.register_attention_control whose class is marked traceable: the controller's per-step tensors (the
  replacement schedule's alpha, the edit's mappers, a replayed source's attention) are inputs of the graph and its
  effects (the stored maps) extra outputs, applied after the call; one graph per `trace_key` (which layers are
  edited at this step), shared by all steps and edits with that key. Any other processor: the UNet runs as usual;
- the weights are the ones the trace saw: a parameter changed in place (training) or replaced starts over;
- the UNet is small (at most `MAX_PARAMETERS`): for Stable Diffusion the arithmetic dominates anyway.
A trace is made only after `CALLS_BEFORE_TRACING` eager calls with the same weights and input sizes (tracing
takes about a second), so short runs, tests and one-off calls never pay for it. The batch size may change
between calls; the latent and text sizes are part of the key. Set DIFFUSION_LAB_TRACED_UNET=0 to turn it off
(=plain: only calls without a controller and without autograd; =inference: only calls without autograd).
"""

from __future__ import annotations

import os
import warnings
import weakref

import torch
from torch import Tensor, nn

from .convolution_backend import convolution_backend

MAX_PARAMETERS = 20_000_000
CONTROL_ATTRIBUTE = "_diffusion_lab_attention_control"  # set by attention.register_attention_control
CALLS_BEFORE_TRACING = 20
_EAGER = object()  # the "trace" of a key whose tracing failed


def traced_unet_setting() -> str:
    """DIFFUSION_LAB_TRACED_UNET: "1" (default: plain, controlled and differentiated calls), "plain" (only calls
    without an attention controller and without autograd, as before controlled calls were traced), "inference"
    (only calls without autograd, as before null-text's gradients were traced) or "0" (never)."""
    value = os.environ.get("DIFFUSION_LAB_TRACED_UNET", "1").strip().lower()
    if value not in ("0", "1", "false", "true", "no", "yes", "off", "on", "", "plain", "inference"):
        raise ValueError(f"DIFFUSION_LAB_TRACED_UNET={value!r}: use 1 (on), plain (only without a controller or "
                         "autograd), inference (only without autograd) or 0 (off)")
    if value in ("plain", "inference"):
        return value
    return "1" if value in ("1", "true", "yes", "on", "") else "0"


def traced_unet_enabled() -> bool:
    """DIFFUSION_LAB_TRACED_UNET is not 0."""
    return traced_unet_setting() != "0"


class _PositionalUNet(nn.Module):
    """unet(sample, timesteps, encoder_hidden_states) -> sample tensor: the signature torch.jit.trace needs."""

    def __init__(self, unet: nn.Module):
        super().__init__()
        self.unet = unet

    def forward(self, sample: Tensor, timesteps: Tensor, encoder_hidden_states: Tensor) -> Tensor:
        return self.unet(sample, timesteps, encoder_hidden_states=encoder_hidden_states, return_dict=False)[0]


class _ControlledPositionalUNet(nn.Module):
    """unet(sample, timesteps, encoder_hidden_states) with a registered controller reading `inputs` (by `names`):
    returns (sample, *the controller's deferred effects), whose layout `schema` holds after tracing."""

    def __init__(self, unet: nn.Module, control, names: tuple[str, ...]):
        super().__init__()
        self.unet, self.names = unet, names
        object.__setattr__(self, "control", control)  # not a submodule
        self.schema: list | None = None

    def forward(self, sample: Tensor, timesteps: Tensor, encoder_hidden_states: Tensor, *inputs: Tensor):
        self.control.begin_traced_call(self.names, inputs)
        try:
            output = self.unet(sample, timesteps, encoder_hidden_states=encoder_hidden_states, return_dict=False)[0]
        finally:
            self.schema, effects = self.control.end_traced_call()
        return (output, *effects)


class _UNetTraces:
    """The traces of one UNet, keyed by input sizes, valid for one version of its weights."""

    def __init__(self, unet: nn.Module):
        from diffusers.models.attention_processor import Attention, AttnProcessor, AttnProcessor2_0

        self.stock_processors = (AttnProcessor, AttnProcessor2_0)
        self.attention_modules = [m for m in unet.modules() if isinstance(m, Attention)]
        self.tensors = list(unet.parameters()) + list(unet.buffers())
        self.small = sum(p.numel() for p in unet.parameters()) <= MAX_PARAMETERS
        self.weights_key = None
        self.calls: dict[tuple, int] = {}
        self.graphs: dict[tuple, torch.jit.ScriptModule] = {}
        self.schemas: dict[tuple, list] = {}  # a controlled graph's extra outputs

    def stock_attention(self) -> bool:
        return all(type(m.processor) in self.stock_processors for m in self.attention_modules)

    def current_weights_key(self) -> tuple:
        return tuple((t.data_ptr(), t._version, t.dtype) for t in self.tensors)


_TRACES: "weakref.WeakKeyDictionary[nn.Module, _UNetTraces]" = weakref.WeakKeyDictionary()


def _traces(unet: nn.Module) -> _UNetTraces:
    traces = _TRACES.get(unet)
    if traces is None:
        traces = _TRACES[unet] = _UNetTraces(unet)
    return traces


def _trace(unet: nn.Module, sample: Tensor, timesteps: Tensor, embeddings: Tensor, wrapper: nn.Module | None = None,
           inputs: tuple = (), differentiable: bool = False) -> torch.jit.ScriptModule:
    """The traced call; frozen (weights folded in) unless `differentiable` (autograd runs through it)."""
    was_training = unet.training
    unet.eval()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # TracerWarnings about shape checks that are constant for these sizes
            wrapper = _PositionalUNet(unet) if wrapper is None else wrapper
            traced = torch.jit.trace(wrapper, (sample, timesteps, embeddings, *inputs), check_trace=False)
            return traced.eval() if differentiable else torch.jit.freeze(traced.eval())
    finally:
        unet.train(was_training)


def _eager(unet: nn.Module, sample: Tensor, t: int | Tensor, encoder_hidden_states: Tensor, traceable: bool = False,
           **unet_kwargs) -> Tensor:
    """The module itself; `traceable`: a call of a workload that is (or will be) traced, on the traced calls'
    convolution kernels (so the calls before and after tracing compute alike)."""
    with convolution_backend(sample, traced=traceable):
        output = unet(sample, t, encoder_hidden_states=encoder_hidden_states, **unet_kwargs)
    return getattr(output, "sample", output)  # diffusers returns an output object; other modules may return a tensor


def unet_sample(unet: nn.Module, sample: Tensor, t: int | Tensor, encoder_hidden_states: Tensor, **unet_kwargs) -> Tensor:
    """unet(sample, t, encoder_hidden_states=...).sample, through a frozen trace when that cannot change the result."""
    from diffusers import UNet2DConditionModel

    plain = isinstance(unet, UNet2DConditionModel) and not unet.training and not unet_kwargs
    setting = traced_unet_setting()
    differentiable = torch.is_grad_enabled()
    if not plain or sample.device.type != "cpu" or setting == "0" or (differentiable and setting != "1"):
        return _eager(unet, sample, t, encoder_hidden_states, **unet_kwargs)
    traces = _traces(unet)
    control = getattr(unet, CONTROL_ATTRIBUTE, None)
    if control is not None and getattr(control, "removed", False):
        control = None
    if not traces.small or (control is None and not traces.stock_attention()):
        return _eager(unet, sample, t, encoder_hidden_states)
    if differentiable and control is not None:  # autograd through a controller's effects: eager
        return _eager(unet, sample, t, encoder_hidden_states)
    names, inputs, control_key = (), (), None
    if control is not None:
        control.before_graph_call(sample)  # the controller's key depends on the latent size it observes
        traceable = setting in ("1", "inference") and control.runtime_traceable(traces.attention_modules,
                                                                                traces.stock_processors)
        control_key = control.trace_key() if traceable else None
        if control_key is None:
            return _eager(unet, sample, t, encoder_hidden_states)
        names, inputs = control.graph_inputs()
        control_key = (control_key, names, tuple((tuple(x.shape), x.dtype, x.device.type) for x in inputs))
    weights_key = traces.current_weights_key()
    if weights_key != traces.weights_key:  # new or changed weights: old traces hold stale copies
        traces.weights_key, traces.calls, traces.graphs, traces.schemas = weights_key, {}, {}, {}
    timesteps = torch.as_tensor(t, device=sample.device)
    timesteps = timesteps.reshape(-1).expand(sample.shape[0]) if timesteps.numel() == 1 else timesteps
    key = (tuple(sample.shape[1:]), sample.dtype, tuple(encoder_hidden_states.shape[1:]), encoder_hidden_states.dtype,
           timesteps.dtype, control_key, differentiable)
    if control is not None:
        key = (tuple(sample.shape),) + key  # the controller's batch layout is part of its operations
    graph = traces.graphs.get(key)
    if graph is None:
        traces.calls[key] = traces.calls.get(key, 0) + 1
        if traces.calls[key] <= CALLS_BEFORE_TRACING:
            return _eager(unet, sample, t, encoder_hidden_states, traceable=True)
        try:
            wrapper = None if control is None else _ControlledPositionalUNet(unet, control, names)
            graph = _trace(unet, sample, timesteps, encoder_hidden_states, wrapper, inputs, differentiable)
            if wrapper is not None:
                traces.schemas[key] = wrapper.schema
        except Exception as error:  # a PyTorch without TorchScript, an untraceable UNet: stay eager, say so once
            warnings.warn(f"diffusion-lab could not trace the UNet ({type(error).__name__}: {error}); running it eagerly")
            graph = _EAGER
        traces.graphs[key] = graph
    if graph is _EAGER:
        return _eager(unet, sample, t, encoder_hidden_states, traceable=True)
    with convolution_backend(sample, traced=True):
        if control is None:
            return graph(sample, timesteps, encoder_hidden_states)
        output, *effects = graph(sample, timesteps, encoder_hidden_states, *inputs)
    control.after_graph_call(traces.schemas[key], effects)
    return output


def forget_traces(unet: nn.Module) -> None:
    """Drop the traces (and call counts) of `unet`: its next calls run eagerly and trace it anew."""
    _TRACES.pop(unet, None)
