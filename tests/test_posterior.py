"""The generalized posterior: Monte-Carlo marginals, diffusers agreement, DDPM / sigma-hat special cases."""

import itertools

import pytest
import torch
from diffusers import DDIMScheduler, DDPMScheduler

from diffusion_lab.posterior import (
    epsilon_from_x0,
    forward_marginal_mean_std,
    forward_marginal_sample,
    generalized_posterior_mean,
    generalized_posterior_step,
    posterior_std,
    predict_epsilon,
    predict_x0,
    prediction_target,
    sample_generalized_posterior,
    sigma_from_eta,
    sigma_hat,
)
from diffusion_lab.schedules import NoiseSchedule, timestep_pairs, timestep_subsequence



SD = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
NUM_SAMPLES = 200_000
X0 = torch.tensor([1.0, -0.5, 0.3, 2.0], dtype=torch.float64)
# (skip, spacing, set_alpha_to_one): every subsequence kind, both ends of the chain
SUBSEQUENCES = [
    ("uniform", "leading", False), ("uniform", "trailing", True), ("quadratic", "leading", True),
    ("quadratic", "trailing", False),
]


def _chain_from_x_T(schedule, timesteps, generator):
    alpha_bar_T = schedule.alpha_bar(int(timesteps[0]))
    noise = torch.randn(NUM_SAMPLES, 4, generator=generator, dtype=torch.float64)
    return forward_marginal_sample(X0.expand(NUM_SAMPLES, 4), alpha_bar_T, noise)  # (N, 4)


def _assert_moments(x, expected_mean, expected_variance, where):
    mean, variance = x.mean(0), x.var(0)
    mean_tolerance = 5 * (expected_variance / NUM_SAMPLES).sqrt() + 1e-9
    variance_tolerance = 6 * expected_variance * (2 / NUM_SAMPLES) ** 0.5 + 1e-9
    assert ((mean - expected_mean).abs() <= mean_tolerance).all(), (where, mean, expected_mean)
    assert ((variance - expected_variance).abs() <= variance_tolerance).all(), (where, variance, expected_variance)


@pytest.mark.parametrize("skip,spacing,set_alpha_to_one", SUBSEQUENCES)
def test_eta_family_preserves_forward_marginals(skip, spacing, set_alpha_to_one):
    """q_sigma(x_{t-1} | x_t, x_0) with the true x_0 keeps q(x_{t-1} | x_0) at every step, for every eta in [0, 1]."""
    schedule = NoiseSchedule.create(**SD, set_alpha_to_one=set_alpha_to_one)
    timesteps = timestep_subsequence(1000, 10, skip, spacing)
    generator = torch.Generator().manual_seed(0)
    for eta in (0.0, 0.5, 1.0):
        x = _chain_from_x_T(schedule, timesteps, generator)
        for t, t_prev in timestep_pairs(timesteps):
            alpha_bar_t, alpha_bar_prev = schedule.alpha_bar(t), schedule.alpha_bar(t_prev)
            sigma = sigma_from_eta(alpha_bar_t, alpha_bar_prev, eta)
            noise = torch.randn(x.shape, generator=generator, dtype=x.dtype)
            x = sample_generalized_posterior(x, X0, alpha_bar_t, alpha_bar_prev, sigma, noise)
            _assert_moments(x, alpha_bar_prev.sqrt() * X0, (1 - alpha_bar_prev).expand(4), (eta, t, t_prev))


@pytest.mark.parametrize("skip,spacing,set_alpha_to_one", SUBSEQUENCES)
def test_sigma_hat_keeps_mean_but_inflates_variance(skip, spacing, set_alpha_to_one):
    """sigma-hat (eta = 1 mean, noise sqrt(1 - alpha_bar_t / alpha_bar_prev)) is NOT in the q_sigma family.

    The mean is linear in x_t with the eta = 1 coefficient, so E[x_{t-1}] stays sqrt(alpha_bar_prev) x_0. But the
    noise is larger than the sigma_t the mean was built for, so the variance follows
        v_prev = (1 - alpha_bar_prev - sigma_1^2) v_t / (1 - alpha_bar_t) + sigma_hat^2  >  1 - alpha_bar_prev,
    which is why DDIM's Table 1 shows sigma-hat far worse at few steps and best at 1000 (where the excess vanishes).
    """
    schedule = NoiseSchedule.create(**SD, set_alpha_to_one=set_alpha_to_one)
    timesteps = timestep_subsequence(1000, 10, skip, spacing)
    generator = torch.Generator().manual_seed(1)
    x = _chain_from_x_T(schedule, timesteps, generator)
    predicted_variance = 1 - schedule.alpha_bar(int(timesteps[0]))
    for t, t_prev in timestep_pairs(timesteps):
        alpha_bar_t, alpha_bar_prev = schedule.alpha_bar(t), schedule.alpha_bar(t_prev)
        sigma_mean = sigma_from_eta(alpha_bar_t, alpha_bar_prev, 1.0)
        sigma_noise = sigma_hat(alpha_bar_t, alpha_bar_prev)
        identity_step = bool(alpha_bar_t == alpha_bar_prev)  # t = 0 -> -1 when not set_alpha_to_one
        assert sigma_noise > sigma_mean or identity_step
        noise = torch.randn(x.shape, generator=generator, dtype=x.dtype)
        x = sample_generalized_posterior(
            x, X0, alpha_bar_t, alpha_bar_prev, sigma_noise, noise, mean_sigma_t=sigma_mean
        )
        direction_coefficient_squared = 1 - alpha_bar_prev - sigma_mean**2
        predicted_variance = direction_coefficient_squared * predicted_variance / (1 - alpha_bar_t) + sigma_noise**2
        _assert_moments(x, alpha_bar_prev.sqrt() * X0, predicted_variance.expand(4), (t, t_prev))
        assert predicted_variance > 1 - alpha_bar_prev  # strictly noisier than q(x_{t-1} | x_0), identity steps too
    # measurably so: at the end the excess is far beyond Monte-Carlo error (the eta test would have failed)
    final_variance = 1 - schedule.final_alpha_cumprod
    standard_error = predicted_variance * (2 / NUM_SAMPLES) ** 0.5
    assert (x.var(0) - final_variance > 20 * standard_error).all()


