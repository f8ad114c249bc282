"""Inversion: exact where theory says so, null-text optimisation works, Inversion round-trips, clear errors."""

import json
import math
import os
import stat
import warnings

import numpy as np
import pytest
import torch
from diffusers import DDIMInverseScheduler

from diffusion_lab.closed_form import ClosedFormDenoiser
from diffusion_lab.images import ImageConversionWarning
from diffusion_lab.inversion import (
    ConditionalModel,
    FixedPointSettings,
    Inversion,
    LatentInversion,
    NullTextSettings,
    anderson_extrapolation,
    ddim_inversion_step,
    invert,
    invert_latents,
    invert_with_model,
    reconstruct,
    reconstruct_with_model,
    rectify_source_branch,
)
from diffusion_lab.posterior import generalized_posterior_step
from diffusion_lab.schedules import NoiseSchedule
from diffusion_lab.shapes import random_scene, render
from diffusion_lab.text import PromptError, encode_prompts

SD = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012, set_alpha_to_one=False, steps_offset=1)



@pytest.fixture(scope="module")
def schedule():
    return NoiseSchedule.create(**SD)


@pytest.fixture(scope="module")
def closed_form(schedule):
    """The exact denoiser of 8 points in a 16-dimensional "latent" space, two classes (labels as conditions)."""
    generator = torch.Generator().manual_seed(0)
    data = torch.randn(8, 1, 4, 4, generator=generator, dtype=torch.float64)
    denoiser = ClosedFormDenoiser(data, schedule, labels=torch.tensor([0, 0, 0, 0, 1, 1, 1, 1]), data_std=0.5)
    x_0 = data[:2] + 0.3 * torch.randn(2, 1, 4, 4, generator=generator, dtype=torch.float64)  # near class 0, not on it
    return ConditionalModel(denoiser.predict, schedule), x_0


@pytest.fixture(scope="module")
def pipe():
    from diffusion_lab.models.shapes_tiny import build_untrained_pipeline

    pipeline = build_untrained_pipeline(seed=0)
    for module in (pipeline.unet, pipeline.vae, pipeline.text_encoder):
        module.eval().requires_grad_(False)
    return pipeline


@pytest.fixture(scope="module")
def image():
    return render(random_scene(1, num_objects=1), size=64).image


def _max_error(a, b):
    return float((a - b).abs().max())


# ------------------------------------------------------------------------------------------- the step and the loop


def test_inversion_step_inverts_the_sampling_step_for_a_fixed_noise(schedule):
    """With the noise prediction held fixed, sampling step and inversion step are exact inverses."""
    generator = torch.Generator().manual_seed(0)
    z_t, epsilon = torch.randn(2, 4, 8, 8, generator=generator, dtype=torch.float64), torch.randn(2, 4, 8, 8, generator=generator, dtype=torch.float64)
    for t, t_prev in [(981, 961), (41, 21), (1, -1)]:
        z_prev = generalized_posterior_step(z_t, epsilon, t, t_prev, schedule).prev_sample
        back = ddim_inversion_step(z_prev, epsilon, schedule.alpha_bar(t_prev), schedule.alpha_bar(t))
        assert _max_error(back, z_t) < 1e-10


def test_ddim_inversion_equals_diffusers_inverse_scheduler(schedule):
    def toy(x, t, step_index):
        return 0.3 * x + math.sin(int(t) / 100.0)

    scheduler = DDIMInverseScheduler(**SD, clip_sample=False)
    scheduler.set_timesteps(20)
    z = torch.randn(2, 4, 8, 8, generator=torch.Generator().manual_seed(0))
    expected = z
    for t in scheduler.timesteps:
        expected = scheduler.step(toy(expected, t, 0), t, expected).prev_sample
    ours = invert_latents(toy, z, schedule, schedule.timesteps(20), progress=False)
    assert ours.latents.shape == (21, 2, 4, 8, 8) and torch.equal(ours.latents[-1], z)
    assert torch.allclose(ours.latents[0], expected, rtol=1e-5, atol=1e-5)


