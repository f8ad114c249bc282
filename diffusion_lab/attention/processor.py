"""A diffusers attention processor that hands the softmax probabilities to a controller.

Prompt-to-Prompt (Hertz et al. 2022, arXiv:2208.01626) edits images by reading and overwriting the
attention probabilities softmax(Q K^T / sqrt(d)) inside the UNet. diffusers' default processor
(AttnProcessor2_0) uses fused scaled-dot-product attention and never forms those probabilities, so
for the layers a controller controls we compute them explicitly, as diffusers' AttnProcessor does:

    probabilities = attn.get_attention_scores(query, key, mask)    # (batch*heads, queries, keys)
    probabilities = controller(probabilities, is_cross, place_in_unet, layer_name)
    hidden_states = probabilities @ value

Every other layer keeps the fast AttnProcessor2_0. Layers are found from `unet.attn_processors`
(names like "up_blocks.1.attentions.0.transformer_blocks.0.attn2.processor"), never from class
names, hard-coded indices or resolutions; a layer's resolution is known at run time from its
number of query positions.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from diffusers.models.attention_processor import AttnProcessor2_0


# the UNet attribute through which runtime/traced_unet.py finds a registered AttentionControl (same name there)
CONTROL_ATTRIBUTE = "_diffusion_lab_attention_control"


@dataclass(frozen=True)
class AttentionLayer:
    """One attention layer of the UNet, as named by `unet.attn_processors`."""

    name: str  # e.g. "down_blocks.0.attentions.0.transformer_blocks.0.attn2" (without ".processor")
    place_in_unet: str  # "down", "mid" or "up"
    is_cross: bool  # cross-attention (keys from the text) or self-attention (keys from the image)
    controlled: bool  # does the controller see this layer's probabilities?


def place_in_unet(layer_name: str) -> str:
    """'down', 'mid' or 'up' from the name's prefix (down_blocks / mid_block / up_blocks)."""
    first = layer_name.split(".")[0]
    return {"down_blocks": "down", "mid_block": "mid", "up_blocks": "up"}.get(first, first)


def _is_cross_attention(unet, layer_name: str) -> bool:
    """attn1 is self-attention and attn2 cross-attention in SD's transformer blocks; the module's
    own flag decides when it has one (e.g. only_cross_attention blocks)."""
    module = unet.get_submodule(layer_name)
    return bool(getattr(module, "is_cross_attention", layer_name.endswith("attn2")))


class ControlledAttentionProcessor:
    """diffusers' AttnProcessor with explicit probabilities passed through `controller`.

    When the controller does not need this call's probabilities (for example a resolution it does
    not store), the call goes to `fallback`: the layer's original processor (diffusers' default is
    AttnProcessor2_0, fast scaled-dot-product attention).
    """

    def __init__(self, controller, place_in_unet: str, layer_name: str, is_cross: bool, fallback=None):
        self.controller = controller
        self.place_in_unet = place_in_unet
        self.layer_name = layer_name
        self.is_cross = is_cross
        self.fallback = fallback if fallback is not None else AttnProcessor2_0()

    def __call__(
        self,
        attn,
        hidden_states: torch.Tensor,
        encoder_hidden_states: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        temb: torch.Tensor | None = None,
        *args,
        **kwargs,
    ) -> torch.Tensor:
        query_positions = hidden_states.shape[1] if hidden_states.ndim == 3 else hidden_states[0, 0].numel()
        if not self.controller.wants_probabilities(query_positions, self.is_cross, self.place_in_unet, self.layer_name):
            return self.fallback(attn, hidden_states, encoder_hidden_states, attention_mask, temb, *args, **kwargs)

        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)

        input_ndim = hidden_states.ndim
        if input_ndim == 4:  # (B, C, H, W) -> (B, H*W, C)
            batch_size, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch_size, channel, height * width).transpose(1, 2)

        batch_size, key_length, _ = (
            hidden_states.shape if encoder_hidden_states is None else encoder_hidden_states.shape
        )
        attention_mask = attn.prepare_attention_mask(attention_mask, key_length, batch_size)

        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)

        query = attn.to_q(hidden_states)  # (B, HW, inner)
        if encoder_hidden_states is None:
            encoder_hidden_states = hidden_states
        elif attn.norm_cross:
            encoder_hidden_states = attn.norm_encoder_hidden_states(encoder_hidden_states)
        key = attn.to_k(encoder_hidden_states)  # (B, keys, inner)
        value = attn.to_v(encoder_hidden_states)

        query = attn.head_to_batch_dim(query)  # (B*heads, HW, head_dim)
        key = attn.head_to_batch_dim(key)  # (B*heads, keys, head_dim)
        value = attn.head_to_batch_dim(value)
        if attn.norm_q is not None:
            query = attn.norm_q(query)
        if attn.norm_k is not None:
            key = attn.norm_k(key)

        probabilities = attn.get_attention_scores(query, key, attention_mask)  # (B*heads, HW, keys)
        probabilities = self.controller(probabilities, self.is_cross, self.place_in_unet, self.layer_name)
        hidden_states = torch.bmm(probabilities.to(value.dtype), value)  # (B*heads, HW, head_dim)
        hidden_states = attn.batch_to_head_dim(hidden_states)  # (B, HW, inner)

        hidden_states = attn.to_out[0](hidden_states)  # linear projection
        hidden_states = attn.to_out[1](hidden_states)  # dropout

        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch_size, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


