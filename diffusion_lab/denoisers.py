"""Denoisers: the one callable every sampler, inversion and editor in diffusion-lab talks to.

    denoiser(x_t: Tensor (B, C, H, W), t: int, step_index: int) -> model_output (B, C, H, W), float32

`model_output` is in the schedule's prediction_type (epsilon, v or x_0). `step_index` counts sampling steps
(0 for the first, noisiest one); per-step state such as null-text inversion's unconditional embeddings or
Prompt-to-Prompt's schedules is indexed by it.

Classifier-free guidance (Ho & Salimans 2022, arXiv:2207.12598), as in Stable Diffusion:

    eps_guided = eps_uncond + w (eps_cond - eps_uncond),    w = guidance_scale.
"""

from __future__ import annotations

from typing import Any, Callable, Protocol, Sequence

import torch
from torch import Tensor, nn

from .runtime import call_unet


class Denoiser(Protocol):
    def __call__(self, x_t: Tensor, t: int, step_index: int) -> Tensor: ...


def classifier_free_guidance(uncond_output: Tensor, cond_output: Tensor, guidance_scale: float) -> Tensor:
    """eps_uncond + w (eps_cond - eps_uncond): w = 1 is the conditional model, w = 0 the unconditional one."""
    return uncond_output + guidance_scale * (cond_output - uncond_output)


def _module_dtype(module: nn.Module) -> torch.dtype:
    """The dtype of the module's first parameter (diffusers' `.dtype` walks every parameter: 4 ms per UNet call)."""
    return next(module.parameters()).dtype


def _rows(embeddings: Tensor, batch_size: int) -> Tensor:
    """(1, L, D) or (B, L, D) -> (B, L, D)."""
    if embeddings.shape[0] == batch_size:
        return embeddings
    if embeddings.shape[0] == 1:
        return embeddings.expand(batch_size, *embeddings.shape[1:])
    raise ValueError(f"embeddings have {embeddings.shape[0]} rows, the batch has {batch_size}")


class TextConditionedDenoiser:
    """A text-conditioned UNet (diffusers UNet2DConditionModel) with classifier-free guidance.

    text_embeddings: (B, L, D) or (1, L, D) (broadcast to the batch of x_t).
    uncond_embeddings: None, a (B|1, L, D) tensor, or a sequence of such tensors indexed by step_index
        (null-text inversion's per-step embeddings).
    When guidance_scale != 1 and uncond_embeddings is given, ONE UNet call runs the batch
    [x_t for the B unconditional rows, then x_t for the B conditional rows], i.e. rows 0..B-1 are unconditional and
    B..2B-1 conditional (the order diffusers' pipelines use; Prompt-to-Prompt controllers rely on it and edit only
    the conditional half). Otherwise only the B conditional rows are run.
    The UNet runs in its own dtype; the output is returned as float32.
    `unet_kwargs` are passed to every call (e.g. cross_attention_kwargs).
    """

    def __init__(
        self,
        unet: nn.Module,
        text_embeddings: Tensor,
        uncond_embeddings: Tensor | Sequence[Tensor] | None = None,
        guidance_scale: float = 1.0,
        unet_kwargs: dict[str, Any] | None = None,
    ) -> None:
        self.unet = unet
        self.text_embeddings = text_embeddings
        self.uncond_embeddings = uncond_embeddings
        self.guidance_scale = guidance_scale
        self.unet_kwargs = unet_kwargs or {}

    @property
    def uses_guidance(self) -> bool:
        return self.uncond_embeddings is not None and self.guidance_scale != 1.0

    def uncond_embeddings_at(self, step_index: int) -> Tensor:
        if isinstance(self.uncond_embeddings, Tensor):
            return self.uncond_embeddings
        return self.uncond_embeddings[step_index]

    def _unet(self, x: Tensor, t: int | Tensor, embeddings: Tensor) -> Tensor:
        dtype = _module_dtype(self.unet)
        output = call_unet(self.unet, x.to(dtype), t, embeddings.to(dtype), **self.unet_kwargs)  # runtime/: same numbers
        return output.float()

    def unconditional_and_conditional(self, x_t: Tensor, t: int | Tensor, step_index: int = 0) -> tuple[Tensor, Tensor]:
        """(eps_uncond, eps_cond), each (B, C, H, W), from one batched UNet call [uncond rows, cond rows]."""
        batch_size = x_t.shape[0]
        cond = _rows(self.text_embeddings, batch_size)  # (B, L, D)
        uncond = _rows(self.uncond_embeddings_at(step_index), batch_size)  # (B, L, D)
        output = self._unet(torch.cat([x_t, x_t]), t, torch.cat([uncond, cond]))  # (2B, C, H, W)
        return output[:batch_size], output[batch_size:]

    def __call__(self, x_t: Tensor, t: int | Tensor, step_index: int = 0) -> Tensor:
        if not self.uses_guidance:
            return self._unet(x_t, t, _rows(self.text_embeddings, x_t.shape[0]))
        uncond_output, cond_output = self.unconditional_and_conditional(x_t, t, step_index)
        return classifier_free_guidance(uncond_output, cond_output, self.guidance_scale)


class GuidedDenoiser:
    """Classifier-free guidance around any `conditional_fn(x_t, t, condition) -> model_output`.

    Calls conditional_fn(x_t, t, condition) and, when guidance_scale != 1, conditional_fn(x_t, t,
    unconditional_condition) (two calls, not batched: the conditions can be of any kind). Unlike
    TextConditionedDenoiser, `unconditional_condition=None` is passed on as is: for `ClosedFormDenoiser` None means
    "the whole data set".
    """

    def __init__(
        self,
        conditional_fn: Callable[[Tensor, int, Any], Tensor],
        condition: Any,
        unconditional_condition: Any = None,
        guidance_scale: float = 1.0,
    ) -> None:
        self.conditional_fn = conditional_fn
        self.condition = condition
        self.unconditional_condition = unconditional_condition
        self.guidance_scale = guidance_scale

    def __call__(self, x_t: Tensor, t: int | Tensor, step_index: int = 0) -> Tensor:
        cond_output = self.conditional_fn(x_t, t, self.condition)
        if self.guidance_scale == 1.0:
            return cond_output
        uncond_output = self.conditional_fn(x_t, t, self.unconditional_condition)
        return classifier_free_guidance(uncond_output, cond_output, self.guidance_scale)
