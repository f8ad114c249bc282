"""The sample a study draws: rendered scenes of the shapes world (the labs' "real images"), one noise seed each.

A study's scenes are `random_scene(first_scene + i, ...)` for i < n, so the same arguments give the same sample, and a
lab's example scene (its SCENE_SEED / SEED parameter) is either inside the sample (reported as "one of the draws") or
an extra draw beside it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

STUDY_SIZE = 64     # N of `pipelines/claims.py` (what README quotes)
LAB_STUDY_SIZE = 16  # N of a lab in full mode (the "at least 16")
QUICK_STUDY_SIZE = 6  # N of a lab under DIFFUSION_LAB_QUICK=1 (tests, CI)


@dataclass(frozen=True)
class SceneDraw:
    """One draw of a study: the scene seed, the Scene, its render (PIL, the pipeline's size) and caption."""

    scene_seed: int
    scene: object
    image: object
    prompt: str


def scene_draws(image_size: int, scene_seeds: Sequence[int], num_objects: int | None = 1,
                background: str | None = None, objects: Sequence[dict] | None = None) -> list[SceneDraw]:
    """The scenes random_scene(seed, ...) for each seed, rendered at `image_size` and captioned."""
    from ..shapes import caption, random_scene, render_image

    draws = []
    for seed in scene_seeds:
        scene = random_scene(int(seed), num_objects=None if objects else num_objects, background=background,
                             objects=objects)
        draws.append(SceneDraw(int(seed), scene, render_image(scene, image_size), caption(scene)))
    return draws
