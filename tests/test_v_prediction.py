"""v-prediction (SD 2.x): sampling, inversion and Prompt-to-Prompt on a tiny random v-prediction pipeline, checked
against diffusers' own DDIMScheduler step and pipeline, and inversion round trips on the exact denoiser."""

import pytest
import torch
from diffusers import DDIMScheduler

from diffusion_lab.closed_form import ClosedFormDenoiser
from diffusion_lab.conditioning import denoising_unet
from diffusion_lab.denoisers import TextConditionedDenoiser
from diffusion_lab.editing import edit_generated, edit_real
from diffusion_lab.generation import initial_noise, text_to_image
from diffusion_lab.inversion import (
    ConditionalModel,
    FixedPointSettings,
    invert,
    invert_with_model,
    reconstruct,
    reconstruct_with_model,
)
from diffusion_lab.latents import encode_images
from diffusion_lab.models.tiny_random import build_tiny_random_pipeline
from diffusion_lab.schedules import NoiseSchedule
from diffusion_lab.shapes import random_scene, render
from diffusion_lab.text import encode_prompts

ATOL = 1e-4  # the controlled (explicit softmax) and fused attention paths differ by float rounding


@pytest.fixture(scope="module")
def pipe():
    return build_tiny_random_pipeline(seed=0, prediction_type="v_prediction")


@pytest.fixture(scope="module")
def image():
    return render(random_scene(5, num_objects=1), size=32).image


def test_pipeline_is_v_prediction(pipe):
    assert pipe.scheduler.config.prediction_type == "v_prediction"
    assert NoiseSchedule.from_scheduler_config(pipe.scheduler).prediction_type == "v_prediction"


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_our_step_equals_diffusers_ddim_step_on_the_unet(pipe, eta):
    """Each of our sampling steps on the v-prediction UNet's output equals DDIMScheduler.step (same generator)."""
    schedule = NoiseSchedule.from_scheduler_config(pipe.scheduler)
    scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    scheduler.set_timesteps(5)
    timesteps = schedule.timesteps(5)
    assert torch.equal(torch.as_tensor(scheduler.timesteps), timesteps)
    denoiser = TextConditionedDenoiser(pipe.unet, encode_prompts(pipe, ["a red circle"]))
    from diffusion_lab.sampling import sample

    x_T = initial_noise(pipe, 1, seed=3)
    expected, generator = x_T.clone(), torch.Generator().manual_seed(7)
    with torch.no_grad():
        for i, t in enumerate(scheduler.timesteps):
            expected = scheduler.step(denoiser(expected, t, i), t, expected, eta=eta, generator=generator).prev_sample
    ours = sample(denoiser, x_T, schedule, timesteps, eta=eta, generator=torch.Generator().manual_seed(7),
                  progress=False).sample
    assert torch.allclose(ours, expected, rtol=1e-5, atol=1e-5)


def test_text_to_image_equals_the_diffusers_pipeline(pipe):
    """Guided DDIM sampling end to end: our latents equal StableDiffusionPipeline's own (v-prediction) loop."""
    x_T = initial_noise(pipe, 1, seed=2)
    ours = text_to_image(pipe, ["a red circle"], num_steps=4, guidance_scale=5.0, x_T=x_T, progress=False).latents
    reference = pipe("a red circle", num_inference_steps=4, guidance_scale=5.0, latents=x_T.clone(), negative_prompt="",
                     output_type="latent").images
    assert torch.allclose(ours, reference, rtol=1e-4, atol=1e-4)


def test_prompt_to_prompt_on_v_prediction(pipe):
    """The source row is plain generation; an identical target reproduces the source; a changed word changes it."""
    same = edit_generated(pipe, "a red circle", ["a red circle"], num_steps=3, seed=1, progress=False)
    assert torch.equal(same.latents[0], same.latents[1])
    alone = text_to_image(pipe, ["a red circle"], num_steps=3, guidance_scale=7.5, seed=1, progress=False)
    torch.testing.assert_close(same.latents[:1], alone.latents, atol=ATOL, rtol=0)
    swap = edit_generated(pipe, "a red circle", ["a blue circle"], num_steps=3, seed=1, progress=False)
    torch.testing.assert_close(swap.latents[:1], alone.latents, atol=ATOL, rtol=0)
    assert (swap.latents[1] - swap.latents[0]).abs().max() > 1e-3


def test_inversion_round_trip_at_guidance_one_on_the_exact_v_denoiser():
    """The inversion math in the v parameterization: DDIM inversion converges with S, fixed-point is exact."""
    schedule = NoiseSchedule.create(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
                                    set_alpha_to_one=False, steps_offset=1, prediction_type="v_prediction")
    generator = torch.Generator().manual_seed(0)
    data = torch.randn(8, 1, 4, 4, generator=generator, dtype=torch.float64)
    denoiser = ClosedFormDenoiser(data, schedule, data_std=0.5)
    model = ConditionalModel(lambda x, t, condition: denoiser(x, t, 0), schedule)
    x_0 = data[:2] + 0.3 * torch.randn(2, 1, 4, 4, generator=generator, dtype=torch.float64)
    errors = []
    for num_steps in (10, 50, 500):
        inversion = invert_with_model(model, x_0, schedule.timesteps(num_steps), None, None, "ddim", 1.0,
                                      progress=False)
        errors.append(float((reconstruct_with_model(model, inversion, progress=False).sample - x_0).abs().max()))
    assert errors[0] > errors[1] > errors[2] and errors[2] < 1e-2
    exact = invert_with_model(model, x_0, schedule.timesteps(20), None, None, "fixed_point", 1.0,
                              fixed_point=FixedPointSettings(iterations=8, tolerance=1e-13), progress=False)
    assert float((reconstruct_with_model(model, exact, progress=False).sample - x_0).abs().max()) < 1e-8


def test_inversion_round_trip_at_guidance_one_on_the_pipeline(pipe, image):
    """On the v-prediction UNet: DDIM inversion at w = 1 gets closer with more steps, fixed-point closer still,
    and the Inversion records the prediction type. (A random UNet is far rougher than a trained one, so plain DDIM
    inversion is not close here; the exact-denoiser test above checks the limit.)"""
    z_0 = encode_images(pipe, image)
    error = lambda inversion: float((reconstruct(pipe, inversion, output_type="latents", progress=False)  # noqa: E731
                                     - z_0).abs().max())
    coarse = invert(pipe, image, "a red circle", "ddim", num_steps=10, progress=False)
    fine = invert(pipe, image, "a red circle", "ddim", num_steps=40, progress=False)
    fixed = invert(pipe, image, "a red circle", "fixed_point", num_steps=40, guidance_scale=1.0,
                   fixed_point_iterations=4, progress=False)
    assert fine.settings["prediction_type"] == "v_prediction"
    assert error(coarse) > error(fine) > error(fixed)


def test_null_text_edit_on_v_prediction_keeps_the_source_row(pipe, image):
    inversion = invert(pipe, image, "a red circle", "null_text", num_steps=3, inner_steps=2, progress=False)
    source = reconstruct(pipe, inversion, output_type="latents", progress=False)
    result = edit_real(pipe, inversion, target_prompts=["a blue circle"], progress=False)
    torch.testing.assert_close(result.latents[:1], source, atol=ATOL, rtol=0)
