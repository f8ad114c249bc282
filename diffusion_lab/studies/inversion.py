"""Lab 3's claims measured: how well inversions give an image back, per scene, as means and rates with intervals.

Every number is the PSNR (dB, `metrics.psnr`) of a reconstruction against the rendered input, per scene of a
sample (`scenes.scene_draws`), beside that scene's VAE round trip decode(encode(x)) -- the ceiling of any latent
inversion. The inversions are `inversion.invert` (one batch per method and setting) and `inversion.reconstruct`.

    steps_study       DDIM inversion at w = 1 for each S: mean PSNR, mean gap to the VAE, how often a scene
                      improves from the smallest to the largest S, and how often DDIM lands in another basin
                      (its gap exceeds WRONG_BASIN_DB: the sampled path drifted to another image)
    guidance_study    invert then sample at w = 1 and at the largest w: how much guidance costs, per method
                      (DDIM inverted at w = 1 and sampled at w, DDIM inverted at w, negative-prompt inversion)
    basin_study       DDIM against fixed-point inversion (each step solved exactly) at w = 1 and S: how often each
                      comes back within NEAR_CEILING_DB of the VAE round trip
    edit_friendly_study  edit-friendly DDPM inversion (Huberman-Spiegelglas et al. 2024): how often the
                      reconstruction is exact (within EXACT_DB of the VAE round trip), and its noise maps' std
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ..stats import mean, rate

WRONG_BASIN_DB = 5.0     # a DDIM reconstruction this far below its VAE round trip came back as another image
NEAR_CEILING_DB = 1.0    # "gives the image back": within this of the VAE round trip
EXACT_DB = 0.1           # edit-friendly: float rounding only
GUIDANCE_COST_DB = 1.0   # "guidance breaks the reconstruction": PSNR falls by more than this from w = 1 to largest w


def inputs_uint8(draws) -> np.ndarray:
    """The rendered inputs as uint8 (n, H, W, 3)."""
    return np.stack([np.asarray(d.image.convert("RGB")) for d in draws])


def psnr_per_image(images, inputs) -> np.ndarray:
    """PSNR (dB) of each image against its input, (n,); identical images (inf) count as 100 dB."""
    from ..metrics import psnr

    values = np.atleast_1d(np.asarray(psnr(np.asarray(images), inputs), dtype=np.float64))
    return np.minimum(values, 100.0)


def vae_psnr(pipe, draws) -> np.ndarray:
    """Each scene's VAE round trip PSNR (dB), (n,)."""
    from ..latents import vae_round_trip

    return psnr_per_image(vae_round_trip(pipe, [d.image for d in draws]), inputs_uint8(draws))


def reconstruction_psnr(pipe, draws, method: str, num_steps: int, invert_guidance: float,
                        sample_guidances: Sequence[float], **options) -> dict:
    """Invert every scene with its caption (`method` at `invert_guidance`, one batch), sample back at each w of
    `sample_guidances`: {w: PSNR per scene (n,)}."""
    from ..inversion import invert, reconstruct

    inversion = invert(pipe, [d.image for d in draws], [d.prompt for d in draws], method=method,
                       num_steps=int(num_steps), guidance_scale=float(invert_guidance), progress=False, **options)
    inputs = inputs_uint8(draws)
    return {float(w): psnr_per_image(reconstruct(pipe, inversion, guidance_scale=float(w), output_type="uint8",
                                                 progress=False), inputs)
            for w in sample_guidances}


def steps_study(pipe, draws, steps: Sequence[int], vae: np.ndarray | None = None) -> dict:
    """DDIM inversion at w = 1 for each S of `steps` (module docstring). Returns dict(steps, vae (n,), psnr {S: (n,)},
    mean {S: Mean}, gap {S: Mean of VAE - PSNR}, wrong_basin {S: Rate}, improves: Rate of PSNR(S_max) > PSNR(S_min)
    - 0.3 dB per scene, scene_seeds)."""
    vae = vae_psnr(pipe, draws) if vae is None else vae
    psnr = {int(s): reconstruction_psnr(pipe, draws, "ddim", int(s), 1.0, [1.0])[1.0] for s in steps}
    first, last = psnr[int(steps[0])], psnr[int(steps[-1])]
    return {
        "steps": [int(s) for s in steps], "vae": vae, "psnr": psnr, "scene_seeds": [d.scene_seed for d in draws],
        "mean": {s: mean(v, "dB") for s, v in psnr.items()},
        "gap": {s: mean(vae - v, "dB") for s, v in psnr.items()},
        "wrong_basin": {s: rate(vae - v > WRONG_BASIN_DB) for s, v in psnr.items()},
        "improves": rate(last > first - 0.3),
    }