def test_ddim_inversion_of_the_exact_denoiser_converges_with_steps(closed_form, schedule):
    """DDIM inversion is exact in the limit of small steps (first order: error ~ 1 / S)."""
    model, x_0 = closed_form
    errors = []
    for num_steps in (10, 50, 500):
        inversion = invert_with_model(model, x_0, schedule.timesteps(num_steps), 0, None, "ddim", 1.0, progress=False)
        errors.append(_max_error(reconstruct_with_model(model, inversion, progress=False).sample, x_0))
    assert errors[0] > errors[1] > errors[2]
    assert errors[2] < 1e-2 and errors[2] < errors[1] / 5


def test_fixed_point_inversion_is_exact_at_any_guidance(closed_form, schedule):
    model, x_0 = closed_form
    timesteps = schedule.timesteps(50)
    settings = FixedPointSettings(iterations=8, tolerance=1e-13)
    for guidance in (1.0, 3.0):
        ddim = invert_with_model(model, x_0, timesteps, 0, None, "ddim", guidance, progress=False)
        exact = invert_with_model(model, x_0, timesteps, 0, None, "fixed_point", guidance, fixed_point=settings, progress=False)
        ddim_error = _max_error(reconstruct_with_model(model, ddim, progress=False).sample, x_0)
        result = reconstruct_with_model(model, exact, progress=False, return_trajectory=True)
        assert _max_error(result.sample, x_0) < 1e-8 < ddim_error
        # sampling retraces the inverted trajectory step by step
        assert _max_error(torch.stack(result.trajectory), exact.latents) < 1e-8
    residuals = exact.diagnostics["fixed_point_residuals"]
    assert residuals.shape == (50, 8) and torch.nan_to_num(residuals, nan=0.0).min(dim=1).values.max() < 1e-9


def test_direct_inversion_rectifies_the_source_onto_the_pivot_at_any_guidance(closed_form, schedule):
    """PnP Inversion: the w = 1 pivot is kept; guided sampling is put back on it after every step, so the source
    reconstructs exactly at w = 3 where DDIM inversion at w = 3 does not; a different condition is not rectified."""
    model, x_0 = closed_form
    timesteps = schedule.timesteps(20)
    pivot = invert_with_model(model, x_0, timesteps, 0, None, "ddim", 1.0, progress=False)
    direct = invert_with_model(model, x_0, timesteps, 0, None, "direct", 3.0, progress=False)
    assert torch.equal(direct.latents, pivot.latents) and direct.guidance_scale == 3.0
    result = reconstruct_with_model(model, direct, progress=False, return_trajectory=True)
    assert torch.equal(torch.stack(result.trajectory), direct.latents)  # on the pivot at every step
    guided_ddim = invert_with_model(model, x_0, timesteps, 0, None, "ddim", 3.0, progress=False)
    assert _max_error(reconstruct_with_model(model, guided_ddim, progress=False).sample, x_0) > 1e-3
    other = reconstruct_with_model(model, direct, condition=1, progress=False).sample
    free = reconstruct_with_model(model, LatentInversion(pivot.latents, timesteps, "ddim", 3.0, 1, None),
                                  progress=False).sample
    assert torch.equal(other, free)  # an edit samples freely from z_T


def test_rectify_source_branch_replaces_only_the_source_rows():
    pivot = torch.randn(4, 1, 2, 3, 3)  # (S + 1, B, C, h, w)
    batch = torch.randn(3, 2, 3, 3)  # [source, target 1, target 2]
    out = rectify_source_branch(pivot, batch, step_index=1, source_rows=1)
    assert torch.equal(out[0], pivot[2, 0]) and torch.equal(out[1:], batch[1:])
    # PnP Inversion's form: the source plus its distance to the pivot
    assert torch.allclose(out[0], batch[0] + (pivot[2, 0] - batch[0]))
    with pytest.raises(ValueError, match="rows per step"):
        rectify_source_branch(torch.randn(4, 2, 2, 3, 3), batch, 0, source_rows=1)


