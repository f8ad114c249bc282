"""Schedules and timestep subsequences against diffusers' DDIMScheduler and the DDIM paper."""

import numpy as np
import pytest
import torch
from diffusers import DDIMScheduler

from diffusion_lab.schedules import NoiseSchedule, make_betas, timestep_pairs, timestep_subsequence



SD_BETAS = dict(beta_start=0.00085, beta_end=0.012)


@pytest.mark.parametrize("beta_schedule", ["linear", "scaled_linear", "squaredcos_cap_v2"])
@pytest.mark.parametrize("rescale", [False, True])
def test_betas_equal_diffusers(beta_schedule, rescale):
    kwargs = SD_BETAS if beta_schedule == "scaled_linear" else {}
    scheduler = DDIMScheduler(beta_schedule=beta_schedule, rescale_betas_zero_snr=rescale, **kwargs)
    schedule = NoiseSchedule.from_scheduler_config(scheduler.config)
    assert schedule.betas.dtype == schedule.alphas_cumprod.dtype == torch.float64
    assert torch.equal(schedule.betas.float(), scheduler.betas)
    assert torch.allclose(schedule.alphas_cumprod, scheduler.alphas_cumprod.double(), rtol=1e-5, atol=1e-7)
    if rescale:
        assert schedule.alphas_cumprod[-1] == 0.0


def test_cosine_alias_and_trained_betas():
    assert torch.equal(make_betas("cosine", 50), make_betas("squaredcos_cap_v2", 50))
    trained = np.linspace(1e-3, 0.05, 30)
    schedule = NoiseSchedule.from_scheduler_config({"trained_betas": trained.tolist()})
    assert schedule.num_train_timesteps == 30
    assert torch.equal(schedule.betas, torch.tensor(trained, dtype=torch.float32).double())
    with pytest.raises(ValueError):
        make_betas("exponential")


@pytest.mark.parametrize("set_alpha_to_one", [True, False])
def test_config_fields_and_alpha_bar(set_alpha_to_one):
    scheduler = DDIMScheduler(
        beta_schedule="scaled_linear", set_alpha_to_one=set_alpha_to_one, prediction_type="v_prediction",
        timestep_spacing="trailing", steps_offset=1, **SD_BETAS,
    )
    schedule = NoiseSchedule.from_scheduler_config(scheduler)  # the scheduler object itself works too
    assert schedule.prediction_type == "v_prediction"
    assert schedule.timestep_spacing == "trailing" and schedule.steps_offset == 1
    assert schedule.final_alpha_cumprod == pytest.approx(float(scheduler.final_alpha_cumprod), rel=1e-6)
    assert schedule.alpha_bar(-1) == schedule.final_alpha_cumprod
    assert schedule.alpha_bar(0) == schedule.alphas_cumprod[0]
    batch = schedule.alpha_bar(torch.tensor([5, -1, 999]))
    assert batch.shape == (3,) and batch[1] == schedule.final_alpha_cumprod and batch[2] == schedule.alphas_cumprod[999]
    with pytest.raises(IndexError):
        schedule.alpha_bar(1000)


@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
@pytest.mark.parametrize("num_steps", [1, 7, 10, 30, 50, 64, 1000])
@pytest.mark.parametrize("steps_offset", [0, 1])
def test_uniform_subsequence_equals_diffusers(spacing, num_steps, steps_offset):
    if spacing == "leading" and steps_offset == 1 and num_steps == 1000:
        pytest.skip("diffusers itself produces t = 1000, out of range")
    scheduler = DDIMScheduler(timestep_spacing=spacing, steps_offset=steps_offset)
    scheduler.set_timesteps(num_steps)
    ours = timestep_subsequence(1000, num_steps, "uniform", spacing, steps_offset)
    assert ours.dtype == torch.long
    assert torch.equal(ours, scheduler.timesteps)


def test_quadratic_is_the_papers_and_strictly_decreasing():
    # official DDIM code: seq = [int(s) for s in np.linspace(0, np.sqrt(T * 0.8), S) ** 2]
    paper = [int(s) for s in np.linspace(0, np.sqrt(1000 * 0.8), 10) ** 2]
    assert timestep_subsequence(1000, 10, "quadratic", "leading").tolist() == paper[::-1]
    with_offset = timestep_subsequence(1000, 10, "quadratic", "leading", steps_offset=1)
    assert with_offset.tolist() == [t + 1 for t in paper[::-1]]
    for spacing in ("leading", "trailing", "linspace"):
        for num_steps in (1, 5, 20, 50, 100):
            ts = timestep_subsequence(1000, num_steps, "quadratic", spacing)
            assert (ts[:-1] > ts[1:]).all() and ts.min() >= 0 and ts.max() <= 999
            assert len(ts) <= num_steps
            if len(ts) >= 3:
                assert ts[0] - ts[1] > ts[-2] - ts[-1]  # big steps at high noise, dense near t = 0
    assert timestep_subsequence(1000, 10, "quadratic", "trailing")[0] == 999
    assert timestep_subsequence(1000, 10, "quadratic", "linspace")[[0, -1]].tolist() == [999, 0]
    assert len(timestep_subsequence(1000, 100, "quadratic", "leading")) < 100  # repeated small steps removed


@pytest.mark.parametrize(
    "spacing,num_steps,steps_offset",
    [("leading", 10, 0), ("leading", 50, 1), ("leading", 7, 0), ("leading", 30, 1), ("trailing", 10, 0),
     ("trailing", 50, 0), ("trailing", 20, 1)],
)
def test_timestep_pairs_match_diffusers_previous_timestep(spacing, num_steps, steps_offset):
    """diffusers' DDIM step goes to t - T // S (final_alpha_cumprod below 0); ours to the next entry / -1."""
    scheduler = DDIMScheduler(timestep_spacing=spacing, steps_offset=steps_offset)
    scheduler.set_timesteps(num_steps)
    for t, t_prev in timestep_pairs(scheduler.timesteps):
        diffusers_prev = t - 1000 // num_steps
        assert t_prev == diffusers_prev or (t_prev == -1 and diffusers_prev < 0)


def test_trailing_with_steps_not_dividing_T_differs_from_diffusers():
    """Documented difference: with S = 7, diffusers' t - T//S skips past the next grid point and ends at t = 0."""
    ts = timestep_subsequence(1000, 7, "uniform", "trailing")
    assert timestep_pairs(ts)[-1] == (int(ts[-1]), -1)
    assert int(ts[-1]) - 1000 // 7 == 0  # diffusers would step to alpha_bar_0, not final_alpha_cumprod


def test_timestep_pairs_suffix_and_validation():
    ts = timestep_subsequence(1000, 10)
    assert timestep_pairs(ts[4:]) == timestep_pairs(ts)[4:]
    with pytest.raises(ValueError):
        timestep_pairs([1, 5])
    with pytest.raises(ValueError):
        timestep_subsequence(1000, 1001)
    with pytest.raises(ValueError):
        timestep_subsequence(1000, 10, spacing="middle")


def test_subsequence_past_the_last_timestep_says_what_to_do():
    # diffusers' leading spacing with steps_offset=1 puts S=T's last step at t=T, which has no alpha_bar.
    with pytest.raises(ValueError, match=r"reach t=\[1000\].*trailing"):
        timestep_subsequence(1000, 1000, spacing="leading", steps_offset=1)