def steps_rows(study: dict) -> list[dict]:
    return [{"S": s, "PSNR": str(study["mean"][s]), "gap to VAE": str(study["gap"][s]),
             f"wrong basin (gap > {WRONG_BASIN_DB:g} dB)": str(study["wrong_basin"][s])} for s in study["steps"]]


GUIDANCE_METHODS = {  # name: (inversion method, guidance it inverts at: None = the sampling w)
    "DDIM inverted at w=1": ("ddim", 1.0),
    "DDIM inverted at w": ("ddim", None),
    "negative-prompt": ("negative_prompt", 1.0),
}


def guidance_study(pipe, draws, largest_guidance: float, num_steps: int) -> dict:
    """PSNR at w = 1 and at w = `largest_guidance` for each of GUIDANCE_METHODS (module docstring). Returns
    dict(w, methods {name: {"w=1": Mean, "w=..": Mean, "drop": Mean (dB), "breaks": Rate of drop >
    GUIDANCE_COST_DB}})."""
    w = float(largest_guidance)
    methods = {}
    for name, (method, invert_at) in GUIDANCE_METHODS.items():
        if invert_at is None:  # each w its own inversion
            at_1 = reconstruction_psnr(pipe, draws, method, num_steps, 1.0, [1.0])[1.0]
            at_w = reconstruction_psnr(pipe, draws, method, num_steps, w, [w])[w]
        else:
            both = reconstruction_psnr(pipe, draws, method, num_steps, invert_at, [1.0, w])
            at_1, at_w = both[1.0], both[w]
        drop = at_1 - at_w
        methods[name] = {"w=1": mean(at_1, "dB"), f"w={w:g}": mean(at_w, "dB"), "drop": mean(drop, "dB"),
                         "breaks": rate(drop > GUIDANCE_COST_DB), "psnr": {1.0: at_1, w: at_w}}
    return {"w": w, "num_steps": int(num_steps), "methods": methods, "scene_seeds": [d.scene_seed for d in draws]}


def guidance_rows(study: dict) -> list[dict]:
    w = study["w"]
    return [{"method": name, "w=1": str(m["w=1"]), f"w={w:g}": str(m[f"w={w:g}"]), "drop": str(m["drop"]),
             f"drop > {GUIDANCE_COST_DB:g} dB": str(m["breaks"])} for name, m in study["methods"].items()]


def basin_study(pipe, draws, num_steps: int, vae: np.ndarray | None = None, ddim_psnr: np.ndarray | None = None,
                **fixed_point_options) -> dict:
    """DDIM against fixed-point inversion at w = 1 and S = `num_steps` (module docstring); `ddim_psnr` reuses a
    steps_study's numbers. Returns dict(psnr {"DDIM", "fixed-point": (n,)}, vae, gap, near {name: Rate within
    NEAR_CEILING_DB}, wrong_basin {name: Rate}, missed_scenes (DDIM's wrong basins: scene seeds))."""
    vae = vae_psnr(pipe, draws) if vae is None else vae
    ddim = reconstruction_psnr(pipe, draws, "ddim", num_steps, 1.0, [1.0])[1.0] if ddim_psnr is None else ddim_psnr
    fixed = reconstruction_psnr(pipe, draws, "fixed_point", num_steps, 1.0, [1.0], **fixed_point_options)[1.0]
    psnr = {"DDIM": ddim, "fixed-point": fixed}
    return {
        "num_steps": int(num_steps), "vae": vae, "psnr": psnr, "scene_seeds": [d.scene_seed for d in draws],
        "gap": {k: mean(vae - v, "dB") for k, v in psnr.items()},
        "near": {k: rate(vae - v < NEAR_CEILING_DB) for k, v in psnr.items()},
        "wrong_basin": {k: rate(vae - v > WRONG_BASIN_DB) for k, v in psnr.items()},
        "missed_scenes": [d.scene_seed for d, gap in zip(draws, vae - ddim) if gap > WRONG_BASIN_DB],
    }


