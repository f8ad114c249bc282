"""Scoring an edit in the shapes world with the analyzer: the one scorer of widgets, batch and benchmarks.

Every edited image is read back with `analyze` (image -> scene) and compared with what the edit asked for:

    score_edit(source, edited, "a large blue circle on a gray background")
        -> {"target_matched", "layout_kept", "psnr_to_source"}      (labs, batch rows, course checks)
    score_scene_edit(images, source_scene, target_scene)
        -> [{"edited", "layout_kept"}, ...]                          (naive-noising lab: the scenes are known)
    score_against_truth(kind, new_value, edited, source_image, source_mask, truth)
        -> {"success", "iou", "iou_ceiling", "truth_iou", "kept_psnr", "gt_psnr", "gt_ssim"}   (bench_p2p)
    edit_scores(source, edited, target_prompt)
        -> {"target_matched", "iou", "outside_psnr"}                (lab 4's tables, course.measures)

The building blocks are shared: the object an edit is judged on (`main_object`: the largest one, or
`object_over`: the one that overlaps a mask most), whether it shows the wanted attributes
(`attribute_checks`), and whether it stayed in place (`stayed_in_place`: centre within LAYOUT_TOLERANCE of
the image side).
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np

LAYOUT_TOLERANCE = 0.12  # "layout kept": the object's centre moved less than this fraction of the image side


def main_object(analysis):
    """The largest object the analyzer found (None when it found none)."""
    return max(analysis.objects, key=lambda o: o.mask.sum()) if analysis.objects else None


def object_over(analysis, mask: np.ndarray):
    """The found object that overlaps the boolean (H, W) `mask` most (None when the analyzer found none)."""
    if not analysis.objects:
        return None
    return max(analysis.objects, key=lambda o: np.logical_and(o.mask, mask).sum())


def attribute_checks(found, background: str | None, want, want_background: str | None) -> list[bool]:
    """One bool per attribute the edit asks for: the found object's shape / colour / size against `want`'s (an
    ObjectDescription or ShapeObject; attributes that are None are not asked for), and the analysed
    `background` against `want_background` (when not None)."""
    checks = [found is not None and getattr(found, name) == getattr(want, name)
              for name in ("shape", "colour", "size") if getattr(want, name) is not None]
    if want_background is not None:
        checks.append(background == want_background)
    return checks


def stayed_in_place(found, x: float, y: float, tolerance: float = LAYOUT_TOLERANCE) -> bool:
    """Whether the found object's centre lies within `tolerance` (fraction of the side) of (x, y)."""
    return found is not None and float(np.hypot(found.x - x, found.y - y)) < tolerance


def score_edit(source_image, edited_image, target_prompt: str) -> dict:
    """Analyzer scores of one edit: does the edited image show what the target prompt names (shape, colour, size,
    background of its first object; the share of those that match: target_matched, NaN for a prompt that is not a
    shapes caption), was the layout kept (the main object within LAYOUT_TOLERANCE of the source's), and the PSNR
    to the source image (dB)."""
    from ..metrics import psnr
    from .analyzer import analyze
    from .captions import parse_caption

    try:
        description = parse_caption(target_prompt)
    except ValueError:  # not a shapes-world caption (e.g. a Stable Diffusion prompt): nothing to check
        description = None
    source, edited = analyze(np.asarray(source_image)), analyze(np.asarray(edited_image))
    found, before = main_object(edited), main_object(source)
    checks = []
    if description is not None:
        checks = attribute_checks(found, edited.background, description.objects[0], description.background)
    kept = before is not None and stayed_in_place(found, before.x, before.y)
    return {"target_matched": float(np.mean(checks)) if checks else float("nan"), "layout_kept": float(kept),
            "psnr_to_source": float(psnr(np.array(edited_image), np.array(source_image)))}


def score_scene_edit(images: Sequence, source_scene, target_scene) -> list[dict]:
    """Per image of an edit whose scenes are known: did the edit happen (the main object has every attribute of
    the target scene's first object and the background is the target's) and was the layout kept (the main
    object within LAYOUT_TOLERANCE of the source scene's first object)."""
    from .analyzer import analyze

    want, where = target_scene.objects[0], source_scene.objects[0]
    scores = []
    for image in images:
        analysis = analyze(np.asarray(image))
        found = main_object(analysis)
        edited = all(attribute_checks(found, analysis.background, want, target_scene.background))
        scores.append({"edited": bool(edited), "layout_kept": bool(stayed_in_place(found, where.x, where.y))})
    return scores


