"""The inversion methods by name, and what each uses when the caller gives nothing: the guidance it inverts for and
(edit-friendly) the eta it samples at. The one place for these defaults in the inversion package."""

from __future__ import annotations

import math

METHODS = ("ddim", "null_text", "negative_prompt", "fixed_point", "direct", "edit_friendly")
# Guidance each method inverts for when none is given: DDIM inversion is only reliable at w = 1; the others exist
# to make the usual text-to-image guidance (7.5) work; edit-friendly uses the paper's source scale (cfg_scale_src).
DEFAULT_GUIDANCE = {"ddim": 1.0, "null_text": 7.5, "negative_prompt": 7.5, "fixed_point": 7.5, "direct": 7.5,
                    "edit_friendly": 3.5}
DEFAULT_ETA = 1.0  # edit-friendly: the paper's DDPM sampler (eta = 1: DDPM's posterior variance)


def check_method(method: str) -> None:
    if method not in METHODS:
        raise ValueError(f"unknown inversion method {method!r}; choose one of {', '.join(METHODS)}")


def check_guidance(guidance_scale: float) -> float:
    guidance_scale = float(guidance_scale)
    if not math.isfinite(guidance_scale) or guidance_scale < 0:
        raise ValueError(f"guidance_scale must be a finite number >= 0 (1 = no guidance), got {guidance_scale}")
    return guidance_scale