def basin_rows(study: dict) -> list[dict]:
    return [{"inversion (w = 1, S = %d)" % study["num_steps"]: name, "gap to VAE": str(study["gap"][name]),
             f"within {NEAR_CEILING_DB:g} dB of the VAE": str(study["near"][name]),
             f"wrong basin (gap > {WRONG_BASIN_DB:g} dB)": str(study["wrong_basin"][name])} for name in study["psnr"]]


def find_wrong_basin(pipe, image_size: int, first_scene: int, num_steps: int, max_scenes: int, batch: int = 16,
                     num_objects: int | None = 1):
    """Search scenes first_scene, first_scene + 1, ... (`scenes.scene_draws` with `num_objects`, at most
    `max_scenes`, `batch` at a time) for one that DDIM inversion at w = 1 and S = `num_steps` carries into another
    basin. Returns dict(scene_seed, searched, gap) for the first found, or dict(scene_seed=None, searched) when none
    of them misses."""
    from .scenes import scene_draws

    searched = 0
    while searched < max_scenes:
        seeds = range(first_scene + searched, first_scene + min(max_scenes, searched + batch))
        draws = scene_draws(image_size, seeds, num_objects=num_objects)
        gaps = vae_psnr(pipe, draws) - reconstruction_psnr(pipe, draws, "ddim", num_steps, 1.0, [1.0])[1.0]
        for draw, gap in zip(draws, gaps):
            if gap > WRONG_BASIN_DB:
                return {"scene_seed": draw.scene_seed, "searched": draw.scene_seed - first_scene + 1,
                        "gap": float(gap)}
        searched += len(draws)
    return {"scene_seed": None, "searched": searched, "gap": None}


def edit_friendly_study(pipe, draws, num_steps: int, guidance_scale: float, eta: float, seed: int,
                        vae: np.ndarray | None = None) -> dict:
    """Edit-friendly inversion of every scene at (S, w, eta), x_t drawn from `seed` (scene b from seed + b), sampled
    back with its noise maps: dict(exact Rate within EXACT_DB of the VAE, gap Mean, noise_std Mean of the maps' std
    per scene)."""
    from ..inversion import invert, reconstruct

    vae = vae_psnr(pipe, draws) if vae is None else vae
    inversion = invert(pipe, [d.image for d in draws], [d.prompt for d in draws], method="edit_friendly",
                       num_steps=int(num_steps), guidance_scale=float(guidance_scale), eta=float(eta), seed=int(seed),
                       progress=False)
    psnr = psnr_per_image(reconstruct(pipe, inversion, output_type="uint8", progress=False), inputs_uint8(draws))
    maps = inversion.noise_maps.detach().to("cpu").double()  # (S, n, C, h, w)
    per_scene = maps.transpose(0, 1).reshape(len(draws), -1).std(dim=1).numpy()  # (n,)
    return {"eta": float(eta), "exact": rate(np.abs(vae - psnr) < EXACT_DB), "gap": mean(vae - psnr, "dB"),
            "noise_std": mean(per_scene), "psnr": psnr}



# ----------------------------------------------------------------------------------------------------------
# Lab 3's method table as rates: every inversion method at (S, w), reconstruction and edit, over a sample
# ----------------------------------------------------------------------------------------------------------

KEEPS_DB = 2.0  # "keeps the reconstruction" under guidance: within this of the scene's VAE round trip (at S = 20
#                null-text and negative-prompt come within about 1 dB, DDIM inverted at w = 1 or at w lies ~9 dB below)