def kept_region(kind: str, source_mask: np.ndarray, target_mask: np.ndarray | None) -> np.ndarray:
    """Where an edit of `kind` should change nothing: outside the (dilated) source and target objects, or inside
    the (eroded) object for a background edit."""
    from scipy import ndimage

    if kind == "background":
        return ndimage.binary_erosion(source_mask, iterations=1)
    edited = source_mask if target_mask is None else source_mask | target_mask
    return ~ndimage.binary_dilation(edited, iterations=2)


def score_against_truth(kind: str, new_value: str, edited: np.ndarray, source_image: np.ndarray, source_mask,
                        truth) -> dict:
    """Numbers of one edited image of a one-attribute edit (`kind` "colour", "shape" or "background"; the others
    are scored as colour edits) against the source object and, when known, the true edited image.

    source_mask: (H, W) bool or None; truth: (image, mask) of the ground truth or None. success: the analyzer
    sees `new_value`; iou: the edited object (the one over the source mask) against the source object;
    iou_ceiling: what a perfect edit scores there; truth_iou: against the true edited object; kept_psnr: PSNR to
    the source in `kept_region`; gt_psnr / gt_ssim: against the true edited image."""
    from ..metrics import mask_iou, masked_psnr, psnr, ssim
    from .analyzer import analyze

    analysis = analyze(edited)
    found = None
    if analysis.objects:
        found = object_over(analysis, source_mask) if source_mask is not None else analysis.objects[0]
    if kind == "background":
        success = analysis.background == new_value
    else:
        attribute = "shape" if kind == "shape" else "colour"
        success = found is not None and getattr(found, attribute) == new_value
    record = {"success": float(success), "iou": math.nan, "iou_ceiling": math.nan, "truth_iou": math.nan,
              "kept_psnr": math.nan, "gt_psnr": math.nan, "gt_ssim": math.nan}
    if source_mask is not None:
        record["iou"] = mask_iou(source_mask, found.mask) if found is not None else 0.0
        if truth is not None:
            record["iou_ceiling"] = mask_iou(source_mask, truth[1])
        region = kept_region(kind, source_mask, None if truth is None else truth[1])
        if region.any():
            record["kept_psnr"] = float(masked_psnr(edited, source_image, region))
    if truth is not None:
        if found is None and analysis.objects:
            found = object_over(analysis, truth[1])
        record["truth_iou"] = mask_iou(truth[1], found.mask) if found is not None else 0.0
        record["gt_psnr"] = float(psnr(edited, truth[0]))
        record["gt_ssim"] = float(ssim(edited, truth[0]))
    return record


def main_object_mask(image) -> np.ndarray | None:
    """Boolean (H, W) mask of the largest object the analyzer finds in a uint8 (H, W, 3) image (None: no object)."""
    from .analyzer import analyze

    found = main_object(analyze(np.asarray(image)))
    return None if found is None else found.mask


def object_iou(image, reference) -> float:
    """IoU of the main objects of two images (metrics.mask_iou): 1 = same place and outline; 0 if one has none."""
    from diffusion_lab.metrics import mask_iou

    a, b = main_object_mask(image), main_object_mask(reference)
    return 0.0 if a is None or b is None else mask_iou(a, b)


def outside_edit_psnr(image, reference) -> float:
    """PSNR (dB) outside the main object of both images: what an edit of that object should leave alone
    (metrics.background_psnr; other objects count as outside)."""
    from diffusion_lab.metrics import background_psnr

    masks = [m for m in (main_object_mask(image), main_object_mask(reference)) if m is not None]
    return float(background_psnr(np.asarray(image), np.asarray(reference), np.stack(masks))) if masks else float("nan")


def edit_scores(source, edited, target_prompt: str) -> dict:
    """The numbers lab 4 reports for one edit: target_matched (the analyzer finds what the target prompt says,
    shapes.scoring.score_edit), iou (main object, edit vs source) and outside_psnr (dB outside the main objects)."""
    return {
        "target_matched": score_edit(source, edited, target_prompt)["target_matched"],
        "iou": object_iou(edited, source),
        "outside_psnr": outside_edit_psnr(edited, source),
    }
