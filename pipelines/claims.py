"""Every claim of the labs as a rate or a mean with its 95% interval, over N scenes and seeds (default N = 64).

    python pipelines/claims.py                       # all labs' studies at N = 64 -> outputs/claims/
    python pipelines/claims.py --labs 1 --n 16       # lab 1 only, 16 scenes
    python pipelines/claims.py --quick               # small N (what the test runs)

Each study is one function of `diffusion_lab.studies` (the labs call the same functions on a smaller sample beside
their worked example) at the labs' default parameters. Prints one line per claim (the rate or mean, n, the Wilson or
bootstrap interval, and whether the claim holds) and writes claims.json (every number) and claims.md (the tables
README and the labs quote) atomically to --out. The machine, N and the seconds each study took are recorded.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

LAB1_DEFAULTS = dict(obj={"shape": "triangle", "colour": "blue", "size": "large"}, background="gray",
                     edit_kind="shape", edit_value="square", strengths=[0.1, 0.2, 0.3, 0.5, 0.7, 1.0],
                     num_steps=20, guidance_scale=5.0, seed=0)


def lab1(pipe, n: int, quick: bool) -> dict:
    """Lab 1: edit done / layout kept / both per strength (naive noising of a large blue triangle to a square)."""
    from diffusion_lab.studies import naive_noising as study_lib

    settings = dict(LAB1_DEFAULTS)
    if quick:
        settings["strengths"] = [0.1, 0.5, 1.0]
    study = study_lib.strength_tradeoff(pipe, scene_seeds=range(n), **settings)
    claims = study_lib.tradeoff_claims(study, intervals=not quick)
    spot = study_lib.sweet_spot(study)
    return {
        "title": "Lab 1: naive noising trades the edit against the layout "
                 f"({settings['obj']['size']} {settings['obj']['colour']} {settings['obj']['shape']} -> "
                 f"{settings['edit_value']}, S = {settings['num_steps']})",
        "table": study_lib.tradeoff_rows(study),
        "claims": claims + ([{"claim": f"sweet spot: s = {spot['strength']:g}", "holds": True,
                              "evidence": f"edit done and layout kept together in {spot['rate']}"}] if spot else []),
        "numbers": {"n": study["n"], "strengths": study["strengths"],
                    "rates": {k: [r.as_dict() for r in v] for k, v in study["rates"].items()}},
    }


LAB2_DEFAULTS = dict(steps=[10, 50, 100], set_size=6, reference_count=128, seed=0, marginal_draws=2000,
                     marginal_steps=10)


def lab2(pipe, n: int, quick: bool) -> dict:
    """Lab 2: q_sigma keeps the marginals (at n seeds), and DDIM's Table 1 in the shapes world: sigma-hat's excess
    noise per image at small and large S, the etas' spread, and how often the paper's orderings hold (per image:
    noise; per set of 6 samples, the lab's table: Frechet distance)."""
    from diffusion_lab.images import pil_to_tensor
    from diffusion_lab.latents import image_size
    from diffusion_lab.schedules import NoiseSchedule
    from diffusion_lab.stats import rate
    from diffusion_lab.studies import posterior as study_lib
    from diffusion_lab.studies.scenes import scene_draws

    settings = dict(LAB2_DEFAULTS)
    if quick:
        settings.update(steps=[10, 20], set_size=2, reference_count=32)
    schedule = NoiseSchedule.from_scheduler_config(pipe.scheduler)
    marginal_holds, tolerance = [], []
    for draw in scene_draws(image_size(pipe), range(n)):  # lab 2's x_0 at SEED = 0, 1, ...: its scene, 16x16
        rows = study_lib.marginal_study(schedule, pil_to_tensor(draw.image.resize((16, 16))),
                                        settings["marginal_steps"], num_draws=settings["marginal_draws"],
                                        seed=draw.scene_seed)
        marginal_holds.append([c["holds"] for c in study_lib.marginal_claims(rows)])
        tolerance.append(study_lib.marginal_family_error(rows))
    kept, too_noisy = rate([h[0] for h in marginal_holds]), rate([h[1] for h in marginal_holds])
    claims = [
        {"claim": f"the marginal check passes at every SEED (q_sigma keeps q(x_(t-1) | x_0) within "
                  f"{study_lib.MARGINAL_TOLERANCE_SE:g} Monte Carlo SE, {settings['marginal_draws']} draws)",
         "holds": kept.successes == kept.n,
         "evidence": f"passes at {kept} of the seeds (chance failure at most {max(tolerance):.1%} per seed)"},
        {"claim": "sigma-hat's std exceeds the marginal's at every step, at every SEED",
         "holds": too_noisy.successes == too_noisy.n, "evidence": f"at {too_noisy} of the seeds"},
    ]
    study = study_lib.sampler_study(pipe, n, settings["steps"], seed=settings["seed"], set_size=settings["set_size"],
                                    reference_count=settings["reference_count"])
    claims += study_lib.sampler_claims(study, intervals=not quick)
    table = [{"study": f"noise per image, N = {n}", **row} for row in study_lib.noise_rows(study)]
    table += [{"study": f"orderings, N = {n}", **row} for row in study_lib.order_rows(study)]
    return {
        "title": f"Lab 2: the generalized posterior and DDIM's Table 1 in the shapes world (captions from seed "
                 f"{settings['seed']}, guidance 1)",
        "table": table, "claims": claims,
        "numbers": {"n": n, "marginal": {"kept": kept.as_dict(), "too_noisy": too_noisy.as_dict()},
                    "set_size": study["set_size"], "sets": study["sets"],
                    "noise": {s: {k: v.as_dict() for k, v in m.items()} for s, m in study["noise"].items()},
                    "gap": {s: {k: v.as_dict() for k, v in m.items()} for s, m in study["gap"].items()},
                    "noisiest": {s: r.as_dict() for s, r in study["noisiest"].items()},
                    "order": {s: {k: v.as_dict() for k, v in m.items()} for s, m in study["order"].items()},
                    "fd_order": {s: {k: v.as_dict() for k, v in m.items()} for s, m in study["fd_order"].items()},
                    "eta_spread": {s: study_lib.eta_spread(study, s) for s in study["steps"]}},
    }


LAB3_DEFAULTS = dict(first_scene=11, steps=[10, 20, 50, 100], basin_steps=[20, 50], largest_guidance=7.5,
                     guidance_steps=20, friendly_steps=20, friendly_guidance=3.5, friendly_eta=1.0, seed=11)


def lab3(pipe, n: int, quick: bool) -> dict:
    """Lab 3: DDIM inversion's error against S, its failure under guidance, wrong basins and fixed-point inversion,
    edit-friendly inversion's exactness (scenes 11, 12, ... of one object each: the lab's sample)."""
    from diffusion_lab.latents import image_size
    from diffusion_lab.studies import inversion as study_lib
    from diffusion_lab.studies.scenes import scene_draws

    settings = dict(LAB3_DEFAULTS)
    if quick:
        settings.update(steps=[10, 20], basin_steps=[10], guidance_steps=10, friendly_steps=10)
    draws = scene_draws(image_size(pipe), range(settings["first_scene"], settings["first_scene"] + n), num_objects=1)
    vae = study_lib.vae_psnr(pipe, draws)
    steps = study_lib.steps_study(pipe, draws, settings["steps"], vae)
    s_min, s_max = settings["steps"][0], settings["steps"][-1]
    claims = [{"claim": f"DDIM inversion at w = 1 gives a scene back at least as well at S = {s_max} as at S = {s_min} "
                        "(within 0.3 dB) for most scenes",
               "holds": steps["improves"].low > 0.5 if not quick else steps["improves"].value > 0.5,
               "evidence": f"{steps['improves']}"}]
    table = [{"study": "DDIM, w = 1", **row} for row in study_lib.steps_rows(steps)]
    guidance = study_lib.guidance_study(pipe, draws, settings["largest_guidance"], settings["guidance_steps"])
    for name, method in guidance["methods"].items():
        breaks = method["breaks"]
        should_break = name.startswith("DDIM")
        holds = (breaks.low > 0.5 if should_break else breaks.high < 0.5) if not quick else (
            breaks.value > 0.5 if should_break else breaks.value < 0.5)
        claims.append({"claim": f"{name}: guidance w = {guidance['w']:g} (S = {guidance['num_steps']}) "
                                f"{'breaks' if should_break else 'does not break'} the reconstruction of most scenes",
                       "holds": holds, "evidence": f"drop {method['drop']}; drop > {study_lib.GUIDANCE_COST_DB:g} dB "
                                                   f"in {breaks}"})
    table += [{"study": f"guidance, S = {guidance['num_steps']}", **row} for row in study_lib.guidance_rows(guidance)]
    basins = {}
    for num_steps in settings["basin_steps"]:
        basin = study_lib.basin_study(pipe, draws, num_steps, vae, steps["psnr"].get(num_steps))
        basins[num_steps] = basin
        table += [{"study": f"wrong basin, S = {num_steps}", **row} for row in study_lib.basin_rows(basin)]
        fixed = basin["gap"]["fixed-point"]
        claims.append({"claim": f"fixed-point inversion (S = {num_steps}, w = 1) reaches the VAE round trip "
                                "(mean gap under 0.5 dB) where DDIM sometimes lands in another basin",
                       "holds": (fixed.high if not quick else fixed.mean) < 0.5,
                       "evidence": f"fixed-point gap {fixed}; DDIM wrong basin {basin['wrong_basin']['DDIM']} "
                                   f"(scenes {basin['missed_scenes']})"})
    friendly = study_lib.edit_friendly_study(pipe, draws, settings["friendly_steps"], settings["friendly_guidance"],
                                             settings["friendly_eta"], settings["seed"], vae)
    claims.append({"claim": f"edit-friendly inversion (S = {settings['friendly_steps']}, w = "
                            f"{settings['friendly_guidance']:g}, eta = {settings['friendly_eta']:g}) is exact "
                            f"(within {study_lib.EXACT_DB:g} dB of the VAE round trip) for every scene",
                   "holds": friendly["exact"].successes == friendly["exact"].n,
                   "evidence": f"exact in {friendly['exact']}; noise maps' std {friendly['noise_std']}"})
    return {
        "title": f"Lab 3: inversion fidelity (scenes {settings['first_scene']}..{settings['first_scene'] + n - 1})",
        "table": table, "claims": claims,
        "numbers": {"n": n, "vae": {"mean": str(study_lib.mean(vae, 'dB'))},
                    "steps": {s: {"mean": steps["mean"][s].as_dict(), "gap": steps["gap"][s].as_dict(),
                                  "wrong_basin": steps["wrong_basin"][s].as_dict()} for s in steps["steps"]},
                    "improves": steps["improves"].as_dict(),
                    "guidance": {name: {k: v.as_dict() for k, v in m.items() if k != "psnr"}
                                 for name, m in guidance["methods"].items()},
                    "basin": {s: {"missed_scenes": b["missed_scenes"],
                                  "gap": {k: v.as_dict() for k, v in b["gap"].items()},
                                  "near": {k: v.as_dict() for k, v in b["near"].items()}} for s, b in basins.items()},
                    "edit_friendly": {"exact": friendly["exact"].as_dict(),
                                      "noise_std": friendly["noise_std"].as_dict()}},
    }


LAB3_METHOD_DEFAULTS = dict(first_scene=11, num_steps=20, guidance=7.5, inner_steps=10, null_text_settings="paper",
                            null_text_n=None,
                            basin_steps=20, basin_search=256, basin_count=8, seed=11)


def lab3_methods(pipe, n: int, quick: bool) -> dict:
    """Lab 3's method table as rates (scenes 11, 12, ...): every inversion method at w = 7.5 and S = 20 (the lab's
    study), its gap to the VAE round trip, how often it keeps the reconstruction and how often its shape-swap edit is
    made; and, for the wrong-basin scenes of DDIM at w = 1 found among scenes 11.. (up to basin_count), which
    methods bring them back."""
    from diffusion_lab.latents import image_size
    from diffusion_lab.studies import inversion as study_lib
    from diffusion_lab.studies.scenes import scene_draws

    settings = dict(LAB3_METHOD_DEFAULTS)
    if quick:
        settings.update(num_steps=10, inner_steps=2, basin_steps=10, basin_search=8, basin_count=1)
    draws = scene_draws(image_size(pipe), range(settings["first_scene"], settings["first_scene"] + n), num_objects=1)
    limits = {"null-text": settings["null_text_n"]} if settings["null_text_n"] else None
    study = study_lib.method_study(pipe, draws, study_lib.method_specs(settings["guidance"]), settings["num_steps"],
                                   seed=settings["seed"], inner_steps=settings["inner_steps"], limits=limits,
                                   null_text_settings=settings["null_text_settings"])
    title = f"methods at w = {settings['guidance']:g}, S = {settings['num_steps']}"
    table = [{"study": title, **row} for row in study_lib.method_rows(study)]
    claims = study_lib.method_claims(study, intervals=not quick, keep_rates=True)
    search = study_lib.find_wrong_basins(pipe, image_size(pipe), settings["first_scene"], settings["basin_steps"],
                                         max(n, settings["basin_search"]), settings["basin_count"])
    numbers = {"n": n, "methods": {name: {k: (v.as_dict() if hasattr(v, "as_dict") else v) for k, v in m.items()
                                          if k in ("n", "w", "gap", "keeps", "wrong_basin", "edit_made", "layout_kept",
                                                   "seconds")} for name, m in study["methods"].items()},
               "wrong_basin_search": search}
    if search["scene_seeds"]:
        fix = study_lib.method_study(pipe, scene_draws(image_size(pipe), search["scene_seeds"]),
                                     study_lib.basin_fix_specs(settings["guidance"]), settings["basin_steps"],
                                     edits=False, seed=settings["seed"], inner_steps=settings["inner_steps"],
                                     null_text_settings=settings["null_text_settings"])
        table += [{"study": f"DDIM's wrong basins (w = 1, S = {settings['basin_steps']}; scenes {search['scene_seeds']}"
                            f" of {search['searched']} searched)", **row} for row in study_lib.basin_fix_rows(fix)]
        claims += study_lib.basin_fix_claims(fix)
        numbers["basin_fix"] = {name: {"gap": m["gap"].as_dict(), "back": study_lib.fixed_rate(fix, name).as_dict()}
                                for name, m in fix["methods"].items()}
    return {"title": f"Lab 3: the inversion methods under guidance, and DDIM's wrong basins (scenes "
                     f"{settings['first_scene']}..{settings['first_scene'] + n - 1})",
            "table": table, "claims": claims, "numbers": numbers}


LAB4_DEFAULTS = dict(source_prompt="a large blue square on a gray background",
                     swaps=[("square", "triangle"), ("blue", "red")],
                     blend_prompt="a large red circle and a small blue square on a gray background",
                     blend_swap=("circle", "triangle"), num_steps=20, guidance_scale=5.0, first_seed=0,
                     refine_prompts=("a large circle on a gray background",
                                     "a large green circle on a gray background"),
                     reweight_prompt="a large red circle on a gray background", reweight_word="red",
                     reweight_scales=[0.0, 1.0, 2.0, 4.0], real_first_scene=3, real_inversion="direct")


def lab4(pipe, n: int, quick: bool) -> dict:
    """Lab 4: word swaps without and with P2P, local blend with our mask and the official P2P mask, refine,
    reweight, and the word swaps of rendered scenes through direct inversion."""
    from diffusion_lab.studies import p2p as study_lib

    settings = dict(LAB4_DEFAULTS)
    if quick:
        settings["num_steps"] = 10
    seeds = range(settings["first_seed"], settings["first_seed"] + n)
    table, claims, numbers = [], [], {"swaps": {}}
    for old, new in settings["swaps"]:
        study = study_lib.word_swap_study(pipe, settings["source_prompt"], old, new, seeds, settings["num_steps"],
                                          settings["guidance_scale"])
        title = f"{old} -> {new}"
        table += [{"study": f"word swap {title}, S = {settings['num_steps']}", **row}
                  for row in study_lib.word_swap_rows(study)]
        made, kept, gain = study["edit_made"]["P2P"], study["layout_kept"], study["iou_gain"]
        claims += [
            {"claim": f"{title}: P2P makes the edit in most seeds",
             "holds": (made.low if not quick else made.value) > 0.5,
             "evidence": str(made)},
            {"claim": f"{title}: P2P keeps the object in place at least as often as the prompt alone",
             "holds": kept["P2P"].value >= kept["no P2P"].value,
             "evidence": f"with P2P {kept['P2P']}; without {kept['no P2P']}"},
            {"claim": f"{title}: P2P's object IoU beats the prompt alone's (paired gain above 0)",
             "holds": (gain.low if not quick else gain.mean) > 0,
             "evidence": f"IoU gain {gain}; IoU without {study['iou']['no P2P']}, with {study['iou']['P2P']}"},
        ]
        numbers["swaps"][title] = {"edit_made": {m: r.as_dict() for m, r in study["edit_made"].items()},
                                   "layout_kept": {m: r.as_dict() for m, r in kept.items()},
                                   "iou": {m: r.as_dict() for m, r in study["iou"].items()}, "iou_gain": gain.as_dict()}
    old, new = settings["blend_swap"]
    blend = study_lib.local_blend_study(pipe, settings["blend_prompt"], old, new, [old, new], seeds,
                                        settings["num_steps"], settings["guidance_scale"])
    table += [{"study": f"local blend {old} -> {new} (two objects), S = {settings['num_steps']}", **row}
              for row in study_lib.local_blend_rows(blend)]
    for mask in ("ours", "official"):
        gain = blend["gain"][mask]
        claims.append({"claim": f"local blend ({mask} mask) keeps more outside the edited object than P2P alone",
                       "holds": (gain.low if not quick else gain.mean) > 0, "evidence": f"outside PSNR gain {gain}; "
                       f"edit made {blend['edit_made'][mask]}"})
    claims.append({"claim": "our mask's area relative to the official P2P mask's (a measurement, not a claim)",
                   "holds": True, "evidence": str(blend["area_ratio"])})
    claims.append({"claim": "the official mask keeps more outside the edit than ours, at no loss of edits (the "
                            "library's default mask since this was measured)",
                   "holds": (blend["official_minus_ours"].low if not quick else blend["official_minus_ours"].mean) > 0
                   and blend["edit_made"]["official"].successes >= blend["edit_made"]["ours"].successes,
                   "evidence": f"outside PSNR official minus ours {blend['official_minus_ours']}; edit made official "
                               f"{blend['edit_made']['official']}, ours {blend['edit_made']['ours']}"})
    numbers["local_blend"] = {"outside_psnr": {m: v.as_dict() for m, v in blend["outside_psnr"].items()},
                              "gain": {m: v.as_dict() for m, v in blend["gain"].items()},
                              "area": {m: v.as_dict() for m, v in blend["area"].items()},
                              "area_ratio": blend["area_ratio"].as_dict(),
                              "official_minus_ours": blend["official_minus_ours"].as_dict()}
    table_rows, more_claims, more_numbers = lab4_refine_reweight_real(pipe, settings, seeds, n, quick)
    return {"title": f"Lab 4: Prompt-to-Prompt word swaps, local blend, refine, reweight and real-image swaps "
                     f"(seeds {seeds.start}..{seeds.stop - 1}; scenes {settings['real_first_scene']}.."
                     f"{settings['real_first_scene'] + n - 1})",
            "table": table + table_rows, "claims": claims + more_claims, "numbers": {**numbers, **more_numbers}}


def lab4_refine_reweight_real(pipe, settings: dict, seeds: range, n: int, quick: bool):
    """Lab 4's refine, reweight and real-image studies: (table rows, claims, numbers)."""
    from diffusion_lab.shapes import parse_caption
    from diffusion_lab.studies import p2p as study_lib

    def holds_above(estimate, threshold=0.5):  # the interval above the threshold (QUICK: the estimate)
        return (estimate.low if not quick else estimate.value) > threshold

    steps, guidance = settings["num_steps"], settings["guidance_scale"]
    table, claims, numbers = [], [], {}
    source, refined = settings["refine_prompts"]
    refine = study_lib.refine_study(pipe, source, refined, seeds, steps, guidance)
    table += [{"study": f"refine '{source}' -> '{refined}', S = {steps}", **row}
              for row in study_lib.refine_rows(refine)]
    adds = refine["adds"]
    claims.append({"claim": "refine adds what the source lacks: among the draws whose source lacks it, the refined "
                            "image shows it in most, with the object kept in place",
                   "holds": adds is not None and holds_above(adds) and holds_above(refine["layout_kept"]),
                   "evidence": f"eligible (source lacks it) {refine['eligible']}; shows it in {adds}; layout kept "
                               f"{refine['layout_kept']}; object IoU {refine['iou']}"})
    numbers["refine"] = {k: refine[k].as_dict() if refine[k] is not None else None
                         for k in ("eligible", "adds", "iou", "layout_kept")}
    numbers["refine"]["eligible_seeds"] = refine["eligible_seeds"]

    scales = settings["reweight_scales"] if not quick else [0.0, 1.0, 4.0]
    word = settings["reweight_word"]
    reweight = study_lib.reweight_study(pipe, settings["reweight_prompt"], word, scales, seeds, steps, guidance)
    table += [{"study": f"reweight '{word}' in '{settings['reweight_prompt']}', S = {steps}", **row}
              for row in study_lib.reweight_rows(reweight)]
    moderate = max(s for s in scales if s <= 2.0)
    claims.append({"claim": f"reweight's weakness: scaling '{word}' by 0 to {moderate:g} hardly moves its colour's "
                            f"share (range under {study_lib.REWEIGHT_STEADY:g}) in most seeds",
                   "holds": holds_above(reweight["steady"]),
                   "evidence": f"steady in {reweight['steady']}; range {reweight['spread']}; share higher at "
                               f"{moderate:g} than at 0 in {reweight['rises']}"})
    if reweight["beyond"] is not None:
        claims.append({"claim": f"scaling '{word}' by {max(scales):g} changes the colour (its share moves by more "
                                f"than {study_lib.REWEIGHT_STEADY:g}) in most seeds",
                       "holds": holds_above(reweight["beyond"]),
                       "evidence": f"{reweight['beyond']}; share {reweight['share'][max(scales)]} against "
                                   f"{reweight['share'][1.0] if 1.0 in reweight['share'] else 'n/a'} unscaled"})
    numbers["reweight"] = {"share": {f"{s:g}": m.as_dict() for s, m in reweight["share"].items()},
                           "steady": reweight["steady"].as_dict(), "spread": reweight["spread"].as_dict(),
                           "rises": reweight["rises"].as_dict(),
                           "beyond": reweight["beyond"].as_dict() if reweight["beyond"] is not None else None}

    wanted = parse_caption(settings["source_prompt"])
    objects = [{k: getattr(o, k) for k in ("shape", "colour", "size") if getattr(o, k)} for o in wanted.objects]
    scenes = range(settings["real_first_scene"], settings["real_first_scene"] + n)
    real = study_lib.real_edit_study(pipe, objects, wanted.background, settings["swaps"], scenes,
                                     settings["real_inversion"], steps, guidance)
    table += [{"study": f"real scenes, {settings['real_inversion']} inversion, S = {steps}", **row}
              for row in study_lib.real_edit_rows(real)]
    numbers["real"] = {}
    for title, swap in real["swaps"].items():
        gain, kept = swap["iou_gain"], swap["layout_kept"]
        claims.append({"claim": f"real scenes, {title}: P2P keeps the object in place at least as often as the "
                                "prompt alone, and makes the edit in most scenes",
                       "holds": kept["P2P"].value >= kept["no P2P"].value and holds_above(swap["edit_made"]["P2P"]),
                       "evidence": f"edit made with P2P {swap['edit_made']['P2P']}; kept with P2P {kept['P2P']}, "
                                   f"without {kept['no P2P']}; IoU gain {gain}"})
        numbers["real"][title] = {"edit_made": {m: r.as_dict() for m, r in swap["edit_made"].items()},
                                  "layout_kept": {m: r.as_dict() for m, r in kept.items()},
                                  "iou": {m: r.as_dict() for m, r in swap["iou"].items()}, "iou_gain": gain.as_dict()}
    colour = real["swaps"][" -> ".join(settings["swaps"][1])]["iou_gain"]
    claims.append({"claim": f"real scenes, colour swap {' -> '.join(settings['swaps'][1])}: P2P's object IoU beats "
                            "the prompt alone's (paired gain above 0)",
                   "holds": (colour.low if not quick else colour.mean) > 0, "evidence": f"IoU gain {colour}"})
    return table, claims, numbers


STUDIES = {"1": lab1, "2": lab2, "3": lab3, "3m": lab3_methods, "4": lab4}


def markdown(results: dict) -> str:
    lines = [f"# The labs' claims, measured (N = {results['n']}, 95% intervals)", "",
             f"`python pipelines/claims.py{' --quick' if results['quick'] else ''} --n {results['n']}` on "
             f"{results['machine']}.", ""]
    for key, study in results["studies"].items():
        lines += [f"## {study['title']}", f"({study['seconds']:.0f} s)", ""]
        rows = study["table"]
        for columns in dict.fromkeys(tuple(row) for row in rows):  # one table per set of columns
            lines += ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
            lines += ["| " + " | ".join(str(row[c]) for c in columns) + " |" for row in rows if tuple(row) == columns]
            lines.append("")
        lines += [f"- {'holds' if c['holds'] else 'DOES NOT HOLD'}: {c['claim']} ({c['evidence']})"
                  for c in study["claims"]]
        lines.append("")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--labs", nargs="*", default=list(STUDIES), choices=list(STUDIES), help="labs (default all)")
    parser.add_argument("--n", type=int, default=None, help="scenes per study (default 64; --quick: 6)")
    parser.add_argument("--quick", action="store_true", help="small N and fewer settings (tests)")
    parser.add_argument("--threads", type=int, default=1, help="torch CPU threads (default 1)")
    parser.add_argument("--out", default=str(REPO / "outputs" / "claims"))
    args = parser.parse_args(argv)
    n = args.n or (6 if args.quick else 64)
    if n < 1:
        parser.error("--n must be at least 1")

    import torch

    from diffusion_lab.atomic_files import atomic_write_text
    from diffusion_lab.models import load_pipeline

    torch.set_num_threads(args.threads)
    pipe = load_pipeline("shapes-tiny")
    results = {"n": n, "quick": args.quick, "machine": f"{platform.machine()} {platform.processor() or ''}".strip()
               + f", {args.threads} torch thread(s)", "studies": {}}
    all_hold = True
    for key in args.labs:
        start = time.process_time()
        study = STUDIES[key](pipe, n, args.quick)
        study["seconds"] = time.process_time() - start
        results["studies"][key] = study
        print(f"\n{study['title']}  [{study['seconds']:.0f} s CPU]", flush=True)
        for row in study["table"]:
            print("  " + "  ".join(f"{k}: {v}" for k, v in row.items()))
        for claim in study["claims"]:
            all_hold &= bool(claim["holds"])
            print(f"  {'holds' if claim['holds'] else 'DOES NOT HOLD'}: {claim['claim']} -- {claim['evidence']}",
                  flush=True)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "claims.json", json.dumps(results, indent=1, default=str) + "\n")
    atomic_write_text(out / "claims.md", markdown(results))
    print(f"\nwrote {out / 'claims.json'} and {out / 'claims.md'}")
    return 0 if all_hold else 1


if __name__ == "__main__":
    sys.exit(main())
