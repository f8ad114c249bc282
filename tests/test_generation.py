"""text_to_image through our sampler: shapes, determinism, and agreement with diffusers' own pipeline."""

import numpy as np
import torch

from diffusion_lab.generation import initial_noise, text_to_image
from diffusion_lab.models.shapes_tiny import build_untrained_pipeline


def test_text_to_image_shapes_and_determinism():
    pipe = build_untrained_pipeline(seed=0)
    a = text_to_image(pipe, ["a red circle", "a blue star"], num_steps=4, guidance_scale=3.0, seed=5, progress=False)
    b = text_to_image(pipe, ["a red circle", "a blue star"], num_steps=4, guidance_scale=3.0, seed=5, progress=False)
    assert a.images.shape == (2, 64, 64, 3) and a.images.dtype == np.uint8
    assert np.array_equal(a.images, b.images)
    c = text_to_image(pipe, ["a red circle", "a blue star"], num_steps=4, guidance_scale=3.0, seed=6, progress=False)
    assert not np.array_equal(a.images, c.images)


def test_text_to_image_matches_diffusers_pipeline():
    """Same x_T, same prompts, DDIM eta=0 with guidance: our loop equals StableDiffusionPipeline's latents."""
    pipe = build_untrained_pipeline(seed=1)
    pipe.set_progress_bar_config(disable=True)
    x_T = initial_noise(pipe, 1, seed=3)
    ours = text_to_image(pipe, ["a large red circle"], num_steps=6, guidance_scale=4.0, x_T=x_T, progress=False)
    theirs = pipe(["a large red circle"], num_inference_steps=6, guidance_scale=4.0, latents=x_T.clone(), output_type="latent", negative_prompt=[""])
    assert torch.allclose(ours.latents, theirs.images, atol=1e-4), (ours.latents - theirs.images).abs().max()
