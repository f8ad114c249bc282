"""The sampling loop, progress bars and the text-conditioned denoiser (classifier-free guidance)."""

import math
from types import SimpleNamespace

import pytest
import torch
from diffusers import DDIMScheduler, UNet2DConditionModel
from torch import nn

from diffusion_lab.denoisers import GuidedDenoiser, TextConditionedDenoiser, classifier_free_guidance
from diffusion_lab.sampling import progress_bar, sample
from diffusion_lab.schedules import NoiseSchedule



SD = dict(beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)


def toy_denoiser(x_t, t, step_index):
    """A smooth stand-in for a network: depends on x_t and t, not on step_index."""
    return 0.3 * x_t + math.sin(int(t) / 100.0)


@pytest.fixture
def schedule():
    return NoiseSchedule.create(**SD, set_alpha_to_one=False, steps_offset=1)


def _x_T(seed=0, shape=(2, 4, 8, 8)):
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("eta", [0.0, 0.5])
@pytest.mark.parametrize("prediction_type", ["epsilon", "v_prediction"])
def test_sample_equals_diffusers_loop(eta, prediction_type):
    """The whole loop, including noise drawn from the same generator, equals DDIMScheduler.step's loop."""
    scheduler = DDIMScheduler(
        **SD, clip_sample=False, set_alpha_to_one=False, steps_offset=1, prediction_type=prediction_type
    )
    scheduler.set_timesteps(20)
    x = _x_T()
    generator = torch.Generator().manual_seed(42)
    for i, t in enumerate(scheduler.timesteps):
        x = scheduler.step(toy_denoiser(x, t, i), t, x, eta=eta, generator=generator).prev_sample
    schedule = NoiseSchedule.from_scheduler_config(scheduler.config)
    ours = sample(toy_denoiser, _x_T(), schedule, schedule.timesteps(20), eta=eta,
                  generator=torch.Generator().manual_seed(42), progress=False)
    assert torch.allclose(ours.sample, x, rtol=1e-5, atol=1e-4)


def test_eta_zero_is_deterministic_and_eta_positive_is_reproducible(schedule):
    timesteps = schedule.timesteps(10)
    run = lambda eta, seed, variance="eta": sample(  # noqa: E731
        toy_denoiser, _x_T(), schedule, timesteps, eta=eta, variance=variance,
        generator=torch.Generator().manual_seed(seed), progress=False,
    ).sample
    assert torch.equal(run(0.0, 1), run(0.0, 2))
    for eta, variance in [(0.5, "eta"), (1.0, "eta"), (0.0, "sigma_hat")]:
        assert torch.equal(run(eta, 1, variance), run(eta, 1, variance))
        assert not torch.allclose(run(eta, 1, variance), run(eta, 2, variance))


def test_trajectory_callback_suffix_and_noise_replay(schedule):
    timesteps = schedule.timesteps(10)
    calls = []
    full = sample(
        toy_denoiser, _x_T(), schedule, timesteps, eta=1.0, generator=torch.Generator().manual_seed(0),
        callback=lambda i, t, x_t, x0_hat: calls.append((i, t, x_t.shape, x0_hat.shape)),
        progress=False, return_trajectory=True,
    )
    assert [c[:2] for c in calls] == list(enumerate(timesteps.tolist()))
    assert len(full.trajectory) == 11 and len(full.predicted_x0) == 10 and len(full.noises) == 10
    assert torch.equal(full.trajectory[-1], full.sample) and torch.equal(full.trajectory[0], _x_T())
    # replaying the recorded noises reproduces the stochastic run without a generator
    replay = sample(toy_denoiser, _x_T(), schedule, timesteps, eta=1.0, noises=full.noises, progress=False)
    assert torch.allclose(replay.sample, full.sample)
    # a suffix of the subsequence continues from the intermediate x_t
    suffix = sample(toy_denoiser, full.trajectory[4], schedule, timesteps[4:], eta=1.0, noises=full.noises[4:],
                    progress=False)
    assert torch.allclose(suffix.sample, full.sample)


def test_on_step_end_replaces_sample(schedule):
    seen = []

    def keep_zero_row(step_index, t_prev, x_prev):
        seen.append(t_prev)
        x_prev = x_prev.clone()
        x_prev[0] = 0.0
        return x_prev

    result = sample(lambda x, t, i: torch.zeros_like(x), _x_T(), schedule, schedule.timesteps(5),
                    on_step_end=keep_zero_row, progress=False)
    assert seen[-1] == -1 and (result.sample[0] == 0).all() and (result.sample[1] != 0).all()


