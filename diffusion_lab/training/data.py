"""The training data: random scenes, their renders as the VAE's input, captions as training sees them, token ids."""

from __future__ import annotations

import numpy as np
import torch

from ..shapes import caption, random_scene, render


def training_scenes(num_scenes: int, seed: int, object_weights=(0.5, 0.4, 0.1)) -> list:
    """`num_scenes` random scenes with 1, 2 or 3 objects in the proportions `object_weights`, from `seed`."""
    rng = np.random.default_rng(seed)
    probabilities = np.asarray(object_weights) / sum(object_weights)
    return [random_scene(rng, num_objects=int(rng.choice(len(object_weights), p=probabilities)) + 1) for _ in range(num_scenes)]


def make_dataset(num_scenes: int, seed: int, size: int = 64, object_weights=(0.5, 0.4, 0.1), progress: bool = False):
    """Render `num_scenes` random scenes: returns (images uint8 (N, H, W, 3), scenes)."""
    from ..progress import progress_bar

    scenes = training_scenes(num_scenes, seed, object_weights)
    images = np.empty((num_scenes, size, size, 3), np.uint8)
    for i in progress_bar(range(num_scenes), progress, desc="render"):
        images[i] = render(scenes[i], size).image
    return images, scenes


def images_to_tensor(images: np.ndarray) -> torch.Tensor:
    """uint8 (N, H, W, 3) -> float (N, 3, H, W) in [-1, 1], the VAE's input range."""
    return torch.from_numpy(images).permute(0, 3, 1, 2).float().div(127.5).sub(1.0)


def training_captions(
    scenes, rng: np.random.Generator, drop_attribute: float = 0.1, drop_caption: float = 0.1, position_rate: float = 0.0
) -> list[str]:
    """Captions as training sees them: attributes left out at random, some captions empty (for CFG), and
    with probability `position_rate` a caption that names every object's grid cell ("at the top left").
    Scenes of three objects never name positions: their caption would pass the text encoder's 32 tokens.

    With position_rate 0 the random draws are those of runs made before positions were trained."""
    out = []
    for scene in scenes:
        if rng.random() < drop_caption:
            out.append("")
        else:
            with_position = position_rate > 0 and rng.random() < position_rate and len(scene.objects) <= 2
            out.append(caption(scene, include_position=with_position, drop_probability=drop_attribute, rng=rng))
    return out


def tokenize(tokenizer, prompts: list[str]) -> torch.Tensor:
    return tokenizer(prompts, padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt").input_ids