def method_specs(guidance_scale: float, eta: float = 1.0) -> dict:
    """The methods of lab 3's table at sampling guidance w: {name: (invert method, guidance it inverts for, guidance
    it samples with, options)}.
    DDIM is inverted at w = 1 (a naive editor's pivot) and at w; fixed-point solves each guided step; null-text and
    negative-prompt invert at the w = 1 pivot for sampling at w; edit-friendly records its noise maps at w (`eta`)."""
    w = float(guidance_scale)
    return {"DDIM inverted at w=1": ("ddim", 1.0, w, {}), "DDIM inverted at w": ("ddim", w, w, {}),
            "fixed-point": ("fixed_point", w, w, {}), "null-text": ("null_text", w, w, {}),
            "negative-prompt": ("negative_prompt", w, w, {}),
            "edit-friendly": ("edit_friendly", w, w, {"eta": float(eta)})}


def basin_fix_specs(guidance_scale: float, eta: float = 1.0) -> dict:
    """The methods asked to fix DDIM's wrong basins at w = 1 (where they are defined): DDIM itself, fixed-point and
    edit-friendly at w = 1, and the two that need a w > 1 at `guidance_scale` on DDIM's own w = 1 pivot: null-text
    (optimises every step back onto the pivot) and negative-prompt (samples with the prompt as the null text:
    DDIM at w = 1 again, the control)."""
    w = float(guidance_scale)
    return {"DDIM (w=1)": ("ddim", 1.0, 1.0, {}), "fixed-point (w=1)": ("fixed_point", 1.0, 1.0, {}),
            f"null-text (w={w:g})": ("null_text", w, w, {}), f"negative-prompt (w={w:g})": ("negative_prompt", w, w, {}),
            "edit-friendly (w=1)": ("edit_friendly", 1.0, 1.0, {"eta": float(eta)})}


def method_study(pipe, draws, specs: dict, num_steps: int, vae: np.ndarray | None = None, edits: bool = True,
                 seed: int = 0, inner_steps: int | None = None, limits: dict | None = None,
                 null_text_settings: str | None = None) -> dict:
    """Each method of `specs` ({name: (method, inverted for w, sampled at w, options)}, `method_specs` /
    `basin_fix_specs`) inverts the scenes with their captions at S = `num_steps` (`inversion.invert`, one batch per
    method; edit-friendly draws x_t from `seed` + b), then samples back at its sampling w: the reconstruction, and
    with `edits` the caption with its shape swapped (`shapes.swap_shape`), scored by the analyzer against the edited
    scene (`shapes.scoring.score_scene_edit`).
    `limits` {name: k} runs a method on the first k scenes only (null-text is expensive); `inner_steps` and
    `null_text_settings` ("paper" or "fast"; None: the model's default loop): null-text's.

    Returns dict(num_steps, scene_seeds, vae, methods {name: dict(n, w, psnr (k,), reconstructions and, with edits,
    edits uint8 (k, H, W, 3), gap Mean (VAE - PSNR, dB), keeps
    Rate (gap < KEEPS_DB), wrong_basin Rate (gap > WRONG_BASIN_DB), and with edits: edit_made Rate, layout_kept
    Rate, edited (k,) bool, seconds (CPU))})."""
    import time

    from ..inversion import invert, reconstruct
    from ..shapes import SHAPE_SWAPS, edit_scene, swap_shape
    from ..shapes.scoring import score_scene_edit

    vae = vae_psnr(pipe, draws) if vae is None else vae
    inputs = inputs_uint8(draws)
    methods = {}
    for name, (method, invert_w, sample_w, options) in specs.items():
        k = min(len(draws), (limits or {}).get(name, len(draws)))
        subset = draws[:k]
        extra = dict(options)
        if method == "null_text" and null_text_settings:
            extra["null_text_settings"] = null_text_settings
        if method == "null_text" and inner_steps:
            extra["inner_steps"] = int(inner_steps)
        if method == "edit_friendly":
            extra["seed"] = int(seed)
        start = time.process_time()
        inversion = invert(pipe, [d.image for d in subset], [d.prompt for d in subset], method=method,
                           num_steps=int(num_steps), guidance_scale=float(invert_w), progress=False, **extra)
        sample_w = float(sample_w)
        reconstructions = reconstruct(pipe, inversion, guidance_scale=sample_w, output_type="uint8", progress=False)
        psnr = psnr_per_image(reconstructions, inputs[:k])
        gap = vae[:k] - psnr
        result = {"n": k, "w": sample_w, "psnr": psnr, "reconstructions": reconstructions, "gap": mean(gap, "dB"),
                  "keeps": rate(gap < KEEPS_DB),
                  "wrong_basin": rate(gap > WRONG_BASIN_DB)}
        if edits:
            targets = [edit_scene(d.scene, "shape", SHAPE_SWAPS[d.scene.objects[0].shape]).target for d in subset]
            edited = reconstruct(pipe, inversion, prompt=[swap_shape(d.prompt) for d in subset],
                                 guidance_scale=sample_w, output_type="uint8", progress=False)  # (k, H, W, 3)
            scores = [score_scene_edit([image], d.scene, target)[0] for image, d, target in zip(edited, subset, targets)]
            result.update(edited=np.array([s["edited"] for s in scores]), edits=edited,
                          edit_made=rate([s["edited"] for s in scores]),
                          layout_kept=rate([s["layout_kept"] for s in scores]))
        result["seconds"] = time.process_time() - start
        methods[name] = result
    return {"num_steps": int(num_steps), "scene_seeds": [d.scene_seed for d in draws], "vae": vae, "methods": methods}


