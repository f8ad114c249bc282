"""Lab 2's claims measured: q_sigma keeps the marginals, and DDIM's Table 1 in the shapes world, as means and rates.

Song et al. 2021, "Denoising Diffusion Implicit Models" (arXiv:2010.02502), Table 1: on CIFAR10 the FID grows with
eta at small S (eta = 0 < 0.2 < 0.5 < 1; 13.36 against 41.07 at S = 10) and sigma-hat (the lecture's
sigma_t = sqrt(beta_t), `posterior.sigma_hat`) is catastrophic at small S (367.43) but the best at S = 1000.

    marginal_study   q_sigma(x_{t-1} | x_t, x_0) with the TRUE x_0 keeps q(x_{t-1} | x_0) for every eta: per
                     (t, t_prev) and sampler, the Monte Carlo mean coefficient <x_{t-1}, x_0> / <x_0, x_0> and std of
                     x_{t-1} - coefficient x_0, each with its 95% bootstrap interval over the draws, beside the targets
                     sqrt(alpha_bar_{t-1}) and sqrt(1 - alpha_bar_{t-1}). An identity, so the check is a tolerance:
                     every eta row within MARGINAL_TOLERANCE_SE Monte Carlo standard errors of its target; sigma-hat
                     above its target std by more than that.
    sampler_study    n captions of random one-object scenes sampled from the same x_T with every sampler of
                     SAMPLERS at each S. Per image: the noise it was left with (`quality.high_frequency_energy`);
                     per disjoint set of `set_size` images: the Frechet distance (`quality.frechet_distance` of
                     `quality.shapes_features`) to renders, as lab 2's table computes it. Reported as
                       noise        per (S, sampler): Mean over the n images (bootstrap interval)
                       gap          per S: sigma-hat's noise minus each eta's, paired per image: Mean
                       order        per S: Rate of images where eta = 0's sample is cleaner than eta = 1's, and
                                    where the paper's whole order eta = 0 < 0.2 < 0.5 < 1 holds (1/24 by chance)
                       fd_order     per S: Rate of sets where the FD ranks eta = 0 ahead of eta = 1, and where
                                    sigma-hat's FD is the largest of the five

Means have seeded percentile bootstrap intervals, rates Wilson intervals (`stats`).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from ..stats import mean, normal_quantile, rate

# (label, eta, variance) of the samplers of DDIM's Table 1 (the rows of lab 2's table, widgets.posterior_panel.SETTINGS)
SAMPLERS = (
    ("eta=0 (DDIM)", 0.0, "eta"),
    ("eta=0.2", 0.2, "eta"),
    ("eta=0.5", 0.5, "eta"),
    ("eta=1 (DDPM)", 1.0, "eta"),
    ("sigma-hat", 1.0, "sigma_hat"),
)
DDIM, DDPM, SIGMA_HAT = "eta=0 (DDIM)", "eta=1 (DDPM)", "sigma-hat"
PAPER_ORDER = ("eta=0 (DDIM)", "eta=0.2", "eta=0.5", "eta=1 (DDPM)")  # the paper's FID order at small S
PAPER_ORDER_KEY = "paper's order"
MARGINAL_TOLERANCE_SE = 4.0  # |measured - target| allowed, in Monte Carlo standard errors (two-sided p = 6e-5 each)


# ----------------------------------------------------------------------------------------------------------
# The marginals are kept: a Monte Carlo identity with its interval
# ----------------------------------------------------------------------------------------------------------


@torch.no_grad()
def marginal_study(schedule, x_0: torch.Tensor, num_steps: int = 10, etas: Sequence[float] = (0.0, 0.5, 1.0),
                   num_draws: int = 2000, seed: int = 0, pairs: Sequence[int] | None = None) -> list[dict]:
    """Draw x_t ~ q(x_t | x_0), then x_{t-1} ~ q_sigma(x_{t-1} | x_t, x_0) with the TRUE x_0
    (`posterior.sample_generalized_posterior`), `num_draws` times, and compare the draws with
    q(x_{t-1} | x_0) = N(sqrt(alpha_bar_{t-1}) x_0, (1 - alpha_bar_{t-1}) I).

    x_0: one example (C, H, W) or (1, C, H, W). For each (t, t_prev) of the S-step subsequence listed by `pairs`
    (indices; default: first, middle, last) and each eta, and for sigma-hat (the eta = 1 mean with the larger noise):
    one row with the coefficient c = mean_i <x_i, x_0> / <x_0, x_0> (a Mean over the draws) and the std
    sqrt(mean_i ||x_i - c x_0||^2 / D) (the square root of a Mean over the draws, and of its interval), their
    targets, their Monte Carlo standard errors, and `kept`: both within MARGINAL_TOLERANCE_SE standard errors of the
    targets (for sigma-hat, `too_noisy`: its std above the target by more than that; its mean is the eta = 1 mean,
    which the eta = 1 row checks: at SEED 27 sigma-hat's coefficient lay 4.0 standard errors off, by chance)."""
    from ..posterior import forward_marginal_sample, sample_generalized_posterior, sigma_from_eta, sigma_hat
    from ..schedules import timestep_pairs

    x_0 = x_0.reshape(1, -1).double()  # (1, D)
    all_pairs = timestep_pairs(schedule.timesteps(num_steps))
    chosen = [all_pairs[i] for i in (pairs if pairs is not None else (0, len(all_pairs) // 2, len(all_pairs) - 1))]
    generator = torch.Generator().manual_seed(seed)
    variants = [(f"eta={eta:g}", eta) for eta in etas] + [(SIGMA_HAT, None)]
    rows = []
    for t, t_prev in chosen:
        alpha_bar_t, alpha_bar_prev = schedule.alpha_bar(t), schedule.alpha_bar(t_prev)
        x_0_batch = x_0.expand(num_draws, -1)  # (N, D)
        x_t = forward_marginal_sample(x_0_batch, alpha_bar_t, generator=generator)  # (N, D)
        for label, eta in variants:
            noise = torch.randn(x_t.shape, generator=generator, dtype=x_t.dtype)
            if eta is None:  # sigma-hat keeps the eta = 1 mean and adds the larger noise
                x_prev = sample_generalized_posterior(
                    x_t, x_0_batch, alpha_bar_t, alpha_bar_prev, sigma_hat(alpha_bar_t, alpha_bar_prev), noise,
                    mean_sigma_t=sigma_from_eta(alpha_bar_t, alpha_bar_prev, 1.0))
            else:
                x_prev = sample_generalized_posterior(x_t, x_0_batch, alpha_bar_t, alpha_bar_prev,
                                                      sigma_from_eta(alpha_bar_t, alpha_bar_prev, eta), noise)
            rows.append(_marginal_row(f"{t} -> {t_prev}", label, x_prev, x_0[0], alpha_bar_prev, seed))
    return rows


def _marginal_row(pair: str, label: str, x_prev: torch.Tensor, x_0: torch.Tensor, alpha_bar_prev, seed: int) -> dict:
    """One row of `marginal_study` from the draws x_prev (N, D) of one sampler at one (t, t_prev)."""
    coefficients = (x_prev @ x_0 / (x_0 @ x_0)).numpy()  # (N,): each draw's projection on x_0
    coefficient = mean(coefficients, seed=seed)
    residual_power = ((x_prev - float(coefficient.mean) * x_0) ** 2).mean(dim=1).numpy()  # (N,)
    power = mean(residual_power, seed=seed)
    std = float(np.sqrt(power.mean))
    coefficient_se = float(coefficients.std(ddof=1) / np.sqrt(len(coefficients)))
    std_se = float(residual_power.std(ddof=1) / np.sqrt(len(residual_power)) / (2 * std))  # delta method
    target_coefficient, target_std = float(alpha_bar_prev.sqrt()), float((1 - alpha_bar_prev).sqrt())
    coef_z, std_z = (coefficient.mean - target_coefficient) / coefficient_se, (std - target_std) / std_se
    row = {"t -> t_prev": pair, "sampler": label,
           "mean coef": coefficient.mean, "coef 95% CI": f"{coefficient.low:.4f} to {coefficient.high:.4f}",
           "target coef": target_coefficient,
           "std": std, "std 95% CI": f"{np.sqrt(power.low):.4f} to {np.sqrt(power.high):.4f}", "target std": target_std,
           "off (SE)": f"{coef_z:+.1f}, {std_z:+.1f}"}
    if label == SIGMA_HAT:
        row["too_noisy"] = bool(std_z > MARGINAL_TOLERANCE_SE)  # its mean is eta = 1's: that row checks it
    else:
        row["kept"] = bool(abs(coef_z) < MARGINAL_TOLERANCE_SE and abs(std_z) < MARGINAL_TOLERANCE_SE)
    return row


def marginal_claims(rows: Sequence[dict]) -> list[dict]:
    """The marginal study's two claims, dict(claim, holds, evidence): every eta keeps q(x_{t-1} | x_0) within the
    Monte Carlo tolerance; sigma-hat's std exceeds the marginal's at every (t, t_prev) beyond it."""
    kept = [row for row in rows if "kept" in row]
    hat = [row for row in rows if "too_noisy" in row]
    return [
        {"claim": f"q_sigma keeps the marginal q(x_(t-1) | x_0) for every eta: each measured mean coefficient and std "
                  f"within {MARGINAL_TOLERANCE_SE:g} Monte Carlo standard errors of its target",
         "holds": all(row["kept"] for row in kept),
         "evidence": "; ".join(f"{r['sampler']} {r['t -> t_prev']}: off by {r['off (SE)']} SE" for r in kept)},
        {"claim": "sigma-hat is noisier than the marginal at every step: its std above the target by more than "
                  f"{MARGINAL_TOLERANCE_SE:g} standard errors",
         "holds": all(row["too_noisy"] for row in hat),
         "evidence": "; ".join(f"{r['t -> t_prev']}: std {r['std']:.4f} ({r['std 95% CI']}) against "
                               f"{r['target std']:.4f}" for r in hat)},
    ]


def marginal_family_error(rows: Sequence[dict]) -> float:
    """The chance that a correct sampler fails `marginal_claims`' first claim by Monte Carlo error alone (a union
    bound over the eta rows' two numbers, normal approximation)."""
    from statistics import NormalDist

    comparisons = 2 * sum("kept" in row for row in rows)
    return comparisons * 2 * (1 - NormalDist().cdf(MARGINAL_TOLERANCE_SE))


# ----------------------------------------------------------------------------------------------------------
# DDIM's Table 1: noise per image and FD per set of samples, for every sampler and S
# ----------------------------------------------------------------------------------------------------------


def sampling_timesteps(schedule, num_steps: int):
    """The schedule's own S-step subsequence; for S = T the trailing one, T - 1, ..., 0 (as lab 2's table)."""
    if int(num_steps) >= schedule.num_train_timesteps:
        return schedule.timesteps(schedule.num_train_timesteps, spacing="trailing")
    return schedule.timesteps(int(num_steps))


@torch.no_grad()
def sample_with_sampler(pipe, prompts: Sequence[str], num_steps: int, eta: float, variance: str, x_T: torch.Tensor,
                        seed: int, guidance_scale: float = 1.0) -> np.ndarray:
    """Text-to-image with `sampling.sample` at (eta, variance, S) from x_T (B, C, h, w); the sampler's own noise
    from a generator seeded with seed + 1 (as lab 2's table): uint8 (B, H, W, 3)."""
    from ..denoisers import TextConditionedDenoiser
    from ..latents import decode_latents
    from ..sampling import sample
    from ..schedules import NoiseSchedule
    from ..text import encode_prompts

    device = pipe.unet.device
    schedule = NoiseSchedule.from_scheduler_config(pipe.scheduler)
    uncond = encode_prompts(pipe, [""]).to(device) if guidance_scale != 1.0 else None
    denoiser = TextConditionedDenoiser(pipe.unet, encode_prompts(pipe, list(prompts)).to(device), uncond,
                                       guidance_scale)
    generator = torch.Generator(device=device).manual_seed(seed + 1)
    result = sample(denoiser, x_T.to(device), schedule, sampling_timesteps(schedule, num_steps), eta=float(eta),
                    variance=variance, generator=generator, progress=False)
    return decode_latents(pipe, result.sample)


def study_prompts(num_samples: int, seed: int) -> list[str]:
    """Captions of `num_samples` random one-object scenes drawn from np.random.default_rng(seed)."""
    from ..shapes import caption, random_scene

    rng = np.random.default_rng(seed)
    return [caption(random_scene(rng, num_objects=1)) for _ in range(num_samples)]


def reference_features(count: int, seed: int) -> np.ndarray:
    """Features of the renders the FD compares with: `count` random one-object scenes from default_rng(seed + 10_000)
    (the reference of lab 2's table at the same seed), (count, 16)."""
    from ..quality import feature_matrix
    from ..shapes import random_scene, render

    rng = np.random.default_rng(seed + 10_000)
    return feature_matrix([render(random_scene(rng, num_objects=1)).image for _ in range(count)])


def sampler_study(pipe, num_samples: int, steps: Sequence[int], seed: int = 0, guidance_scale: float = 1.0,
                  set_size: int = 6, reference_count: int = 128, batch_size: int = 64) -> dict:
    """Every sampler of SAMPLERS at each S of `steps` on the same `num_samples` captions and x_T (module docstring).

    Returns dict(steps, n, set_size, sets, noise {S: {sampler: Mean}}, noise_values {S: {sampler: (n,)}},
    gap {S: {eta sampler: Mean of sigma-hat minus it}}, noisiest {S: Rate of images where sigma-hat is the noisiest},
    order {S: {"DDIM cleaner than DDPM": Rate, "paper's order": Rate}}, fd {S: {sampler: [FD per set]}},
    fd_order {S: {"DDIM ahead of DDPM": Rate, "sigma-hat last": Rate}}, seed)."""
    from ..generation import initial_noise
    from ..quality import feature_matrix, frechet_distance, high_frequency_energy
    from ..shapes import analyze

    if num_samples < 2:
        raise ValueError(f"num_samples = {num_samples}: a study needs at least 2 samples")
    prompts = study_prompts(num_samples, seed)
    x_T = initial_noise(pipe, num_samples, seed)  # (n, C, h, w), shared by every sampler and S
    reference = reference_features(reference_count, seed)
    sets = [range(i, i + set_size) for i in range(0, num_samples - set_size + 1, set_size)] if set_size >= 2 else []
    noise, fd = {}, {}
    for num_steps in steps:
        noise[int(num_steps)], fd[int(num_steps)] = {}, {}
        for label, eta, variance in SAMPLERS:
            images = np.concatenate([
                sample_with_sampler(pipe, prompts[i : i + batch_size], num_steps, eta, variance,
                                    x_T[i : i + batch_size], seed, guidance_scale)
                for i in range(0, num_samples, batch_size)])  # (n, H, W, 3)
            noise[int(num_steps)][label] = np.array([high_frequency_energy(image) for image in images])  # (n,)
            if sets:
                features = feature_matrix(images, [analyze(image) for image in images])  # (n, 16)
                fd[int(num_steps)][label] = [frechet_distance(features[list(s)], reference) for s in sets]
    return summarize(noise, fd, set_size, seed)


def summarize(noise: dict, fd: dict, set_size: int, seed: int = 0) -> dict:
    """The means and rates of `sampler_study` from its per-image noise {S: {sampler: (n,)}} and per-set FD
    {S: {sampler: [per set]}} (separate, so that the claims can be checked on numbers made by hand)."""
    etas = [label for label, _, _ in SAMPLERS if label != SIGMA_HAT]
    study = {"steps": list(noise), "n": len(next(iter(next(iter(noise.values())).values()))), "set_size": set_size,
             "seed": seed, "noise_values": noise, "fd": fd, "noise": {}, "gap": {}, "noisiest": {}, "order": {},
             "fd_order": {}}
    study["sets"] = len(next(iter(next(iter(fd.values())).values()))) if fd and next(iter(fd.values())) else 0
    for s, values in noise.items():
        study["noise"][s] = {label: mean(v, seed=seed) for label, v in values.items()}
        study["gap"][s] = {label: mean(values[SIGMA_HAT] - values[label], seed=seed) for label in etas}
        study["noisiest"][s] = rate(values[SIGMA_HAT] > np.max([values[label] for label in etas], axis=0))
        paper = np.all([values[a] < values[b] for a, b in zip(PAPER_ORDER, PAPER_ORDER[1:])], axis=0)
        study["order"][s] = {"DDIM cleaner than DDPM": rate(values[DDIM] < values[DDPM]), PAPER_ORDER_KEY: rate(paper)}
        if fd.get(s):
            f = {label: np.asarray(v) for label, v in fd[s].items()}
            study["fd_order"][s] = {
                "DDIM ahead of DDPM": rate(f[DDIM] < f[DDPM]),
                "sigma-hat last": rate(f[SIGMA_HAT] > np.max([f[label] for label in etas], axis=0))}
    return study


def fmt(m, digits: int = 4) -> str:
    """A Mean printed with `digits` decimals (the noise measure is about 0.03)."""
    return f"{m.mean:.{digits}f} (n={m.n}; 95% CI {m.low:.{digits}f} to {m.high:.{digits}f})"


def noise_rows(study: dict) -> list[dict]:
    """One row per sampler: its mean noise at each S, and (sigma-hat excepted) sigma-hat's paired gap over it."""
    rows = []
    for label, _, _ in SAMPLERS:
        row = {"sampler": label}
        for s in study["steps"]:
            row[f"noise, S={s}"] = fmt(study["noise"][s][label])
        for s in study["steps"]:
            row[f"sigma-hat minus it, S={s}"] = fmt(study["gap"][s][label]) if label != SIGMA_HAT else ""
        rows.append(row)
    return rows


def order_rows(study: dict) -> list[dict]:
    """One row per S: the rates of the paper's orderings, per image (noise) and per set of samples (FD)."""
    rows = []
    for s in study["steps"]:
        row = {"S": s, "sigma-hat the noisiest (per image)": str(study["noisiest"][s]),
               "DDIM cleaner than DDPM (per image)": str(study["order"][s]["DDIM cleaner than DDPM"]),
               "paper's order of the etas (per image; 4% by chance)": str(study["order"][s][PAPER_ORDER_KEY])}
        if s in study["fd_order"]:
            row[f"FD: DDIM ahead of DDPM (per set of {study['set_size']})"] = str(
                study["fd_order"][s]["DDIM ahead of DDPM"])
            row[f"FD: sigma-hat last (per set of {study['set_size']})"] = str(study["fd_order"][s]["sigma-hat last"])
        rows.append(row)
    return rows


def eta_spread(study: dict, num_steps: int) -> float:
    """The largest |paired mean difference| between two eta samplers' noise at S, at the far end of its interval:
    how far apart the etas can be, given the sample (compare it with sigma-hat's gap)."""
    values = study["noise_values"][num_steps]
    etas = [label for label, _, _ in SAMPLERS if label != SIGMA_HAT]
    bounds = []
    for i, a in enumerate(etas):
        for b in etas[i + 1:]:
            d = mean(values[a] - values[b], seed=study["seed"])
            bounds.append(max(abs(d.low), abs(d.high)))
    return float(max(bounds))


def sampler_claims(study: dict, intervals: bool = True) -> list[dict]:
    """Lab 2's Table 1 claims at the rate level, each dict(claim, holds, evidence), at the smallest and largest S:
    (1) at the smallest S sigma-hat is noisier than every eta (each paired gap's interval above 0; QUICK: the means);
    (2) at the smallest S the etas are close, not spread as on CIFAR10: every two of them differ by less than half of
    sigma-hat's gap (far end of the difference's interval against the near end of the gap's; QUICK: the means);
    (3) sigma-hat's gap over eta = 1 shrinks with S (its interval at the largest S below the one at the smallest)."""
    s_min, s_max = study["steps"][0], study["steps"][-1]
    gaps = study["gap"][s_min]
    low = {label: (g.low if intervals else g.mean) for label, g in gaps.items()}
    spread = eta_spread(study, s_min) if intervals else max(
        abs(study["noise"][s_min][a].mean - study["noise"][s_min][b].mean) for a in PAPER_ORDER for b in PAPER_ORDER)
    claims = [
        {"claim": f"at S = {s_min} sigma-hat leaves more noise than every eta (paired per image)",
         "holds": all(value > 0 for value in low.values()),
         "evidence": f"sigma-hat minus eta=1: {fmt(gaps[DDPM])}; the noisiest of the five in {study['noisiest'][s_min]}"},
        {"claim": f"at S = {s_min} the etas are close, not spread as on CIFAR10: any two differ by less than half of "
                  "sigma-hat's gap",
         "holds": spread < min(low.values()) / 2,
         "evidence": f"largest eta difference up to {spread:.4f} against sigma-hat's gap of at least "
                     f"{min(low.values()):.4f}; DDIM cleaner than DDPM in "
                     f"{study['order'][s_min]['DDIM cleaner than DDPM']}; the paper's order in "
                     f"{study['order'][s_min][PAPER_ORDER_KEY]}"},
    ]
    if s_max != s_min:
        small, large = study["gap"][s_min][DDPM], study["gap"][s_max][DDPM]
        claims.append({"claim": f"sigma-hat's excess noise shrinks from S = {s_min} to S = {s_max}",
                       "holds": (large.high < small.low) if intervals else large.mean < small.mean,
                       "evidence": f"sigma-hat minus eta=1 at S = {s_min}: {fmt(small)}; at S = {s_max}: {fmt(large)}"})
    return claims


def example_against_study(study: dict, table: dict) -> list[str]:
    """How the lab's worked example (its Table 1 of a few samples, `widgets.posterior_panel.table1` at the same seed
    and as many samples as the study's sets: the study's first set) compares with the study's sets at the smallest
    S: one line per ordering, "this draw is one of the x% ..." when the table shows what most sets do not."""
    s = study["steps"][0]
    if s not in study["fd_order"] or s not in table["steps"]:
        return []
    column = table["steps"].index(s)
    fd = {label: values[column] for label, values in table["fd"].items()}
    lines = []
    ahead, last = study["fd_order"][s]["DDIM ahead of DDPM"], study["fd_order"][s]["sigma-hat last"]
    etas = [label for label in PAPER_ORDER]
    for holds, what, r in ((fd[DDIM] < fd[DDPM], "ranks DDIM (eta = 0) ahead of DDPM (eta = 1)", ahead),
                           (fd[SIGMA_HAT] > max(fd[label] for label in etas), "ranks sigma-hat last", last)):
        share = r if holds else rate([False] * r.successes + [True] * (r.n - r.successes))
        common = "the more common case" if share.value > 0.5 else ("a coin flip" if share.value == 0.5 else
                                                                    "the less common case")
        lines.append(f"at S = {s} the table's FD {what if holds else 'does not ' + what.replace('ranks', 'rank')}: "
                     f"this draw is one of the {share} of the study's sets of {study['set_size']} where it "
                     f"{'does' if holds else 'does not'} ({common})")
    return lines