def test_sigma_hat_coefficient_can_be_imaginary():
    schedule = NoiseSchedule.create(**SD)
    alpha_bar_t, alpha_bar_prev = schedule.alpha_bar(500), schedule.alpha_bar(100)
    assert alpha_bar_t < alpha_bar_prev**2  # so 1 - alpha_bar_prev - sigma_hat^2 < 0
    x = torch.zeros(1, 4, dtype=torch.float64)
    with pytest.raises(ValueError, match="imaginary"):
        generalized_posterior_mean(x, x, alpha_bar_prev, sigma_hat(alpha_bar_t, alpha_bar_prev))
    # the step itself uses the eta = 1 mean and works
    out = generalized_posterior_step(
        torch.randn(1, 4, 2, 2), torch.randn(1, 4, 2, 2), 500, 100, schedule, variance="sigma_hat",
        generator=torch.Generator().manual_seed(0),
    )
    assert torch.isfinite(out.prev_sample).all() and out.sigma == sigma_hat(alpha_bar_t, alpha_bar_prev)


CONFIGS = list(itertools.product(
    ["leading", "trailing"], [True, False], [0, 1], ["epsilon", "v_prediction", "sample"], [0.0, 0.7]
))


@pytest.mark.parametrize("spacing,set_alpha_to_one,steps_offset,prediction_type,eta", CONFIGS)
def test_step_equals_diffusers_ddim(spacing, set_alpha_to_one, steps_offset, prediction_type, eta):
    scheduler = DDIMScheduler(
        **SD, clip_sample=False, set_alpha_to_one=set_alpha_to_one, steps_offset=steps_offset,
        prediction_type=prediction_type, timestep_spacing=spacing,
    )
    scheduler.set_timesteps(10)
    schedule = NoiseSchedule.from_scheduler_config(scheduler.config)
    timesteps = schedule.timesteps(10)
    assert torch.equal(timesteps, scheduler.timesteps)
    generator = torch.Generator().manual_seed(0)
    for t, t_prev in timestep_pairs(timesteps):
        x_t, model_output, noise = torch.randn(3, 2, 4, 8, 8, generator=generator)
        theirs = scheduler.step(model_output, t, x_t, eta=eta, variance_noise=noise)
        ours = generalized_posterior_step(x_t, model_output, t, t_prev, schedule, eta=eta, noise=noise)
        assert ours.prev_sample.dtype == torch.float32
        # atol 1e-4: diffusers' float32 alphas_cumprod makes 1 - alpha_bar_t lose ~6e-5 relative near t = 0
        assert torch.allclose(ours.prev_sample, theirs.prev_sample, rtol=1e-5, atol=1e-4), (t, t_prev)
        assert torch.allclose(ours.pred_original_sample, theirs.pred_original_sample, rtol=1e-5, atol=1e-4)


def test_clip_sample_range_equals_diffusers():
    scheduler = DDIMScheduler(**SD, clip_sample=True, clip_sample_range=1.0)
    scheduler.set_timesteps(10)
    schedule = NoiseSchedule.from_scheduler_config(scheduler.config)
    x_t, model_output = torch.randn(2, 1, 4, 8, 8, generator=torch.Generator().manual_seed(3)) * 3
    ours = generalized_posterior_step(x_t, model_output, 500, 400, schedule, clip_sample_range=1.0)
    assert torch.allclose(ours.prev_sample, scheduler.step(model_output, 500, x_t).prev_sample, atol=1e-5)
    unclipped = generalized_posterior_step(x_t, model_output, 500, 400, schedule)
    assert not torch.allclose(ours.prev_sample, unclipped.prev_sample)  # clipping is off by default


