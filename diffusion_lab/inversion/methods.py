"""The inversion methods by name, edit-friendly inversion's default eta, and the checks of both.

The guidance each method inverts for when the caller gives none is a per-model default: `models.defaults`
(`inversion_guidance(method, pipe)`: 1 for ddim, 3.5 for edit_friendly, 7.5 otherwise)."""

from __future__ import annotations

import math

METHODS = ("ddim", "null_text", "negative_prompt", "fixed_point", "direct", "edit_friendly")
DEFAULT_ETA = 1.0  # edit-friendly: the paper's DDPM sampler (eta = 1: DDPM's posterior variance)


def check_method(method: str) -> None:
    if method not in METHODS:
        raise ValueError(f"unknown inversion method {method!r}; choose one of {', '.join(METHODS)}")


def check_guidance(guidance_scale: float) -> float:
    guidance_scale = float(guidance_scale)
    if not math.isfinite(guidance_scale) or guidance_scale < 0:
        raise ValueError(f"guidance_scale must be a finite number >= 0 (1 = no guidance), got {guidance_scale}")
    return guidance_scale