def test_anderson_extrapolation_solves_a_linear_fixed_point_in_few_steps():
    """For an affine map F(x) = A x + b, Anderson with memory = dim finds the fixed point exactly."""
    generator = torch.Generator().manual_seed(0)
    matrix = 0.5 * torch.randn(3, 3, generator=generator, dtype=torch.float64)
    offset = torch.randn(1, 3, generator=generator, dtype=torch.float64)
    apply = lambda x: x @ matrix.T + offset  # noqa: E731
    solution = torch.linalg.solve(torch.eye(3, dtype=torch.float64) - matrix, offset.T).T
    iterates, images, x = [], [], torch.zeros(1, 3, dtype=torch.float64)
    for _ in range(4):
        iterates.append(x)
        images.append(apply(x))
        x = anderson_extrapolation(iterates, images, memory=3)
    assert _max_error(x, solution) < 1e-8
    assert torch.equal(anderson_extrapolation(iterates[:1], images[:1], memory=3), images[0])


# ----------------------------------------------------------------------------------------- null-text and negative


def _shifted_model(schedule):
    """A differentiable toy: the exact denoiser plus 0.5 * embedding, so the 'text embedding' moves eps."""
    generator = torch.Generator().manual_seed(0)
    data = torch.randn(8, 1, 4, 4, generator=generator)
    denoiser = ClosedFormDenoiser(data, schedule, data_std=0.5)

    def output(x, t, embedding):  # embedding (1 | B, 1, 16)
        return denoiser.predict(x, t) + 0.5 * embedding.expand(x.shape[0], -1, -1).reshape(x.shape)

    x_0 = data[:2] + 0.3 * torch.randn(2, 1, 4, 4, generator=generator)
    return ConditionalModel(output, schedule), x_0, 0.2 * torch.randn(2, 1, 16, generator=generator)


def test_null_text_loss_decreases_and_fixes_guided_reconstruction(schedule):
    model, x_0, prompt = _shifted_model(schedule)
    null = torch.zeros(1, 1, 16)
    timesteps = schedule.timesteps(20)
    run = lambda method: invert_with_model(model, x_0, timesteps, prompt, null, method, 7.5, progress=False)  # noqa: E731
    error = lambda inversion: _max_error(reconstruct_with_model(model, inversion, progress=False).sample, x_0)  # noqa: E731
    null_text, ddim, negative = run("null_text"), run("ddim"), run("negative_prompt")
    losses = null_text.diagnostics["null_text_losses"]  # (S, inner_steps)
    assert losses.shape == (20, NullTextSettings().inner_steps)
    first, best = losses[:, 0], torch.nan_to_num(losses, nan=math.inf).min(dim=1).values
    assert (best <= first).all() and best.sum() < 0.7 * first.sum()
    assert len(null_text.unconditional) == 20 and null_text.unconditional[0].shape == (2, 1, 16)
    assert error(null_text) < error(ddim) / 3
    # negative-prompt inversion: uncond = cond, so guidance leaves the w = 1 pivot untouched
    assert negative.unconditional is prompt
    pivot = invert_with_model(model, x_0, timesteps, prompt, null, "ddim", 1.0, progress=False)
    assert torch.equal(negative.latents, pivot.latents) and abs(error(negative) - error(pivot)) < 1e-6


def test_null_text_on_a_unet_decreases_its_loss_without_touching_weights(pipe, image):
    pipe.unet.requires_grad_(True)  # even with trainable weights, only the embedding gets a gradient
    try:
        inversion = invert(pipe, image, "a red circle", "null_text", num_steps=3, guidance_scale=7.5,
                           inner_steps=4, early_stop_epsilon=0.0, progress=False)
        assert all(p.grad is None for p in pipe.unet.parameters())
    finally:
        pipe.unet.requires_grad_(False)
    losses = inversion.diagnostics["null_text_losses"]
    assert losses.shape == (3, 4) and not torch.isnan(losses).any()
    assert (losses[:, -1] < losses[:, 0]).all()
    assert inversion.uncond_embeddings.shape == (3, 1, 32, 64) and inversion.per_step_uncond


