"""What inversion needs from a model: a conditional output it can call (and differentiate, for null-text) and a
guided denoiser it can sample with. Works for a Stable-Diffusion UNet and, without VAE or tokenizer, for any model
(e.g. the exact `ClosedFormDenoiser` in pixel space)."""

from __future__ import annotations

from typing import Any, Callable, Sequence

from torch import Tensor

from diffusion_lab.denoisers import Denoiser, GuidedDenoiser, TextConditionedDenoiser
from diffusion_lab.schedules import NoiseSchedule


class StepwiseGuidedDenoiser:
    """Classifier-free guidance around `conditional_output(x_t, t, condition)` with a per-step unconditional condition
    (`unconditional[step_index]`), for models other than a UNet (a UNet uses TextConditionedDenoiser)."""

    def __init__(self, conditional_output, condition, unconditional: Sequence[Any], guidance_scale: float) -> None:
        self.conditional_output = conditional_output
        self.condition = condition
        self.unconditional = unconditional
        self.guidance_scale = guidance_scale

    def __call__(self, x_t: Tensor, t: int, step_index: int = 0) -> Tensor:
        guided = GuidedDenoiser(
            self.conditional_output, self.condition, self.unconditional[step_index], self.guidance_scale
        )
        return guided(x_t, t, step_index)


class ConditionalModel:
    """A conditional diffusion model as inversion sees it, without VAE or tokenizer.

    conditional_output(x_t, t, condition) -> model_output (B, C, H, W) in schedule.prediction_type; it must be
        differentiable in `condition` for null-text inversion (a UNet is, in its text embeddings).
    make_denoiser(condition, unconditional, guidance_scale) -> Denoiser with classifier-free guidance, where
        `unconditional` is one condition or a sequence of them indexed by step_index. Defaults to
        GuidedDenoiser / StepwiseGuidedDenoiser around `conditional_output`.
    Use `ConditionalModel.from_pipeline(pipe)` for a Stable-Diffusion pipeline, or e.g.
    `ConditionalModel(closed_form.predict, schedule)` for the exact denoiser (conditions are labels, None = all).
    """

    def __init__(
        self,
        conditional_output: Callable[[Tensor, int, Any], Tensor],
        schedule: NoiseSchedule,
        make_denoiser: Callable[[Any, Any, float], Denoiser] | None = None,
    ) -> None:
        self.conditional_output = conditional_output
        self.schedule = schedule
        self._make_denoiser = make_denoiser

    def denoiser(self, condition: Any, unconditional: Any, guidance_scale: float) -> Denoiser:
        if self._make_denoiser is not None:
            return self._make_denoiser(condition, unconditional, guidance_scale)
        if isinstance(unconditional, (list, tuple)):
            return StepwiseGuidedDenoiser(self.conditional_output, condition, unconditional, guidance_scale)
        return GuidedDenoiser(self.conditional_output, condition, unconditional, guidance_scale)

    @classmethod
    def from_pipeline(cls, pipe) -> "ConditionalModel":
        """The pipeline's UNet; conditions are text embeddings (B, L, D); one batched UNet call per guided step.
        (For SDXL the UNet is wrapped so that it also gets pooled embeddings and time ids: conditioning.py.)"""
        from diffusion_lab.conditioning import denoising_unet

        unet = denoising_unet(pipe)

        def conditional_output(x_t: Tensor, t: int, text_embeddings: Tensor) -> Tensor:
            return TextConditionedDenoiser(unet, text_embeddings)(x_t, t)

        def make_denoiser(text_embeddings: Tensor, uncond_embeddings, guidance_scale: float) -> Denoiser:
            return TextConditionedDenoiser(unet, text_embeddings, uncond_embeddings, guidance_scale)

        return cls(conditional_output, NoiseSchedule.from_scheduler_config(pipe.scheduler), make_denoiser)
