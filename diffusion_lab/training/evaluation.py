"""Evaluation during training: the analyzer's per-attribute accuracy on images of one-object captions."""

from __future__ import annotations

import numpy as np

from ..shapes import analyze, caption, random_scene
from .ema import restore_weights, swap_in_ema
from .settings import TrainingSettings


def one_object_accuracy(images: np.ndarray, scenes) -> dict:
    """Per-attribute accuracy of the analyzer on images generated from one-object captions."""
    correct = {"shape": 0, "colour": 0, "size": 0, "background": 0, "count": 0}
    for image, scene in zip(images, scenes):
        analysis = analyze(image)
        correct["background"] += analysis.background == scene.background
        correct["count"] += len(analysis.objects) == 1
        if analysis.objects:
            found, want = analysis.objects[0], scene.objects[0]
            correct["shape"] += found.shape == want.shape
            correct["colour"] += found.colour == want.colour
            correct["size"] += found.size == want.size
    return {k: round(v / len(scenes), 3) for k, v in correct.items()}


def evaluate_one_object(pipe, ema, modules, settings: TrainingSettings) -> dict:
    saved = swap_in_ema(ema, modules)
    for m in modules.values():
        m.eval()
    try:
        rng = np.random.default_rng(12345)
        scenes = [random_scene(rng, num_objects=1) for _ in range(settings.eval_samples)]
        from ..generation import text_to_image

        images = text_to_image(pipe, [caption(s) for s in scenes], num_steps=25, guidance_scale=5.0, seed=0, progress=False).images
        return one_object_accuracy(images, scenes)
    finally:
        restore_weights(modules, saved)
        for m in modules.values():
            m.train()