def method_rows(study: dict) -> list[dict]:
    """One row per method: n, mean gap to the VAE round trip, how often it keeps the reconstruction (and, with
    edits, how often the edit is made and the layout kept)."""
    rows = []
    for name, m in study["methods"].items():
        row = {"method": name, "w": f"{m['w']:g}", "n": m["n"], "gap to VAE": str(m["gap"]),
               f"keeps (within {KEEPS_DB:g} dB)": str(m["keeps"])}
        if "edit_made" in m:
            row.update({"edit made": str(m["edit_made"]), "layout kept": str(m["layout_kept"])})
        rows.append(row)
    return rows


def method_claims(study: dict, intervals: bool = True, keep_rates: bool = False) -> list[dict]:
    """Lab 3's method claims at (S, w), each dict(claim, holds, evidence): guidance costs both DDIM rows more than
    KEEPS_DB on average (the mean gap's interval above it); null-text and negative-prompt repair it (their gap below
    DDIM-inverted-at-w=1's, paired per scene: the interval of the gain above 0); edit-friendly is exact (mean gap
    under EXACT_DB). With `keep_rates` (N = 64, pipelines/claims.py) also: null-text, negative-prompt and
    edit-friendly keep the reconstruction within KEEPS_DB in most scenes (the rate's lower bound above 1/2).
    QUICK (intervals False) compares the estimates. Methods the study did not run are skipped."""
    methods, claims = study["methods"], []
    pivot = methods.get("DDIM inverted at w=1")
    for name in ("DDIM inverted at w=1", "DDIM inverted at w"):
        if name in methods:
            gap = methods[name]["gap"]
            claims.append({"claim": f"{name}: guidance w = {methods[name]['w']:g} costs the reconstruction more than "
                                    f"{KEEPS_DB:g} dB on average", "holds": (gap.low if intervals else gap.mean) > KEEPS_DB,
                           "evidence": f"gap {gap}; keeps it in {methods[name]['keeps']}"})
    for name in ("null-text", "negative-prompt"):
        if name in methods and pivot is not None:
            m = methods[name]
            gain = mean(m["psnr"] - pivot["psnr"][: m["n"]], "dB")  # (k,): gap of DDIM minus gap of the method
            claims.append({"claim": f"{name} repairs what guidance costs DDIM (its gap below DDIM inverted at w=1's, "
                                    "paired per scene)", "holds": (gain.low if intervals else gain.mean) > 0,
                           "evidence": f"gain {gain}; gap {m['gap']}; keeps it in {m['keeps']}"})
    if "edit-friendly" in methods:
        gap = methods["edit-friendly"]["gap"]
        claims.append({"claim": f"edit-friendly inversion is exact (mean gap to the VAE under {EXACT_DB:g} dB)",
                       "holds": abs(gap.high if intervals else gap.mean) < EXACT_DB, "evidence": f"gap {gap}"})
    if keep_rates:
        for name in ("null-text", "negative-prompt", "edit-friendly"):
            if name in methods:
                keeps = methods[name]["keeps"]
                claims.append({"claim": f"{name} keeps the reconstruction (within {KEEPS_DB:g} dB of the VAE) in "
                                        "most scenes", "holds": (keeps.low if intervals else keeps.value) > 0.5,
                               "evidence": f"keeps it in {keeps}; gap {methods[name]['gap']}"})
    return claims


