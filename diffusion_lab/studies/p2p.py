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
"""

from __future__ import annotations

from dataclasses import dataclass
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


@dataclass
class OfficialBlendEdit(PromptEdit):
    """A PromptEdit whose local blend uses the official Prompt-to-Prompt mask (LocalBlend mask_style="official").
    For the studies only: PromptEdit itself (and so the batch manifest) keeps our mask."""

    def build_controller(self, tokenizer, latent_side: int = 64, *args, **kwargs):
        from ..attention.controllers import LocalBlend

        controller = super().build_controller(tokenizer, latent_side, *args, **kwargs)
        if getattr(controller, "local_blend", None) is not None:
            controller.local_blend = LocalBlend(tokenizer, self.prompts, self._blend_words_per_prompt(tokenizer),
                                                threshold=self.blend_threshold, mask_style="official")
        return controller


BLEND_MODES = ("no blend", "ours", "official")


def local_blend_study(pipe, source_prompt: str, old: str, new: str, blend_words: Sequence[str],
                      seeds: Sequence[int], num_steps: int = 20, guidance_scale: float | None = None) -> dict:
    """`old` -> `new` with P2P for each seed, without local blend and with each mask over `blend_words`. Returns
    dict(records {mode: [per seed, with mask_area for the blends: the union mask's share of the latent]},
    outside_psnr {mode: Mean}, edit_made {mode: Rate}, gain {mask: Mean outside PSNR over no blend, paired},
    area_ratio Mean of ours / official mask area)."""
    from ..editing import run_edit

    target = source_prompt.replace(old, new)
    spec = {"source_prompt": source_prompt, "target_prompts": [target], "edit": "replace"}
    records = {mode: [] for mode in BLEND_MODES}
    for seed in seeds:
        for mode in BLEND_MODES:
            settings = spec if mode == "no blend" else {**spec, "blend_words": list(blend_words)}
            edit = OfficialBlendEdit.from_dict(settings) if mode == "official" else PromptEdit.from_dict(settings)
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
    }


def local_blend_rows(study: dict) -> list[dict]:
    return [{"run": mode, "edit made": str(study["edit_made"][mode]),
             "PSNR outside the edit": str(study["outside_psnr"][mode]),
             "gain over no blend": str(study["gain"][mode]) if mode in study["gain"] else "",
             "mask area (share of the image)": str(study["area"][mode]) if mode in study["area"] else ""}
            for mode in BLEND_MODES]
