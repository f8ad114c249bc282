"""Lab 4's claims measured: Prompt-to-Prompt edits of generated images over many seeds, as rates and means.

Each seed gives a source image (x_T = initial_noise(seed)); the edit runs from the same x_T with and without
attention control (`editing.run_edit`), and the analyzer scores it (`shapes.scoring.score_edit` and `edit_scores`):

    edit made      the edited image shows every attribute the target prompt names (target_matched == 1)
    layout kept    its main object's centre is within LAYOUT_TOLERANCE of the source's
    IoU            of the main object, edit against source (1 = same place and outline; a triangle standing in its
                   square covers about half of it)
    outside PSNR   dB outside the main objects of both images (what an edit of the object should leave alone)

    word_swap_study    a word swap without and with P2P: the rates, mean IoU, and the paired IoU gain of P2P
    local_blend_study  a two-object word swap with P2P, without local blend, with ours and with the official
                       Prompt-to-Prompt mask (`attention.LocalBlend`'s mask_style): outside PSNR and the masks' areas
    refine_study       P2P's refine (AttentionRefine) adding a word the source prompt leaves open: how often the
                       refined image shows what the source lacked (among the draws whose source lacked it)
    reweight_study     P2P's reweighting (AttentionReweight) of a colour word: its colour's pixel share per scale
    real_edit_study    the word swaps of rendered scenes ("real" images) through an inversion, without and with P2P

Seeds: generated studies use the seeds given (x_T = initial_noise(seed)); the real-image study renders the scenes
random_scene(scene_seed, objects=...) of `studies.scenes` (the same object, a random placement per scene).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ..editing import PromptEdit
from ..stats import mean, rate


def edit_record(result) -> dict:
    """The analyzer's numbers of one EditResult's first target (module docstring)."""
    from ..shapes.scoring import edit_scores, score_edit

    source, edited, target = result.source_image, result.edited_images[0], result.prompts[1]
    return {**edit_scores(source, edited, target), "layout_kept": score_edit(source, edited, target)["layout_kept"]}


def word_swap_study(pipe, source_prompt: str, old: str, new: str, seeds: Sequence[int], num_steps: int = 20,
                    guidance_scale: float | None = None) -> dict:
    """`old` -> `new` in `source_prompt` for each seed, without and with P2P (PromptEdit's defaults). Returns
    dict(target, seeds, records {"no P2P" | "P2P": [per seed]}, edit_made / layout_kept {mode: Rate},
    iou {mode: Mean}, iou_gain Mean (P2P minus no P2P, paired per seed), p2p_helps Rate of a gain over 0.1)."""
    from ..editing import run_edit

    target = source_prompt.replace(old, new)
    if target == source_prompt:
        raise ValueError(f"{old!r} is not a word of {source_prompt!r}")
    spec = {"source_prompt": source_prompt, "target_prompts": [target], "edit": "replace"}
    modes = {"no P2P": {**spec, "attention_control": False}, "P2P": spec}
    records = {mode: [] for mode in modes}
    for seed in seeds:
        for mode, settings in modes.items():
            result = run_edit(pipe, PromptEdit.from_dict(settings), seed=int(seed), num_steps=num_steps,
                              guidance_scale=guidance_scale, progress=False)
            records[mode].append(edit_record(result))
    gain = np.array([p["iou"] - n["iou"] for p, n in zip(records["P2P"], records["no P2P"])])
    return {
        "target": target, "seeds": [int(s) for s in seeds], "num_steps": num_steps, "records": records,
        "edit_made": {m: rate([r["target_matched"] == 1.0 for r in rs]) for m, rs in records.items()},
        "layout_kept": {m: rate([r["layout_kept"] == 1.0 for r in rs]) for m, rs in records.items()},
        "iou": {m: mean([r["iou"] for r in rs]) for m, rs in records.items()},
        "iou_gain": mean(gain), "p2p_helps": rate(gain > 0.1),
    }


def word_swap_rows(study: dict) -> list[dict]:
    return [{"run": mode, "edit made": str(study["edit_made"][mode]), "layout kept": str(study["layout_kept"][mode]),
             "object IoU": str(study["iou"][mode])} for mode in study["records"]]


BLEND_MODES = ("no blend", "ours", "official")


def local_blend_study(pipe, source_prompt: str, old: str, new: str, blend_words: Sequence[str],
                      seeds: Sequence[int], num_steps: int = 20, guidance_scale: float | None = None) -> dict:
    """`old` -> `new` with P2P for each seed, without local blend and with each mask over `blend_words`. Returns
    dict(records {mode: [per seed, with mask_area for the blends: the union mask's share of the latent]},
    outside_psnr {mode: Mean}, edit_made {mode: Rate}, gain {mask: Mean outside PSNR over no blend, paired},
    area_ratio Mean of ours / official mask area, official_minus_ours Mean of the outside PSNR, paired)."""
    from ..editing import run_edit

    target = source_prompt.replace(old, new)
    spec = {"source_prompt": source_prompt, "target_prompts": [target], "edit": "replace"}
    records = {mode: [] for mode in BLEND_MODES}
    for seed in seeds:
        for mode in BLEND_MODES:
            settings = spec if mode == "no blend" else {**spec, "blend_words": list(blend_words),
                                                        "blend_mask_style": mode}
            edit = PromptEdit.from_dict(settings)
            result = run_edit(pipe, edit, seed=int(seed), num_steps=num_steps, guidance_scale=guidance_scale,
                              progress=False)
            record = edit_record(result)
            if mode != "no blend":
                blend, side = result.controller.local_blend, int(result.latents.shape[-1])
                masks = blend.mask(result.controller, (side, side))  # (prompts, 1, h, w)
                record["mask_area"] = float((masks[1:] | masks[:1]).float().mean())
            records[mode].append(record)
    outside = {m: np.array([r["outside_psnr"] for r in rs]) for m, rs in records.items()}
    areas = {m: np.array([r["mask_area"] for r in records[m]]) for m in ("ours", "official")}
    return {
        "target": target, "seeds": [int(s) for s in seeds], "num_steps": num_steps, "records": records,
        "outside_psnr": {m: mean(v, "dB") for m, v in outside.items()},
        "edit_made": {m: rate([r["target_matched"] == 1.0 for r in rs]) for m, rs in records.items()},
        "gain": {m: mean(outside[m] - outside["no blend"], "dB") for m in ("ours", "official")},
        "area": {m: mean(v) for m, v in areas.items()},
        "area_ratio": mean(areas["ours"] / np.maximum(areas["official"], 1e-9)),
        "official_minus_ours": mean(outside["official"] - outside["ours"], "dB"),
    }


def local_blend_rows(study: dict) -> list[dict]:
    return [{"run": mode, "edit made": str(study["edit_made"][mode]),
             "PSNR outside the edit": str(study["outside_psnr"][mode]),
             "gain over no blend": str(study["gain"][mode]) if mode in study["gain"] else "",
             "mask area (share of the image)": str(study["area"][mode]) if mode in study["area"] else ""}
            for mode in BLEND_MODES]


def refine_study(pipe, source_prompt: str, refined_prompt: str, seeds: Sequence[int], num_steps: int = 20,
                 guidance_scale: float | None = None) -> dict:
    """P2P's refine (edit="refine": aligned tokens take the source's maps, added words keep their own) from
    `source_prompt`, which leaves an attribute open (e.g. no colour: the model picks one), to `refined_prompt`,
    which names it, for each seed.

    A draw is *eligible* when its source does not already show everything the refined prompt names (the analyzer,
    `score_edit(source, source, refined_prompt)["target_matched"] < 1`): only there can refine add something.
    Returns dict(records [per seed: edit_record plus source_matched, eligible], eligible_seeds, eligible Rate
    (of all seeds), adds Rate (refined image matches the refined prompt, among the eligible draws; None when no
    draw is eligible), iou Mean and layout_kept Rate (the object against the source's, eligible draws))."""
    from ..editing import run_edit
    from ..shapes.scoring import score_edit

    spec = PromptEdit.from_dict({"source_prompt": source_prompt, "target_prompts": [refined_prompt],
                                 "edit": "refine"})
    records = []
    for seed in seeds:
        result = run_edit(pipe, spec, seed=int(seed), num_steps=num_steps, guidance_scale=guidance_scale,
                          progress=False)
        source_matched = score_edit(result.source_image, result.source_image, refined_prompt)["target_matched"]
        records.append({**edit_record(result), "seed": int(seed), "source_matched": source_matched,
                        "eligible": bool(source_matched < 1.0)})
    eligible = [r for r in records if r["eligible"]]
    return {
        "source_prompt": source_prompt, "refined_prompt": refined_prompt, "seeds": [int(s) for s in seeds],
        "num_steps": num_steps, "records": records, "eligible_seeds": [r["seed"] for r in eligible],
        "eligible": rate([r["eligible"] for r in records]),
        "adds": rate([r["target_matched"] == 1.0 for r in eligible]) if eligible else None,
        "iou": mean([r["iou"] for r in eligible]) if eligible else None,
        "layout_kept": rate([r["layout_kept"] == 1.0 for r in eligible]) if eligible else None,
    }


def refine_rows(study: dict) -> list[dict]:
    adds, iou, kept = (str(study[k]) if study[k] is not None else "no eligible draw"
                       for k in ("adds", "iou", "layout_kept"))
    return [{"source lacks what refine adds (eligible)": str(study["eligible"]), "refined image shows it": adds,
             "object IoU": iou, "layout kept": kept}]


REWEIGHT_STEADY = 0.05  # "hardly moves": the colour share's range over the scales up to 2 stays below this


def reweight_study(pipe, prompt: str, word: str, scales: Sequence[float], seeds: Sequence[int],
                   num_steps: int = 20, guidance_scale: float | None = None, colour: str | None = None) -> dict:
    """`prompt` generated with `word`'s cross-attention column scaled by each factor (P2P's AttentionReweight via
    run_edit), for each seed; the measure is the pixel share of `colour` (default: `word`, a colour word;
    `quality.shapes_features`' palette share). Scale 1 is the source row itself (the unscaled prompt from the same
    x_T), so it is read from the first run instead of being run.

    Returns dict(scales, share {scale: Mean over seeds}, spread Mean (per seed, the share's range over the scales
    up to 2), steady Rate (that range below REWEIGHT_STEADY: "hardly moves"), rises Rate (the share at the largest
    scale up to 2 above the share at the smallest), beyond Rate or None (a scale above 2 moves the share by more
    than REWEIGHT_STEADY from the unscaled image's), records [per seed: {scale: share}])."""
    from ..editing import run_edit
    from ..quality import FEATURE_NAMES, shapes_features

    colour = colour or word
    feature = FEATURE_NAMES.index(f"share_{colour}")
    scales = [float(s) for s in scales]
    moderate = [s for s in scales if s <= 2.0]
    if len(moderate) < 2:
        raise ValueError(f"reweight_study needs at least two scales up to 2 (e.g. 0 and 2), got {scales}")
    records = []
    for seed in seeds:
        shares, unscaled = {}, None
        for scale in [s for s in scales if s != 1.0] or scales:
            edit = PromptEdit.from_dict({"source_prompt": prompt, "target_prompts": [prompt], "edit": "reweight",
                                         "reweight": {word: scale}})
            result = run_edit(pipe, edit, seed=int(seed), num_steps=num_steps, guidance_scale=guidance_scale,
                              progress=False)
            shares[scale] = float(shapes_features(np.asarray(result.edited_images[0]))[feature])
            unscaled = float(shapes_features(np.asarray(result.source_image))[feature])
        shares[1.0] = unscaled
        records.append({scale: shares[scale] for scale in scales} | {"unscaled": unscaled})
    spread = np.array([max(r[s] for s in moderate) - min(r[s] for s in moderate) for r in records])
    large = [s for s in scales if s > 2.0]
    return {
        "prompt": prompt, "word": word, "colour": colour, "scales": scales, "seeds": [int(s) for s in seeds],
        "num_steps": num_steps, "records": records,
        "share": {s: mean([r[s] for r in records]) for s in scales},
        "rises": rate([r[max(moderate)] > r[min(moderate)] for r in records]),
        "steady": rate(spread < REWEIGHT_STEADY), "spread": mean(spread),
        "beyond": rate([abs(r[max(large)] - r["unscaled"]) > REWEIGHT_STEADY for r in records]) if large else None,
    }


def reweight_rows(study: dict) -> list[dict]:
    return [{"scale": f"{scale:g}", f"{study['colour']} share (mean over seeds)": str(share)}
            for scale, share in study["share"].items()]


def real_edit_study(pipe, objects: Sequence[dict], background: str | None, swaps: Sequence[tuple[str, str]],
                    scene_seeds: Sequence[int], inversion_method: str = "direct", num_steps: int = 20,
                    guidance_scale: float | None = None, inversion_options: dict | None = None) -> dict:
    """Word swaps of rendered scenes ("real" images: random_scene(scene_seed, objects=objects), its caption the
    source prompt), each inverted once with `inversion_method` (at models.defaults.inversion_guidance_for_edit's
    guidance; `inversion_options` such as null-text's inner_steps go to inversion.invert) and edited from the
    inversion without and with P2P, for each scene.

    Returns dict(swaps {"old -> new": dict(records {"no P2P" | "P2P": [per scene]}, edit_made / layout_kept
    {mode: Rate}, iou {mode: Mean}, iou_gain Mean (P2P minus no P2P, paired), p2p_helps Rate of a gain over
    0.1)}, scene_seeds, prompts)."""
    from ..editing import run_edit
    from ..inversion import invert
    from ..latents import image_size
    from ..models.defaults import inversion_guidance_for_edit, resolve_guidance
    from .scenes import scene_draws

    guidance = resolve_guidance(pipe, guidance_scale)
    draws = scene_draws(image_size(pipe), scene_seeds, background=background, objects=objects)
    titles = [f"{old} -> {new}" for old, new in swaps]
    records = {title: {"no P2P": [], "P2P": []} for title in titles}
    for draw in draws:
        inversion = invert(pipe, draw.image, draw.prompt, method=inversion_method, num_steps=num_steps,
                           guidance_scale=inversion_guidance_for_edit(inversion_method, guidance), progress=False,
                           **(inversion_options or {}))
        for title, (old, new) in zip(titles, swaps):
            target = draw.prompt.replace(old, new)
            if target == draw.prompt:
                raise ValueError(f"{old!r} is not a word of the scene's caption {draw.prompt!r}")
            spec = {"source_prompt": draw.prompt, "target_prompts": [target], "edit": "replace"}
            for mode, settings in (("no P2P", {**spec, "attention_control": False}), ("P2P", spec)):
                result = run_edit(pipe, PromptEdit.from_dict(settings), inversion=inversion, guidance_scale=guidance,
                                  progress=False)
                records[title][mode].append(edit_record(result))
    studies = {}
    for title, by_mode in records.items():
        gain = np.array([p["iou"] - n["iou"] for p, n in zip(by_mode["P2P"], by_mode["no P2P"])])
        studies[title] = {
            "records": by_mode,
            "edit_made": {m: rate([r["target_matched"] == 1.0 for r in rs]) for m, rs in by_mode.items()},
            "layout_kept": {m: rate([r["layout_kept"] == 1.0 for r in rs]) for m, rs in by_mode.items()},
            "iou": {m: mean([r["iou"] for r in rs]) for m, rs in by_mode.items()},
            "iou_gain": mean(gain), "p2p_helps": rate(gain > 0.1),
        }
    return {"swaps": studies, "scene_seeds": [d.scene_seed for d in draws], "prompts": [d.prompt for d in draws],
            "inversion_method": inversion_method, "num_steps": num_steps}


def real_edit_rows(study: dict) -> list[dict]:
    return [{"edit": title, **row} for title, swap in study["swaps"].items() for row in word_swap_rows(swap)]