def _papers_loop(model, pivot, timesteps, text, null, guidance_scale, inner_steps):
    """An independent re-implementation of Mokady et al.'s `null_optimization` (what optimize_null_text ran before
    its faster default): per step, loss -> Adam step -> stop if that loss was below 1e-5 + 1e-3 i / S; then one
    guided call at the optimised embedding."""
    import torch.nn.functional as F

    from diffusion_lab.schedules import timestep_pairs

    pairs, embedding, z_bar, result = timestep_pairs(timesteps), null.clone(), pivot[0], []
    for i, (t, t_prev) in enumerate(pairs):
        embedding = embedding.detach().clone().requires_grad_(True)  # Adam steps it in place
        optimizer = torch.optim.Adam([embedding], lr=1e-2 * (1 - 0.5 * i / len(pairs)))
        with torch.no_grad():
            cond = model.conditional_output(z_bar, t, text)
        for _ in range(inner_steps):
            with torch.enable_grad():
                uncond = model.conditional_output(z_bar, t, embedding)
                guided = uncond + guidance_scale * (cond - uncond)
                z_prev = generalized_posterior_step(z_bar, guided, t, t_prev, model.schedule).prev_sample
                loss = F.mse_loss(z_prev, pivot[i + 1])
                optimizer.zero_grad()
                loss.backward()
            optimizer.step()
            if loss.item() < 1e-5 + 1e-3 * i / len(pairs):
                break
        embedding = embedding.detach()
        result.append(embedding)
        with torch.no_grad():
            guided = model.denoiser(text, embedding, guidance_scale)(z_bar, t, i)
            z_bar = generalized_posterior_step(z_bar, guided, t, t_prev, model.schedule).prev_sample
    return torch.stack(result)


def test_the_papers_null_text_loop_is_one_argument_away(pipe, image):
    """NullTextSettings.paper() (invert(..., null_text_settings="paper")) is the paper's loop, as before the faster
    default: the same embeddings as an independent re-implementation of `null_optimization`."""
    from diffusion_lab.inversion import optimize_null_text

    model = ConditionalModel.from_pipeline(pipe)
    latents = torch.randn(1, 4, 16, 16, generator=torch.Generator().manual_seed(2))
    inversion = invert(pipe, None, "a red circle", "null_text", num_steps=3, latents=latents, inner_steps=3,
                       null_text_settings="paper", progress=False)
    assert inversion.settings["check_first"] is False and inversion.settings["learning_rate"] == 1e-2
    null = encode_prompts(pipe, [""])
    expected = _papers_loop(model, inversion.latents, inversion.timesteps, inversion.text_embeddings, null, 7.5, 3)
    assert _max_error(inversion.uncond_embeddings, expected) < 1e-4  # the traced UNet's gradients: ~1e-6
    ours = optimize_null_text(model, inversion.latents, inversion.timesteps, inversion.text_embeddings, null, 7.5,
                              NullTextSettings.paper(inner_steps=3), progress=False)
    assert _max_error(ours.uncond_embeddings, expected) < 1e-4


def test_check_first_stops_before_a_step_it_does_not_need(schedule):
    """The default checks the threshold before each Adam step: a step already below it costs one forward and keeps
    its embedding; the paper's loop takes one Adam step there. The last 10% of the steps have a tighter threshold."""
    model, x_0, prompt = _shifted_model(schedule)
    null = torch.zeros(1, 1, 16)
    timesteps = schedule.timesteps(10)
    loose = dict(early_stop_epsilon=1e9)
    fast = invert_with_model(model, x_0, timesteps, prompt, null, "null_text", 7.5, NullTextSettings(**loose),
                             progress=False)
    paper = invert_with_model(model, x_0, timesteps, prompt, null, "null_text", 7.5, NullTextSettings.paper(**loose),
                              progress=False)
    for inversion in (fast, paper):  # one loss per step, then the stop
        losses = inversion.diagnostics["null_text_losses"]
        assert not torch.isnan(losses[:, 0]).any() and torch.isnan(losses[:, 1:]).all()
    assert all(torch.equal(e, null.expand(2, -1, -1)) for e in fast.unconditional)
    assert all(_max_error(e, null) > 1e-3 for e in paper.unconditional)
    settings = NullTextSettings()
    assert settings.threshold(44, 50) == pytest.approx(3 * (1e-5 + 1e-3 * 44 / 50))  # 3x the paper's
    assert settings.threshold(45, 50) == pytest.approx(0.5 * (1e-5 + 1e-3 * 45 / 50))  # the last 10%: half
    assert NullTextSettings.paper().threshold(49, 50) == pytest.approx(1e-5 + 1e-3 * 49 / 50)
    with pytest.raises(ValueError, match="choose one of fast, paper"):
        NullTextSettings.preset("quick")


