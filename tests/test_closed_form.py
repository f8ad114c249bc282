"""The exact MMSE denoiser of a small data set, and sampling with it."""

import pytest
import torch

from diffusion_lab.closed_form import ClosedFormDenoiser
from diffusion_lab.posterior import forward_marginal_sample, predict_x0
from diffusion_lab.sampling import sample
from diffusion_lab.schedules import NoiseSchedule



SD = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)


@pytest.fixture
def schedule():
    return NoiseSchedule.create(**SD, set_alpha_to_one=True, steps_offset=1)


@pytest.fixture
def data():
    return torch.randn(8, 3, 8, 8, generator=torch.Generator().manual_seed(0))


def _nearest(samples, data):
    distances = torch.cdist(samples.flatten(1).double(), data.flatten(1).double())  # (B, N)
    rms = distances / samples[0].numel() ** 0.5
    return rms.min(dim=1)


def test_small_noise_returns_nearest_data_point(schedule, data):
    denoiser = ClosedFormDenoiser(data, schedule)
    index = torch.tensor([3, 5, 0])
    x_t = forward_marginal_sample(data[index], schedule.alpha_bar(20), generator=torch.Generator().manual_seed(1))
    x0_hat = predict_x0(denoiser(x_t, 20, 0), x_t, schedule.alpha_bar(20), "epsilon")
    assert torch.allclose(x0_hat, data[index], atol=1e-4)
    weights = denoiser.posterior_weights(x_t, 20)
    assert weights.dtype == torch.float64 and torch.equal(weights.argmax(1), index)
    # at high noise the posterior spreads out and x0_hat moves towards the data mean
    x_high = forward_marginal_sample(data[index], schedule.alpha_bar(999), torch.zeros_like(x_t))
    high = denoiser.posterior_mean_x0(x_high, 999)
    assert high.sub(data.double().mean(0)).norm() < x0_hat.double().sub(data.double().mean(0)).norm()


@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction", "sample"])
def test_posterior_mean_matches_numerical_integration(prediction_type):
    """1-D mixture of Gaussians (data_std > 0): E[x_0 | x_t] by quadrature over x_0 equals the closed form."""
    schedule = NoiseSchedule.create(**SD, prediction_type=prediction_type)
    points, data_std, t = torch.tensor([-1.0, 0.5, 2.0]), 0.3, 400
    denoiser = ClosedFormDenoiser(points.view(3, 1, 1, 1), schedule, data_std=data_std)
    alpha_bar = schedule.alpha_bar(t)
    grid = torch.linspace(-6, 8, 200_001, dtype=torch.float64)  # x_0
    prior = sum(torch.exp(-((grid - p) ** 2) / (2 * data_std**2)) for p in points.double())
    x_t = torch.tensor([-0.7, 0.4, 1.9], dtype=torch.float64).view(3, 1, 1, 1)
    likelihood = torch.exp(-((x_t.view(3, 1) - alpha_bar.sqrt() * grid) ** 2) / (2 * (1 - alpha_bar)))  # (3, G)
    expected = (likelihood * prior * grid).sum(1) / (likelihood * prior).sum(1)
    closed_form = denoiser.posterior_mean_x0(x_t, t).flatten()
    assert torch.allclose(closed_form, expected, atol=1e-6)
    # the output in the schedule's parameterization converts back to the same x0_hat
    x0_hat = predict_x0(denoiser(x_t, t, 0), x_t, alpha_bar, prediction_type)
    assert torch.allclose(x0_hat.flatten(), expected, atol=1e-6)


def test_numerically_stable_far_from_data(schedule, data):
    denoiser = ClosedFormDenoiser(data, schedule)
    x_t = torch.full((2, 3, 8, 8), 1e3)
    output = denoiser(x_t, 1, 0)  # distances^2 / (2 (1 - alpha_bar)) ~ 1e10: exp would underflow without logsumexp
    assert torch.isfinite(output).all() and output.dtype == torch.float32
    assert torch.allclose(denoiser.posterior_weights(x_t, 1).sum(1), torch.ones(2, dtype=torch.float64))


def test_ddim_sampling_lands_on_a_data_point(schedule, data):
    denoiser = ClosedFormDenoiser(data, schedule)
    x_T = torch.randn(6, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    result = sample(denoiser, x_T, schedule, schedule.timesteps(50), eta=0.0, progress=False)
    distance, index = _nearest(result.sample, data)
    assert (distance < 1e-3).all(), distance  # data points are ~1.4 RMS apart
    assert len(set(index.tolist())) > 1  # different noises reach different points: not a collapse to one


def test_classifier_free_guidance_lands_on_the_requested_class(schedule, data):
    labels = torch.tensor([0, 1, 0, 1, 0, 1, 0, 1])
    denoiser = ClosedFormDenoiser(data, schedule, labels=labels)
    requested = torch.tensor([0, 1, 1, 0, 1, 0, 1, 0])
    x_T = torch.randn(8, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    for guidance_scale in (1.0, 3.0):
        result = sample(denoiser.conditioned(requested, guidance_scale), x_T, schedule, schedule.timesteps(50),
                        progress=False)
        distance, index = _nearest(result.sample, data)
        assert torch.equal(labels[index], requested), guidance_scale
        if guidance_scale == 1.0:
            assert (distance < 1e-3).all()  # the conditional model alone lands exactly on a point of the class
    with pytest.raises(ValueError):
        denoiser.conditioned(7)(x_T, 500, 0)
    with pytest.raises(ValueError):
        ClosedFormDenoiser(data, schedule).conditioned(0)(x_T, 500, 0)