def basin_fix_rows(study: dict) -> list[dict]:
    """For DDIM's wrong-basin scenes: per method, how often it brings the scene back (out of the wrong basin: gap
    under WRONG_BASIN_DB; and within KEEPS_DB of the VAE)."""
    return [{"method": name, "n": m["n"], "gap to VAE": str(m["gap"]),
             f"back (gap < {WRONG_BASIN_DB:g} dB)": str(fixed_rate(study, name)),
             f"within {KEEPS_DB:g} dB": str(m["keeps"])} for name, m in study["methods"].items()]


def fixed_rate(study: dict, name: str):
    """How often method `name` of a `method_study` on wrong-basin scenes brings the scene back (gap under
    WRONG_BASIN_DB): a Rate over the scenes it ran on."""
    m = study["methods"][name]
    return rate(study["vae"][: m["n"]] - m["psnr"] < WRONG_BASIN_DB)


def find_wrong_basins(pipe, image_size: int, first_scene: int, num_steps: int, max_scenes: int, count: int,
                      batch: int = 16, num_objects: int | None = 1) -> dict:
    """Search scenes first_scene, first_scene + 1, ... (at most `max_scenes`) for up to `count` scenes that DDIM
    inversion at w = 1 and S carries into another basin (`find_wrong_basin` for several). Returns
    dict(scene_seeds [found], gaps [dB], searched)."""
    from .scenes import scene_draws

    found, gaps, searched = [], [], 0
    while searched < max_scenes and len(found) < count:
        seeds = range(first_scene + searched, first_scene + min(max_scenes, searched + batch))
        draws = scene_draws(image_size, seeds, num_objects=num_objects)
        gap = vae_psnr(pipe, draws) - reconstruction_psnr(pipe, draws, "ddim", num_steps, 1.0, [1.0])[1.0]
        for draw, g in zip(draws, gap):
            if g > WRONG_BASIN_DB and len(found) < count:
                found.append(draw.scene_seed)
                gaps.append(float(g))
        searched += len(draws)
    return {"scene_seeds": found, "gaps": gaps, "searched": searched}


def basin_fix_claims(study: dict) -> list[dict]:
    """For DDIM's wrong-basin scenes (a `method_study` with `basin_fix_specs`): fixed-point, null-text and
    edit-friendly bring every one back (gap under WRONG_BASIN_DB); the rate over the scenes, with its small n."""
    claims = []
    for name in study["methods"]:
        if name.split(" (")[0] in ("fixed-point", "null-text", "edit-friendly"):
            fixed = fixed_rate(study, name)
            claims.append({"claim": f"{name} brings back every scene DDIM (w = 1, S = {study['num_steps']}) carried "
                                    "into another basin", "holds": fixed.successes == fixed.n,
                           "evidence": f"back in {fixed} (scenes {study['scene_seeds']}); gap "
                                       f"{study['methods'][name]['gap']}"})
    return claims


def method_example_lines(study: dict, count: int) -> list[str]:
    """Where the worked examples (the first `count` scenes of a `method_study`) depart from what a method usually
    does: "scene s: <method> ... : this draw is one of the x% (k/n) where it does". [] when every example is typical."""
    lines = []
    for name, m in study["methods"].items():
        for index in range(min(count, m["n"])):
            seed, gap = study["scene_seeds"][index], float(study["vae"][index] - m["psnr"][index])
            outcomes = [("keeps", gap < KEEPS_DB, f"keeps its reconstruction (gap {gap:.1f} dB)",
                         f"loses its reconstruction (gap {gap:.1f} dB)")]
            if "edited" in m:
                outcomes.append(("edit_made", bool(m["edited"][index]), "makes the edit", "does not make the edit"))
            for key, happened, yes, no in outcomes:
                r = m[key]
                share = r if happened else rate([False] * r.successes + [True] * (r.n - r.successes))
                if share.value < 0.5:
                    lines.append(f"worked example scene {seed}: {name} {yes if happened else no}: this draw is one "
                                 f"of the {share} of the scenes where it {'does' if happened else 'does not'}")
    return lines