def test_the_default_null_text_loop_reconstructs_near_the_vae_ceiling():
    """shapes-tiny, a held-out render, S = 10, w = 7.5: the default (the faster loop) comes within 0.5 dB of the
    render's VAE round trip (measured 0.13 dB with the 3x threshold, 0.17 dB with the 2x one; per image at S = 50:
    README, "Null-text inversion, faster")."""
    from diffusion_lab.latents import decode_latents, encode_images
    from diffusion_lab.metrics import psnr
    from diffusion_lab.models import load_pipeline
    from diffusion_lab.shapes import caption

    trained = load_pipeline("shapes-tiny", device="cpu", dtype="float32")
    scene = random_scene(1_000_003)
    original = render(scene, size=64).image[None]
    latents = encode_images(trained, original)
    ceiling = float(np.ravel(psnr(decode_latents(trained, latents, "uint8"), original))[0])

    inversion = invert(trained, None, caption(scene), "null_text", num_steps=10, latents=latents, progress=False)
    assert inversion.settings["check_first"] is True  # shapes-tiny's default is the faster loop
    reconstructed = reconstruct(trained, inversion, output_type="uint8", progress=False)
    assert ceiling - float(np.ravel(psnr(reconstructed, original))[0]) < 0.5


# ------------------------------------------------------------------------------------------ pipeline and records


def test_inversion_round_trips_through_save_and_load(pipe, image, tmp_path):
    inversion = invert(pipe, image, "a red circle", "null_text", num_steps=3, inner_steps=2, progress=False,
                       model_name="shapes-tiny-untrained")
    previous_umask = os.umask(0o022)
    try:
        folder = inversion.save(tmp_path / "inv")
    finally:
        os.umask(previous_umask)
    assert sorted(p.name for p in folder.iterdir()) == ["inversion.json", "inversion.safetensors"]  # no temporary left
    # readable by the course folder's other users, as the umask allows (safetensors' save_file made it owner-only)
    assert all(stat.S_IMODE(p.stat().st_mode) == 0o644 for p in folder.iterdir())
    record = json.loads((folder / "inversion.json").read_text())
    assert record["method"] == "null_text" and record["timesteps"] == inversion.timesteps.tolist()
    assert record["settings"]["inner_steps"] == 2 and record["settings"]["learning_rate"] == 0.1  # shapes-tiny: fast
    assert record["settings"]["check_first"] is True
    loaded = Inversion.load(folder)
    for name in ("latents", "timesteps", "text_embeddings", "uncond_embeddings"):
        assert torch.equal(getattr(loaded, name), getattr(inversion, name)), name
    assert torch.equal(loaded.diagnostics["null_text_losses"], inversion.diagnostics["null_text_losses"])
    assert (loaded.prompts, loaded.method, loaded.guidance_scale, loaded.model_name) == (
        ["a red circle"], "null_text", 7.5, "shapes-tiny-untrained")
    first = reconstruct(pipe, inversion, output_type="latents", progress=False)
    again = reconstruct(pipe, loaded, output_type="latents", progress=False)
    assert torch.equal(first, again)
    with pytest.raises(FileNotFoundError, match="no saved inversion"):
        Inversion.load(tmp_path / "nothing")