def test_progress_bar_silent_with_env(monkeypatch, capsys, schedule):
    monkeypatch.setenv("DIFFUSION_LAB_NO_PROGRESS", "1")
    assert list(progress_bar(range(3), True)) == [0, 1, 2]
    sample(toy_denoiser, _x_T(), schedule, schedule.timesteps(3), progress=True)
    assert capsys.readouterr().err == ""
    monkeypatch.delenv("DIFFUSION_LAB_NO_PROGRESS")
    list(progress_bar(range(3), True, desc="visible"))
    assert "visible" in capsys.readouterr().err
    list(progress_bar(range(3), False, desc="hidden"))
    assert capsys.readouterr().err == ""


class RecordingUNet(nn.Module):
    """Fake UNet: output = x * (1 + mean of the embeddings of its row); records every call."""

    def __init__(self, dtype=torch.float32):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(1, dtype=dtype))
        self.calls = []

    def forward(self, x, t, encoder_hidden_states):
        self.calls.append((x.shape[0], x.dtype, encoder_hidden_states.clone()))
        scale = 1 + encoder_hidden_states.mean(dim=(1, 2)).view(-1, 1, 1, 1)
        return SimpleNamespace(sample=x * scale * self.weight)


def test_text_conditioned_denoiser_batch_order_and_guidance():
    unet = RecordingUNet()
    cond = torch.full((1, 3, 5), 2.0)  # (1, L, D): broadcast to the batch
    uncond_per_step = [torch.full((1, 3, 5), float(k)) for k in range(4)]  # null-text style, indexed by step
    denoiser = TextConditionedDenoiser(unet, cond, uncond_per_step, guidance_scale=7.5)
    x = _x_T(shape=(2, 4, 4, 4))
    output = denoiser(x, 500, step_index=3)
    batch, _, embeddings = unet.calls[-1]
    assert batch == 4
    assert (embeddings[:2] == 3.0).all() and (embeddings[2:] == 2.0).all()  # [uncond rows, cond rows]
    assert torch.allclose(output, classifier_free_guidance(x * 4.0, x * 3.0, 7.5))
    assert torch.allclose(output, x * 4.0 + 7.5 * (x * 3.0 - x * 4.0))
    # guidance 1 or no uncond: only the conditional batch runs
    for single in (TextConditionedDenoiser(unet, cond, uncond_per_step, 1.0), TextConditionedDenoiser(unet, cond)):
        assert torch.allclose(single(x, 500, 0), x * 3.0) and unet.calls[-1][0] == 2


def test_text_conditioned_denoiser_casts_to_unet_dtype():
    unet = RecordingUNet(dtype=torch.bfloat16)
    denoiser = TextConditionedDenoiser(unet, torch.zeros(2, 3, 5), torch.zeros(1, 3, 5), guidance_scale=3.0)
    output = denoiser(_x_T(shape=(2, 4, 4, 4)), 10, 0)
    assert unet.calls[-1][1] == torch.bfloat16 and output.dtype == torch.float32


def test_text_conditioned_denoiser_with_real_tiny_unet(schedule):
    torch.manual_seed(0)
    unet = UNet2DConditionModel(
        sample_size=8, in_channels=4, out_channels=4, layers_per_block=1, block_out_channels=(8, 16),
        down_block_types=("CrossAttnDownBlock2D", "DownBlock2D"), up_block_types=("UpBlock2D", "CrossAttnUpBlock2D"),
        cross_attention_dim=16, norm_num_groups=4, attention_head_dim=2,
    ).eval()
    cond, uncond = torch.randn(2, 1, 5, 16, generator=torch.Generator().manual_seed(1))
    guided = TextConditionedDenoiser(unet, cond, uncond, guidance_scale=5.0)
    x = _x_T(shape=(1, 4, 8, 8))
    with torch.no_grad():
        eps_uncond = unet(x, 981, encoder_hidden_states=uncond).sample
        eps_cond = unet(x, 981, encoder_hidden_states=cond).sample
        assert torch.allclose(guided(x, 981, 0), eps_uncond + 5.0 * (eps_cond - eps_uncond), atol=1e-5)
    result = sample(guided, x, schedule, schedule.timesteps(3), progress=False)
    assert result.sample.shape == x.shape and torch.isfinite(result.sample).all()


def test_guided_denoiser_passes_none_as_unconditional():
    seen = []

    def conditional_fn(x, t, condition):
        seen.append(condition)
        return x * (2.0 if condition is None else 3.0)

    x = torch.ones(1, 1, 2, 2)
    assert torch.allclose(GuidedDenoiser(conditional_fn, "cat", None, 2.0)(x, 5, 0), x * (2.0 + 2.0 * 1.0))
    assert seen == ["cat", None]
    assert torch.allclose(GuidedDenoiser(conditional_fn, "cat", None, 1.0)(x, 5, 0), x * 3.0) and seen[-1] == "cat"
