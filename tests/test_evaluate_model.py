"""pipelines/evaluate_model.py: the latent-locality study tells a local encoder from a non-local one."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F



@pytest.fixture(scope="module")
def evaluate(import_script):
    return import_script("pipelines/evaluate_model.py")


class PoolingAutoencoder:
    """A reference 'VAE' whose latent cell i depends only on the 4x4 pixels of cell i (global_mix 0), or also on
    the mean of the whole image (global_mix > 0), as an encoder with global self-attention can."""

    def __init__(self, global_mix: float = 0.0):
        self.global_mix = global_mix

    def encode(self, x):
        z = F.avg_pool2d(x, 4)
        z = z + self.global_mix * x.mean(dim=(2, 3), keepdim=True)
        return SimpleNamespace(latent_dist=SimpleNamespace(mean=z))

    def decode(self, z):
        return SimpleNamespace(sample=F.interpolate(z, scale_factor=4, mode="nearest"))


def _pipe(vae):
    vae.config = SimpleNamespace(block_out_channels=(16, 32, 32))  # factor 4: 64x64 images, 16x16 latents
    return SimpleNamespace(vae=vae, unet=SimpleNamespace(config=SimpleNamespace(sample_size=16)))


def test_latent_locality_is_near_zero_outside_the_object_for_a_local_encoder(evaluate):
    local = evaluate.latent_locality_study(_pipe(PoolingAutoencoder()), count=12, seed=0)
    # (not exactly 0: the renderer's anti-aliased edges reach a few pixels past the object's mask)
    assert local["pairs"] == 12 and local["outside_change"] < 1e-4
    mixed = evaluate.latent_locality_study(_pipe(PoolingAutoencoder(global_mix=1.0)), count=12, seed=0)
    assert mixed["outside_change"] > 0.01
    assert mixed["pasted_psnr_median_db"] < local["pasted_psnr_median_db"]  # pasting breaks the global part
    assert 0.0 <= mixed["pasted_below_25db"] <= 1.0


def _renderer(use_positions: bool):
    """A reference 'model' for the position study: renders a scene that satisfies each caption (its named cells
    when `use_positions`, anywhere otherwise)."""
    import numpy as np

    from diffusion_lab.shapes import parse_caption, random_scene, render

    def generate(pipe, prompts, steps, guidance, seed, batch):
        rng = np.random.default_rng(seed)
        images = []
        for prompt in prompts:
            description = parse_caption(prompt)
            objects = [{k: v for k, v in (("shape", o.shape), ("colour", o.colour), ("size", o.size),
                                          ("position", o.position if use_positions else None)) if v is not None}
                       for o in description.objects]
            images.append(render(random_scene(rng, background=description.background, objects=objects), 64).image)
        return images

    return generate


def test_position_study_tells_a_model_that_follows_positions_from_one_that_ignores_them(evaluate, monkeypatch, tmp_path):
    monkeypatch.setattr(evaluate, "_generate", _renderer(use_positions=True))
    follows = evaluate.position_study(None, count=36, steps=1, guidance=1.0, seed=0, batch=8, out=tmp_path)
    assert follows["one_object"] >= 0.9
    assert follows["two_object_named"]["both_in_named_cells"] >= 0.85
    assert follows["two_object_named"]["pairing"] >= 0.85
    assert follows["two_object_named"]["more_than_two_objects"] == 0.0
    assert (tmp_path / "position_samples.png").exists()
    monkeypatch.setattr(evaluate, "_generate", _renderer(use_positions=False))
    ignores = evaluate.position_study(None, count=36, steps=1, guidance=1.0, seed=0, batch=8, out=tmp_path)
    assert ignores["one_object"] < 0.4  # chance is 1/9
    assert ignores["two_object_named"]["both_in_named_cells"] < 0.3
    assert ignores["two_object_named"]["pairing"] >= 0.85  # positions ignored, attributes still right


def test_position_study_shows_the_images_with_more_than_two_objects(evaluate, monkeypatch, tmp_path):
    """A 'model' that draws every two-object caption with a third object: the study counts them AND saves them."""
    from diffusion_lab.shapes import random_scene, render

    def three_objects(pipe, prompts, steps, guidance, seed, batch):
        rng = np.random.default_rng(seed)
        return [render(random_scene(rng, num_objects=3 if " and " in prompt else 1)).image for prompt in prompts]

    monkeypatch.setattr(evaluate, "_generate", three_objects)
    result = evaluate.position_study(None, count=9, steps=1, guidance=1.0, seed=0, batch=8, out=tmp_path)
    assert result["two_object_unnamed"]["more_than_two_objects"] > 0.5
    assert (tmp_path / "position_two_object_unnamed_more_than_two.png").exists()
    assert (tmp_path / "position_two_object_named_more_than_two.png").exists()