def test_methods_on_a_pipeline_batch(pipe, image):
    images = [image, render(random_scene(2, num_objects=1), size=64).image]
    ddim = invert(pipe, images, "a red circle", "ddim", num_steps=4, progress=False)
    assert ddim.guidance_scale == 1.0 and ddim.latents.shape == (5, 2, 4, 16, 16) and not ddim.per_step_uncond
    negative = invert(pipe, images, ["a red circle", "a blue square"], "negative_prompt", num_steps=4, progress=False)
    assert torch.equal(negative.uncond_embeddings[0], negative.text_embeddings)
    assert torch.equal(negative.latents, ddim.latents) is False  # different prompts, different pivots
    fixed = invert(pipe, images, "a red circle", "fixed_point", num_steps=4, fixed_point_iterations=2, progress=False)
    assert fixed.diagnostics["fixed_point_residuals"].shape == (4, 2)
    reconstruction = reconstruct(pipe, fixed, output_type="pil", progress=False)
    assert len(reconstruction) == 2 and reconstruction[0].size == (64, 64)
    edit = reconstruct(pipe, fixed, prompt="a blue square", output_type="uint8", progress=False)
    assert edit.shape == (2, 64, 64, 3)
    direct = invert(pipe, images, "a red circle", "direct", num_steps=4, progress=False)
    assert direct.guidance_scale == 7.5 and torch.equal(direct.latents, ddim.latents)
    assert torch.equal(reconstruct(pipe, direct, output_type="latents", progress=False), direct.z_0)  # the pivot
    unrectified = reconstruct(pipe, direct, prompt="a red circle", output_type="latents", progress=False)
    assert not torch.allclose(unrectified, direct.z_0, atol=1e-3)  # a prompt given: sampled freely at w = 7.5


def test_clear_errors_for_bad_inputs(pipe, image, tmp_path):
    with pytest.raises(ValueError, match="only eta = 0 .* is invertible"):
        invert(pipe, image, "a red circle", eta=0.5, progress=False)
    with pytest.raises(ValueError, match="unknown inversion method 'edict'"):
        invert(pipe, image, "a red circle", method="edict", progress=False)
    with pytest.raises(PromptError, match="tiger"):
        invert(pipe, image, "a red tiger", progress=False)
    with pytest.raises(ValueError, match="2 prompts for 1 images"):
        invert(pipe, image, ["a red circle", "a blue square"], progress=False)
    with pytest.raises(FileNotFoundError, match="no image file"):
        invert(pipe, tmp_path / "missing.png", "a red circle", progress=False)
    with pytest.raises(ValueError, match="guidance_scale must be"):
        invert(pipe, image, "a red circle", guidance_scale=-1.0, progress=False)
    with pytest.raises(ValueError, match="num_steps must be in"):
        invert(pipe, image, "a red circle", num_steps=0, progress=False)
    with pytest.warns(ImageConversionWarning, match="resized from 32x32 to 64x64"):
        inversion = invert(pipe, image[::2, ::2], "a red circle", num_steps=2, progress=False)
    with pytest.raises(ValueError, match="only eta = 0"):
        reconstruct(pipe, inversion, eta=1.0, progress=False)
    wrong = Inversion(inversion.latents[:, :, :3], inversion.timesteps, inversion.text_embeddings,
                      inversion.uncond_embeddings, inversion.prompts, "ddim", 1.0)
    with pytest.raises(ValueError, match="3-channel latents"):
        reconstruct(pipe, wrong, progress=False)


def test_tiny_random_sd_pipeline_with_a_bpe_tokenizer(tmp_path):
    """The SD architecture of real checkpoints (CLIP BPE tokenizer, 8-channel-free VAE of factor 2)."""
    tiny_random = pytest.importorskip("diffusion_lab.models.tiny_random")
    pipe = tiny_random.build_tiny_random_pipeline(seed=0)
    for module in (pipe.unet, pipe.vae, pipe.text_encoder):
        module.requires_grad_(False)
    image = render(random_scene(3, num_objects=1), size=32).image
    with warnings.catch_warnings():
        warnings.simplefilter("error", ImageConversionWarning)
        inversion = invert(pipe, image, "a photo of a tiger", "null_text", num_steps=2, inner_steps=2, progress=False)
    assert inversion.uncond_embeddings.shape[0] == 2 and inversion.latents.shape[-2:] == (16, 16)
    Inversion.load(inversion.save(tmp_path / "tiger"))
    assert np.asarray(reconstruct(pipe, inversion, progress=False)[0]).shape == (32, 32, 3)
