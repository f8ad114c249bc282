"""Lab 1's claim measured: naive noising (SDEdit) trades the edit against the layout as the strength s grows.

The lecture: "depending on how much noise is added, we can change a lot of features in the image or not enough
features". For one edit (an object and the attribute changed), the study renders n placements of the object
(`scenes.scene_draws`), edits each once per strength with `naive_noising.naive_noising_edit` (one batch per
strength, one seeded generator) and scores every edit with the analyzer (`shapes.scoring.score_scene_edit`):

    edit done    the main object has the target's attributes (and background)
    layout kept  its centre is within LAYOUT_TOLERANCE of the source object's
    both         the two at once (a usable naive edit)

Each is a rate over the n draws with its Wilson interval (`stats.rate`).
"""

from __future__ import annotations

from typing import Sequence

from ..stats import Rate, rate

KINDS = ("edit_done", "layout_kept", "both")


def strength_tradeoff(pipe, obj: dict, background: str | None, edit_kind: str, edit_value: str,
                      strengths: Sequence[float], scene_seeds: Sequence[int], num_steps: int = 20,
                      guidance_scale: float | None = None, seed: int = 0, progress: bool = False) -> dict:
    """Rates of edit done / layout kept / both per strength over the scenes `random_scene(s, objects=[obj])` for s
    in `scene_seeds`, one noise draw each (generator seeded with `seed`).

    Returns dict(strengths=[...], rates={kind: [Rate per strength]}, flags={kind: [[bool per scene] per strength]},
    scene_seeds=[...], num_steps, n)."""
    import torch

    from ..latents import image_size
    from ..naive_noising import naive_noising_edit
    from ..shapes import caption, edit_scene
    from ..shapes.scoring import score_scene_edit
    from .scenes import scene_draws

    draws = scene_draws(image_size(pipe), scene_seeds, objects=[obj], background=background)
    targets = [edit_scene(d.scene, edit_kind, edit_value).target for d in draws]
    flags = {kind: [] for kind in KINDS}
    for strength in strengths:
        generator = torch.Generator(pipe.unet.device).manual_seed(seed)
        edited = naive_noising_edit(pipe, [d.image for d in draws], [caption(t) for t in targets],
                                    strength=float(strength), num_steps=num_steps, guidance_scale=guidance_scale,
                                    generator=generator, output_type="uint8", progress=progress)  # (n, H, W, 3)
        scores = [score_scene_edit([image], d.scene, target)[0] for image, d, target in zip(edited, draws, targets)]
        flags["edit_done"].append([s["edited"] for s in scores])
        flags["layout_kept"].append([s["layout_kept"] for s in scores])
        flags["both"].append([s["edited"] and s["layout_kept"] for s in scores])
    rates = {kind: [rate(row) for row in rows] for kind, rows in flags.items()}
    return {"strengths": [float(s) for s in strengths], "rates": rates, "flags": flags,
            "scene_seeds": [d.scene_seed for d in draws], "num_steps": num_steps, "n": len(draws)}


def tradeoff_rows(study: dict) -> list[dict]:
    """One table row per strength: each rate printed with its n and interval."""
    return [{"strength": s, **{kind.replace("_", " "): str(study["rates"][kind][i]) for kind in KINDS}}
            for i, s in enumerate(study["strengths"])]


def clearly_above(a: Rate, b: Rate) -> bool:
    """Whether rate a is above rate b beyond both intervals (a's lower bound over b's upper bound)."""
    return a.low > b.high


def separated(a: Rate, b: Rate, intervals: bool = True) -> bool:
    """Whether rate a is above rate b: beyond both intervals (a.low > b.high) when `intervals`, else as point
    estimates (for the small n of QUICK runs, where 95% intervals of a few draws overlap by construction)."""
    return a.low > b.high if intervals else a.value > b.value


def tradeoff_claims(study: dict, intervals: bool = True) -> list[dict]:
    """Lab 1's claims at the rate level, each dict(claim, holds, evidence):
    the edit is done more often at the largest strength than at the smallest, the layout is kept more often at the
    smallest than at the largest. Compared with `separated` (intervals or, for QUICK, point estimates)."""
    edit, layout = study["rates"]["edit_done"], study["rates"]["layout_kept"]
    s_min, s_max = study["strengths"][0], study["strengths"][-1]
    return [
        {"claim": f"the edit is done more often at s = {s_max:g} than at s = {s_min:g}",
         "holds": separated(edit[-1], edit[0], intervals),
         "evidence": f"edit done at s = {s_max:g}: {edit[-1]}; at s = {s_min:g}: {edit[0]}"},
        {"claim": f"the layout is kept more often at s = {s_min:g} than at s = {s_max:g}",
         "holds": separated(layout[0], layout[-1], intervals),
         "evidence": f"layout kept at s = {s_min:g}: {layout[0]}; at s = {s_max:g}: {layout[-1]}"},
    ]


def sweet_spot(study: dict) -> dict | None:
    """The strength where edit done and layout kept hold together most often (dict(strength, rate)), None when no
    strength gives both in at least half of the draws."""
    both = study["rates"]["both"]
    best = max(range(len(both)), key=lambda i: both[i].value)
    return {"strength": study["strengths"][best], "rate": both[best]} if both[best].value >= 0.5 else None


def example_against_study(study: dict, example_rows: Sequence[dict]) -> list[str]:
    """Where the lab's worked example (rows of `naive_noising_panel.strength_sweep`: edit_success and layout_kept,
    fractions of its noise draws, at the same strengths) departs from what usually happens: one line per departure,
    "this draw is one of the x% where ...". [] when the example shows the typical trade-off."""
    lines = []
    by_strength = {round(row["strength"], 6): row for row in example_rows}
    s_min, s_max = study["strengths"][0], study["strengths"][-1]
    first, last = by_strength.get(round(s_min, 6)), by_strength.get(round(s_max, 6))
    edit, layout = study["rates"]["edit_done"], study["rates"]["layout_kept"]
    if first is not None and first["edit_success"] > 0:
        share = (f"this draw is one of the {edit[0]}" if edit[0].successes else
                 f"this draw is rarer than any of the study's ({edit[0]})")
        lines.append(f"at s = {s_min:g} the example's edit is already done in {first['edit_success']:.0%} of its "
                     f"draws: {share} where s = {s_min:g} already edits")
    if last is not None and last["layout_kept"] > 0:
        lines.append(f"at s = {s_max:g} the example keeps its layout in {last['layout_kept']:.0%} of its draws: "
                     f"this draw is one of the {layout[-1]} where the layout survives s = {s_max:g}")
    if last is not None and last["edit_success"] < 1:
        missed = rate([not done for done in study["flags"]["edit_done"][-1]])
        lines.append(f"at s = {s_max:g} the example's edit fails in {1 - last['edit_success']:.0%} of its draws: "
                     f"this draw is one of the {missed} where even s = {s_max:g} does not edit")
    return lines