class AttentionControl:
    """What `register_attention_control` returns: the layers it found, and a way to undo it.

    Use as a context manager (`with register_attention_control(unet, store): ...`) or call
    `remove()`; both put back the processors the UNet had before.
    """

    def __init__(self, unet, controller, original_processors: dict, layers: list[AttentionLayer], hook):
        self.unet = unet
        self.controller = controller
        self.original_processors = original_processors
        self.layers = layers
        self._hook = hook
        self.removed = False

    @property
    def controlled_layers(self) -> list[AttentionLayer]:
        return [layer for layer in self.layers if layer.controlled]

    def remove(self) -> None:
        if self.removed:
            return
        self.unet.set_attn_processor(dict(self.original_processors))  # set_attn_processor pops: pass a copy
        self._hook.remove()
        if getattr(self.unet, CONTROL_ATTRIBUTE, None) is self:
            delattr(self.unet, CONTROL_ATTRIBUTE)
        self.removed = True

    # -- what runtime/traced_unet.py asks of a controlled UNet (a traced call) --------------------------
    def runtime_traceable(self, attention_modules: list, stock_processors: tuple) -> bool:
        """True when every attention module runs a stock processor or this controller's processor around one."""
        for processor in (module.processor for module in attention_modules):
            if isinstance(processor, ControlledAttentionProcessor):
                if processor.controller is not self.controller or type(processor.fallback) not in stock_processors:
                    return False
            elif type(processor) not in stock_processors:
                return False
        return True

    def trace_key(self):
        """What fixes the call's operations besides shapes (None: run eagerly)."""
        return self.controller.trace_key()

    def graph_inputs(self) -> tuple[tuple[str, ...], tuple[torch.Tensor, ...]]:
        """(names, tensors) the controller reads during this call, in name order."""
        tensors = self.controller.step_tensors()
        names = tuple(sorted(tensors))
        return names, tuple(tensors[name] for name in names)

    def begin_traced_call(self, names, tensors) -> None:
        self.controller.begin_deferred_call(dict(zip(names, tensors)))

    def end_traced_call(self) -> tuple[list, list]:
        return self.controller.end_deferred_call()

    def before_graph_call(self, sample: torch.Tensor) -> None:
        """What the UNet's forward pre-hook does, for a call that runs a graph instead of the module."""
        self.controller.observe_unet_input(sample)

    def after_graph_call(self, schema: list, tensors) -> None:
        self.controller.apply_effects(schema, tensors)

    def __enter__(self) -> AttentionControl:
        return self

    def __exit__(self, *exc) -> None:
        self.remove()

    def __repr__(self) -> str:
        return (
            f"AttentionControl({type(self.controller).__name__}: {len(self.controlled_layers)} of "
            f"{len(self.layers)} attention layers controlled{', removed' if self.removed else ''})"
        )


def register_attention_control(unet, controller) -> AttentionControl:
    """Install ControlledAttentionProcessor on the layers `controller.controls_layer` accepts.

    The other layers keep their processor. A forward pre-hook on the UNet tells the controller the
    latent size and the batch size of every call (`controller.observe_unet_input(sample)`), from
    which it derives each layer's map size and the [unconditional..., conditional...] layout.
    """
    original = unet.attn_processors
    if not original:
        raise ValueError("this UNet has no attention layers (unet.attn_processors is empty): nothing to control")
    if any(isinstance(processor, ControlledAttentionProcessor) for processor in original.values()):
        raise RuntimeError(
            "an attention controller is already registered on this UNet: call .remove() on the handle "
            "register_attention_control returned (or leave its `with` block) before registering another"
        )
    layers, processors = [], {}
    for processor_name, processor in original.items():
        layer_name = processor_name.removesuffix(".processor")
        place, is_cross = place_in_unet(layer_name), _is_cross_attention(unet, layer_name)
        controlled = bool(controller.controls_layer(layer_name, place, is_cross))
        layers.append(AttentionLayer(layer_name, place, is_cross, controlled))
        if controlled:
            processors[processor_name] = ControlledAttentionProcessor(
                controller, place, layer_name, is_cross, fallback=processor
            )
        else:
            processors[processor_name] = processor
    if not any(layer.controlled for layer in layers):
        raise ValueError(
            f"{type(controller).__name__} controls none of the UNet's {len(layers)} attention layers "
            f"(places found: {sorted({layer.place_in_unet for layer in layers})}); check its `places` setting"
        )

    def observe_input(module, args, kwargs):
        sample = args[0] if args else kwargs["sample"]
        controller.observe_unet_input(sample)

    hook = unet.register_forward_pre_hook(observe_input, with_kwargs=True)
    unet.set_attn_processor(processors)
    control = AttentionControl(unet, controller, original, layers, hook)
    object.__setattr__(unet, CONTROL_ATTRIBUTE, control)  # runtime/ finds it there (it imports nothing of ours)
    return control