@pytest.mark.parametrize("beta_schedule", ["linear", "scaled_linear"])
def test_eta_one_is_ddpm_posterior_variance_and_sigma_hat_is_beta(beta_schedule):
    kwargs = SD if beta_schedule == "scaled_linear" else dict(beta_schedule="linear")
    ddpm = DDPMScheduler(**kwargs, variance_type="fixed_small")
    schedule = NoiseSchedule.from_scheduler_config(ddpm.config)
    t = torch.arange(1, 1000)
    ours = sigma_from_eta(schedule.alpha_bar(t), schedule.alpha_bar(t - 1), 1.0) ** 2
    theirs = torch.stack([ddpm._get_variance(int(s)) for s in t[::7]]).double()
    # diffusers computes 1 - alpha_bar_t / alpha_bar_{t-1} in float32: ~1e-3 relative cancellation near t = 0
    assert torch.allclose(ours[::7], theirs, rtol=2e-3, atol=1e-10)
    # DDPM eq. 7 in float64, with beta_t itself: beta-tilde_t = (1 - alpha_bar_{t-1}) / (1 - alpha_bar_t) beta_t
    beta_tilde = (1 - schedule.alphas_cumprod[:-1]) / (1 - schedule.alphas_cumprod[1:]) * schedule.betas[1:]
    assert torch.allclose(ours, beta_tilde, rtol=1e-9)
    # over consecutive steps sigma_hat^2 = 1 - alpha_bar_t / alpha_bar_{t-1} = beta_t: the lecture's sqrt(beta_t)
    sigma_hat_squared = sigma_hat(schedule.alpha_bar(t), schedule.alpha_bar(t - 1)) ** 2
    assert torch.allclose(sigma_hat_squared, schedule.betas[1:], rtol=1e-9)
    assert torch.equal(posterior_std(schedule.alpha_bar(t), schedule.alpha_bar(t - 1), variance="sigma_hat"),
                       sigma_hat(schedule.alpha_bar(t), schedule.alpha_bar(t - 1)))
    assert (posterior_std(schedule.alpha_bar(t), schedule.alpha_bar(t - 1), eta=0.0) == 0).all()


def test_forward_marginal_equals_diffusers_add_noise():
    scheduler = DDPMScheduler(**SD)
    schedule = NoiseSchedule.from_scheduler_config(scheduler.config)
    x_0, noise = torch.randn(2, 4, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    t = torch.tensor([10, 500, 900, 999])
    ours = forward_marginal_sample(x_0, schedule.alpha_bar(t), noise)  # per-row alpha_bar (B,)
    assert torch.allclose(ours, scheduler.add_noise(x_0, noise, t), atol=1e-5)
    mean, std = forward_marginal_mean_std(x_0, schedule.alpha_bar(t))
    assert std.shape == (4, 1, 1, 1) and torch.allclose(mean + std * noise, ours)
    drawn = forward_marginal_sample(x_0, 0.5, generator=torch.Generator().manual_seed(1))
    assert torch.equal(drawn, forward_marginal_sample(x_0, 0.5, generator=torch.Generator().manual_seed(1)))


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_parameterizations_round_trip(prediction_type):
    generator = torch.Generator().manual_seed(0)
    x_0, epsilon = torch.randn(2, 3, 4, 4, 4, generator=generator, dtype=torch.float64)
    alpha_bar_t = torch.tensor([0.9, 0.5, 0.01], dtype=torch.float64)
    x_t = forward_marginal_sample(x_0, alpha_bar_t, epsilon)
    target = prediction_target(x_0, epsilon, alpha_bar_t, prediction_type)
    assert torch.allclose(predict_x0(target, x_t, alpha_bar_t, prediction_type), x_0)
    assert torch.allclose(predict_epsilon(target, x_t, alpha_bar_t, prediction_type), epsilon)
    assert torch.allclose(epsilon_from_x0(x_t, x_0, alpha_bar_t), epsilon)
    with pytest.raises(ValueError):
        predict_x0(target, x_t, alpha_bar_t, "score")


def test_ddim_step_with_true_prediction_lands_on_forward_marginal():
    """With a perfect eps prediction, one deterministic DDIM step maps q(x_t|x_0)'s sample to the same-noise x_{t-1}."""
    schedule = NoiseSchedule.create(**SD)
    x_0, epsilon = torch.randn(2, 1, 4, 8, 8, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    x_t = forward_marginal_sample(x_0, schedule.alpha_bar(700), epsilon)
    out = generalized_posterior_step(x_t, epsilon, 700, 300, schedule)
    assert torch.allclose(out.prev_sample, forward_marginal_sample(x_0, schedule.alpha_bar(300), epsilon))
    assert torch.allclose(out.pred_original_sample, x_0) and out.noise is None and out.sigma == 0
