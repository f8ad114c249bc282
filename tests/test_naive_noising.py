"""Naive noising (SDEdit / img2img): the forward process to a strength, then sampling with a new prompt."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler, StableDiffusionImg2ImgPipeline

from diffusion_lab.naive_noising import (
    naive_noising_edit,
    noise_image_to_strength,
    noise_latents_to_strength,
    strength_timesteps,
)
from diffusion_lab.schedules import NoiseSchedule
from diffusion_lab.shapes import random_scene, render

SD = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, set_alpha_to_one=False, steps_offset=1)



@pytest.fixture(scope="module")
def pipe():
    from diffusion_lab.models.shapes_tiny import build_untrained_pipeline

    pipeline = build_untrained_pipeline(seed=0)
    for module in (pipeline.unet, pipeline.vae, pipeline.text_encoder):
        module.eval().requires_grad_(False)
    return pipeline


@pytest.mark.parametrize("num_steps", [10, 50])
@pytest.mark.parametrize("strength", [0.0, 0.05, 0.3, 0.75, 1.0])
def test_strength_timesteps_equal_diffusers_img2img(num_steps, strength):
    scheduler = DDIMScheduler(**SD, clip_sample=False)
    scheduler.set_timesteps(num_steps)
    expected, _ = StableDiffusionImg2ImgPipeline.get_timesteps(SimpleNamespace(scheduler=scheduler), num_steps, strength, "cpu")
    ours = strength_timesteps(NoiseSchedule.from_scheduler_config(scheduler), num_steps, strength)
    assert ours.tolist() == expected.tolist()


def test_noising_is_the_forward_marginal():
    schedule = NoiseSchedule.create(**SD)
    z_0 = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    noise = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    noised = noise_latents_to_strength(z_0, schedule, 0.6, num_steps=10, noise=noise)
    alpha_bar = schedule.alpha_bar(noised.t)
    assert noised.t == int(noised.timesteps[0]) and len(noised.timesteps) == 6
    assert torch.allclose(noised.latents, alpha_bar.sqrt().float() * z_0 + (1 - alpha_bar).sqrt().float() * noise)
    unchanged = noise_latents_to_strength(z_0, schedule, 0.0, num_steps=10)
    assert unchanged.t is None and len(unchanged.timesteps) == 0 and torch.equal(unchanged.latents, z_0)
    with pytest.raises(ValueError, match=r"strength must be in \[0, 1\]"):
        noise_latents_to_strength(z_0, schedule, 1.5)


def test_edit_is_reproducible_and_strength_zero_is_the_vae_round_trip(pipe):
    image = render(random_scene(0, num_objects=1), size=64).image
    edit = lambda strength, seed: naive_noising_edit(  # noqa: E731
        pipe, image, "a red circle", strength=strength, num_steps=4, guidance_scale=3.0,
        generator=torch.Generator().manual_seed(seed), output_type="uint8", progress=False,
    )
    first = edit(0.75, 0)
    assert first.shape == (1, 64, 64, 3) and first.dtype == np.uint8
    assert np.array_equal(first, edit(0.75, 0)) and not np.array_equal(first, edit(0.75, 1))
    from diffusion_lab.latents import vae_round_trip

    assert np.array_equal(edit(0.0, 0), vae_round_trip(pipe, image))
    noised = noise_image_to_strength(pipe, image, 0.5, num_steps=4, generator=torch.Generator().manual_seed(0))
    assert noised.preview[0].size == (64, 64) and noised.latents.shape == (1, 4, 16, 16)
