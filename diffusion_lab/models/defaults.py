"""Per-model defaults: the one place that says which settings suit which model.

Two families of models run here:
    shapes-tiny        the built-in 64 px model (or any model `pipelines/train_shapes_tiny.py` exported: a folder
                       with training_info.json), small enough for any CPU
    stable-diffusion   real SD 1.x / 2.x / SDXL checkpoints, and the tiny random pipelines the tests build in
                       their image (models.tiny_random)

    defaults = model_defaults("shapes-tiny")            # a ModelDefaults
    defaults.guidance_scale                              # 5.0: sampling AND editing
    resolve_guidance(pipe, None)                         # what `guidance_scale=None` means for this pipeline
    inversion_guidance("null_text", model="shapes-tiny") # 7.5: the guidance an inversion method inverts for

Every public function that takes `guidance_scale=None` resolves it here, so a model has ONE default guidance for
generation (text_to_image), editing (run_edit, edit_generated, naive noising) and the labs. Inversion methods have
their own: DDIM inverts at w = 1 (it is exact only there), null-text / negative-prompt / fixed-point / direct
inversion correct the w > 1 branch of P2P's guidance 7.5, edit-friendly inversion uses its paper's source guidance
3.5. Why each number: the benchmark sections of README.md (inversion fidelity, Prompt-to-Prompt, self_replace_steps).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Mapping

SHAPES_TINY = "shapes-tiny"
STABLE_DIFFUSION = "stable-diffusion"
FAMILIES = (SHAPES_TINY, STABLE_DIFFUSION)

# Prompt-to-Prompt's injection schedule (the paper's): fractions of the steps with the source's maps injected.
CROSS_REPLACE_STEPS = 0.8
SELF_REPLACE_STEPS = 0.4

# The guidance each inversion method inverts for (invert's guidance_scale=None), the same for every model today.
INVERSION_GUIDANCE = MappingProxyType({
    "ddim": 1.0,             # DDIM inversion is exact only without guidance
    "null_text": 7.5,        # P2P's guidance, which null-text inversion was made for
    "negative_prompt": 7.5,
    "fixed_point": 7.5,
    "direct": 7.5,
    "edit_friendly": 3.5,    # edit-friendly DDPM inversion's source guidance (cfg_scale_src)
})


@dataclass(frozen=True)
class ModelDefaults:
    """Settings that suit one family of models.

    image_size: pixels per side; guidance_scale: classifier-free guidance w of sampling and editing;
    num_steps: DDIM steps; device, dtype: where the labs load it (inversion wants float32 noise predictions);
    inversion_guidance: {inversion method: the w it inverts for};
    cross_replace_steps, self_replace_steps: Prompt-to-Prompt's injection schedule (fractions of the steps);
    tuned_self_replace_steps: the self_replace_steps the P2P benchmark measured best for this model (README,
        "How long P2P injects the source's self-attention"); not applied by default, so every stored number
        stays the one of P2P's own default;
    null_text_settings: the null-text inversion loop `invert` runs by default: "fast" (NullTextSettings(), measured
        on shapes-tiny: README, "Null-text inversion, faster") or "paper" (NullTextSettings.paper(), Mokady et al.);
    null_text_learning_rate: Adam's learning rate of null-text inversion (None: that of null_text_settings);
    tuned_null_text_learning_rate: the rate the inversion benchmark measured best at few steps (README,
        "Inversion fidelity"); pass it as `invert(..., learning_rate=...)`.
    """

    family: str
    image_size: int
    guidance_scale: float
    num_steps: int = 50
    device: str = "cpu"
    dtype: str = "float32"
    inversion_guidance: Mapping[str, float] = field(default_factory=lambda: INVERSION_GUIDANCE)
    cross_replace_steps: float = CROSS_REPLACE_STEPS
    self_replace_steps: float = SELF_REPLACE_STEPS
    tuned_self_replace_steps: float | None = None
    null_text_settings: str = "paper"
    null_text_learning_rate: float | None = None
    tuned_null_text_learning_rate: float | None = None

    def as_dict(self) -> dict:
        """A plain dict (what the labs' `defaults[...]` and the batch runner read)."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        values["inversion_guidance"] = dict(self.inversion_guidance)
        return values

    def __getitem__(self, name: str):  # defaults["guidance_scale"], as the labs wrote it
        return getattr(self, name)


_FAMILY_DEFAULTS = {
    SHAPES_TINY: ModelDefaults(
        SHAPES_TINY, image_size=64, guidance_scale=5.0, tuned_self_replace_steps=0.6,
        tuned_null_text_learning_rate=0.1, null_text_settings="fast",
    ),
    STABLE_DIFFUSION: ModelDefaults(STABLE_DIFFUSION, image_size=512, guidance_scale=7.5),
}


def model_family(model) -> str:
    """SHAPES_TINY or STABLE_DIFFUSION for a model name / folder or a loaded pipeline.

    shapes-tiny: the name "shapes-tiny", a folder with a training_info.json (what train_shapes_tiny exports), or a
    pipeline loaded from one (or built by models.shapes_tiny.build_untrained_pipeline). Anything else is treated as
    a Stable Diffusion checkpoint."""
    if not isinstance(model, (str, os.PathLike)):
        marked = getattr(model, "diffusion_lab_family", None)
        if marked in FAMILIES:
            return marked
        model = getattr(model, "name_or_path", None) or getattr(getattr(model, "config", None), "_name_or_path", "")
    name = str(model or "")
    if name == SHAPES_TINY:
        return SHAPES_TINY
    if name and (Path(name) / "training_info.json").is_file():
        return SHAPES_TINY
    return STABLE_DIFFUSION


def model_defaults(model=SHAPES_TINY) -> ModelDefaults:
    """The ModelDefaults of a model name, folder or pipeline. For a Stable Diffusion checkpoint the device is the
    best one here (cuda, mps, cpu); shapes-tiny stays on the CPU (pass device="cuda" for long tables)."""
    defaults = _FAMILY_DEFAULTS[model_family(model)]
    if defaults.family == STABLE_DIFFUSION:
        from .loading import default_device

        defaults = dataclasses.replace(defaults, device=default_device())
    return defaults


def resolve_guidance(model, guidance_scale: float | None) -> float:
    """`guidance_scale` as a float, or the model's default guidance when it is None."""
    if guidance_scale is None:
        return float(_FAMILY_DEFAULTS[model_family(model)].guidance_scale)
    return float(guidance_scale)


def inversion_guidance(method: str, model=SHAPES_TINY) -> float:
    """The guidance an inversion `method` inverts for by default (invert's guidance_scale=None)."""
    table = _FAMILY_DEFAULTS[model_family(model)].inversion_guidance
    if method not in table:
        raise ValueError(f"unknown inversion method {method!r}; choose one of {', '.join(table)}")
    return float(table[method])


def inversion_guidance_for_edit(method: str, edit_guidance: float) -> float:
    """The guidance to invert an image for when its edit samples at `edit_guidance`: DDIM inverts at its own
    (w = 1, where it is exact; the edit then drifts at w > 1, the lecture's point), every other method inverts
    for the edit's guidance, whose w > 1 branch it corrects (batch rows, the lab 4 panel)."""
    return float(INVERSION_GUIDANCE["ddim"]) if method == "ddim" else float(edit_guidance)
