"""What the labs' check cells measure to show that their default examples do what the text claims.

Built on the shapes world's analyzer (diffusion_lab.shapes.analyze), diffusion_lab.metrics and the edit API
(diffusion_lab.editing.run_edit); `labs/measure_defaults.py` uses the same functions to compare candidate defaults.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from diffusion_lab.shapes.scoring import (  # noqa: F401  (the labs and measure_defaults call them from here)
    edit_scores,
    main_object_mask,
    object_iou,
    outside_edit_psnr,
)


def compare_edit(pipe, spec: dict, seed: int = 0, num_steps: int = 50, guidance_scale: float | None = None,
                 baseline: bool = True) -> dict:
    """Run one edit (a PromptEdit dict; "title" is ignored) with Prompt-to-Prompt and, with `baseline`, without
    attention control, from the same x_T. Returns per run: target_matched (analyzer, from
    shapes.scoring.score_edit), iou (main object, edit vs source), outside_psnr (dB), and the images."""
    from diffusion_lab.editing import PromptEdit, run_edit

    spec = {k: v for k, v in spec.items() if k != "title"}
    runs = {"P2P": spec}
    if baseline:
        runs = {"no P2P": {**spec, "attention_control": False}, **runs}
    result = {}
    for label, settings in runs.items():
        edit = run_edit(pipe, PromptEdit.from_dict(settings), seed=seed, num_steps=num_steps,
                        guidance_scale=guidance_scale, progress=False)
        source, edited = edit.source_image, edit.edited_images[0]
        result[label] = {**edit_scores(source, edited, edit.prompts[1]), "source": source, "edited": edited}
    return result


def colour_share(image, colour: str) -> float:
    """Fraction of the pixels nearest to a palette colour (quality.shapes_features' palette share)."""
    from diffusion_lab.quality import FEATURE_NAMES, shapes_features

    return float(shapes_features(np.asarray(image))[FEATURE_NAMES.index(f"share_{colour}")])


def reweight_sweep(pipe, prompt: str, word: str, scales: Sequence[float], seed: int = 0, num_steps: int = 50,
                   guidance_scale: float | None = None, colour: str | None = None) -> tuple[list[np.ndarray], list[dict]]:
    """The prompt generated with `word`'s cross-attention scaled by each factor (P2P reweighting, via run_edit).
    Returns (images, rows: scale, main-object area (fraction of the image) and, given `colour`, its pixel share)."""
    from diffusion_lab.editing import PromptEdit, run_edit

    images, rows = [], []
    for scale in scales:
        spec = {"source_prompt": prompt, "target_prompts": [prompt], "edit": "reweight", "reweight": {word: float(scale)}}
        image = run_edit(pipe, PromptEdit.from_dict(spec), seed=seed, num_steps=num_steps, guidance_scale=guidance_scale,
                         progress=False).edited_images[0]
        mask = main_object_mask(image)
        row = {"scale": float(scale), "object_area": 0.0 if mask is None else float(mask.mean())}
        if colour is not None:
            row[f"{colour}_share"] = colour_share(image, colour)
        images.append(image)
        rows.append(row)
    return images, rows


def table1_reference_features(count: int, seed: int = 0) -> np.ndarray:
    """Features (quality.shapes_features) of the renders widgets.posterior_panel.table1 compares with: `count` random
    one-object scenes drawn from np.random.default_rng(seed + 10_000), as table1 draws them."""
    from diffusion_lab.quality import feature_matrix
    from diffusion_lab.shapes import random_scene, render

    rng = np.random.default_rng(seed + 10_000)
    return feature_matrix([render(random_scene(rng, num_objects=1)).image for _ in range(count)])


def table1_error_bars(table: dict, reference: np.ndarray, draws: int = 50, seed: int = 0) -> dict:
    """Bootstrap of the Frechet distance of every cell of a widgets.posterior_panel.table1 result: the samples of a cell
    are resampled with replacement `draws` times. Returns {setting: [per S: (mean, standard deviation)]}."""
    from diffusion_lab.quality import feature_matrix, frechet_distance

    rng = np.random.default_rng(seed)
    result = {}
    for label in table["fd"]:
        per_step = []
        for num_steps in table["steps"]:
            features = feature_matrix(table["samples"][(num_steps, label)])
            values = [frechet_distance(features[rng.integers(0, len(features), len(features))], reference)
                      for _ in range(draws)]
            per_step.append((float(np.mean(values)), float(np.std(values))))
        result[label] = per_step
    return result

