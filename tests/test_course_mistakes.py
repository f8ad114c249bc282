"""Each exercise's check names its most plausible mistakes: every mistake listed beside a check in labs/src
(`# mistake: <what the message says>`) is planted here as a student would write it, and its check must fail with
that message (before: eta squared, the square root of the alpha_bar ratio, sqrt(alpha_bar_{t-1}) in the direction
term, alpha_bar_{t-1} without its root, the per-step alpha in the DDIM and inversion steps, ... all got "differs
from the reference by up to X")."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from diffusion_lab.course import checks

REPO = Path(__file__).resolve().parent.parent

F_1_1 = """
def forward_marginal_sample(x_0, alpha_bar_t, noise):
    a = torch.as_tensor(alpha_bar_t, dtype=x_0.dtype)
    return {}
"""
RIGHT_1_1 = F_1_1.format("a.sqrt() * x_0 + (1 - a).sqrt() * noise")
F_1_2 = """
def strength_timesteps(timesteps, strength):
    kept = {}
    return {}
"""
RIGHT_1_2 = F_1_2.format("int(len(timesteps) * strength)", "timesteps[len(timesteps) - kept :]")
F_1_3 = """
def noise_to_strength(z_0, schedule, num_steps, strength, noise):
    left = strength_timesteps(schedule.timesteps(num_steps), strength)
    if len(left) == 0:
        return z_0, left
    return forward_marginal_sample(z_0, {}, noise), left
"""
F_2_1 = """
def sigma_from_eta(alpha_bar_t, alpha_bar_prev, eta):
    t, p = torch.as_tensor(alpha_bar_t, dtype=torch.float64), torch.as_tensor(alpha_bar_prev, dtype=torch.float64)
    return {}
"""
F_2_2 = """
def sigma_hat(alpha_bar_t, alpha_bar_prev):
    t, p = torch.as_tensor(alpha_bar_t, dtype=torch.float64), torch.as_tensor(alpha_bar_prev, dtype=torch.float64)
    return {}
"""
F_2_3 = """
def ddim_step(x_t, epsilon, alpha_bar_t, alpha_bar_prev, sigma_t, noise):
    a_t, a_prev, sigma = (torch.as_tensor(v, dtype=torch.float64) for v in (alpha_bar_t, alpha_bar_prev, sigma_t))
    x0_hat = {x0}
    direction = {direction}
    return ({prev} + direction + {noise}).to(x_t.dtype)
"""
RIGHT_2_3 = dict(x0="(x_t - (1 - a_t).sqrt() * epsilon) / a_t.sqrt()",
                 direction="(1 - a_prev - sigma**2).clamp(min=0).sqrt() * epsilon", prev="a_prev.sqrt() * x0_hat",
                 noise="sigma * noise")
F_3_1 = """
def ddim_inversion_step(z_prev, epsilon, alpha_bar_prev, alpha_bar_t):
    p, t = torch.as_tensor(alpha_bar_prev, dtype=torch.float64), torch.as_tensor(alpha_bar_t, dtype=torch.float64)
    x0_hat = {}
    return ({}).to(z_prev.dtype)
"""
RIGHT_3_1 = F_3_1.format("(z_prev - (1 - p).sqrt() * epsilon) / p.sqrt()", "t.sqrt() * x0_hat + (1 - t).sqrt() * epsilon")
F_3_2 = """
def ddim_invert(z_0, epsilon_at, schedule, timesteps):
    steps = [int(t) for t in timesteps]
    z = z_0
    for t, t_prev in {}:
        z = ddim_inversion_step(z, epsilon_at(z, {}), schedule.alpha_bar(t_prev), schedule.alpha_bar(t))
    return {}
"""
PAIRS = "list(zip(steps, steps[1:] + [-1]))"
F_3_3 = """
from diffusion_lab.posterior import generalized_posterior_step


def null_text_inner_loop(model, z_bar, target, t, t_prev, text_embeddings, uncond_embedding, guidance_scale,
                         inner_steps, learning_rate):
    with torch.no_grad():
        cond_output = model.conditional_output(z_bar, t, text_embeddings)
    embedding = uncond_embedding.detach().clone().requires_grad_(True)
    optimizer = torch.optim.Adam([embedding], lr=learning_rate)
    for _ in range({steps}):
        with torch.enable_grad():
            uncond_output = model.conditional_output(z_bar, t, embedding)
            guided = uncond_output + guidance_scale * (cond_output - uncond_output)
            z_prev = generalized_posterior_step(z_bar, guided, t, t_prev, model.schedule).prev_sample
            loss = {loss}
            (embedding.grad,) = torch.autograd.grad(loss, [embedding])
        {step}
    return embedding.detach()
"""
RIGHT_3_3 = dict(steps="inner_steps", loss="torch.nn.functional.mse_loss(z_prev, target)", step="optimizer.step()")
F_4_2_NO_SEARCH = """
def refine_alignment(source_ids, target_ids):
    mapper, i = [], 0
    for token in target_ids:
        if i < len(source_ids) and source_ids[i] == token:
            mapper.append(i)
            i += 1
        else:
            mapper.append(-1)
    return mapper
"""
F_4_2_NO_MINUS_ONE = """
def refine_alignment(source_ids, target_ids):
    mapper, i = [], 0
    for token in target_ids:
        if token in source_ids[i:]:
            i = source_ids.index(token, i)
            mapper.append(i)
            i += 1
        else:
            mapper.append(min(i, len(source_ids) - 1))
    return mapper
"""
F_4_3 = """
import torch.nn.functional as F


def local_blend_mask(word_maps, latent_size, threshold, dilation):
    upsampled = [F.interpolate(m, size=latent_size, {mode}) for m in word_maps]
    average = torch.stack(upsampled).mean(dim=0)
    {normalise}
    mask = (average > threshold).float()
    if dilation > 0 and {dilate}:
        mask = F.max_pool2d(mask, 2 * dilation + 1, stride=1, padding=dilation)
    return mask > 0
"""
RIGHT_4_3 = dict(mode="mode='bilinear', align_corners=False", dilate="True",
                 normalise="average = average / average.amax(dim=(2, 3), keepdim=True).clamp_min(1e-12)")

# (lab, check grade_id, check function, the student's cells, what the message says: a `# mistake:` line of the check)
MISTAKES = [
    ("01", "ex1_1_check", "check_forward_marginal_sample", [F_1_1.format("a * x_0 + (1 - a) * noise")],
     "the square roots are missing"),
    ("01", "ex1_1_check", "check_forward_marginal_sample", [F_1_1.format("(1 - a).sqrt() * x_0 + a.sqrt() * noise")],
     "x_0 and eps have each other's coefficients"),
    ("01", "ex1_1_check", "check_forward_marginal_sample", [F_1_1.format("a.sqrt() * x_0 + a.sqrt() * noise")],
     "the noise term is sqrt(1 - alpha_bar_t) eps"),
    ("01", "ex1_1_check", "check_forward_marginal_sample", [F_1_1.format("a.sqrt() * x_0")], "the noise is ignored"),
    ("01", "ex1_2_check", "check_strength_timesteps", [F_1_2.format("int(len(timesteps) * strength)",
                                                                      "timesteps[:kept]")],
     "keep the LAST int(S * strength) timesteps"),
    ("01", "ex1_2_check", "check_strength_timesteps", [F_1_2.format("int(len(timesteps) * strength)",
                                                                      "timesteps[len(timesteps) - kept :].flip(0)")],
     "the steps left keep the sampler's order, descending"),
    ("01", "ex1_2_check", "check_strength_timesteps", [F_1_2.format("round(len(timesteps) * strength)",
                                                                      "timesteps[len(timesteps) - kept :]")],
     "round() keeps one step too many"),
    ("01", "ex1_3_check", "check_noise_to_strength", [RIGHT_1_1, RIGHT_1_2, F_1_3.format("schedule.alpha_bar(int(left[-1]))")],
     "z_t is noised to the LAST timestep left"),
    ("01", "ex1_3_check", "check_noise_to_strength",
     [RIGHT_1_1, RIGHT_1_2, F_1_3.format("schedule.alpha_bar(int(schedule.timesteps(num_steps)[0]))")],
     "z_t is noised to the first of ALL S timesteps"),
    ("01", "ex1_3_check", "check_noise_to_strength", [RIGHT_1_1, RIGHT_1_2, F_1_3.format("1 - strength")],
     "the strength is not a noise level alpha_bar"),
    ("02", "ex2_1_check", "check_sigma_from_eta", [F_2_1.format("eta * ((1 - t) / (1 - p) * (1 - p / t)).sqrt()")],
     "alpha_bar_t and alpha_bar_{t-1} are swapped"),
    ("02", "ex2_1_check", "check_sigma_from_eta", [F_2_1.format("eta * (1 - p) / (1 - t) * (1 - t / p)")],
     "the square root is missing: sigma_t is a standard deviation"),
    ("02", "ex2_1_check", "check_sigma_from_eta", [F_2_1.format("eta**2 * ((1 - p) / (1 - t) * (1 - t / p)).sqrt()")],
     "eta is squared"),
    ("02", "ex2_1_check", "check_sigma_from_eta",
     [F_2_1.format("eta * ((1 - p) / (1 - t) * (1 - (t / p).sqrt())).sqrt()")],
     "the square root is of 1 - alpha_bar_t / alpha_bar_{t-1}, not of the ratio alone"),
    ("02", "ex2_2_check", "check_sigma_hat", [F_2_2.format("((1 - p) / (1 - t) * (1 - t / p)).sqrt()")],
     "that is sigma_t(eta=1), DDPM's posterior std"),
    ("02", "ex2_2_check", "check_sigma_hat", [F_2_2.format("1 - t / p")], "the square root is missing"),
    ("02", "ex2_2_check", "check_sigma_hat", [F_2_2.format("(1 - p / t).sqrt()")], "the ratio is upside down"),
    ("02", "ex2_2_check", "check_sigma_hat", [F_2_2.format("1 - (t / p).sqrt()")],
     "the square root is of the whole 1 - alpha_bar_t / alpha_bar_{t-1}, not of the ratio alone"),
    ("02", "ex2_3_check", "check_ddim_step", [F_2_3.format(**{**RIGHT_2_3, "direction": "a_prev.sqrt() * epsilon"})],
     "the direction pointing to x_t is sqrt(1 - alpha_bar_{t-1} - sigma_t^2) eps, not sqrt(alpha_bar_{t-1}) eps"),
    ("02", "ex2_3_check", "check_ddim_step", [F_2_3.format(**{**RIGHT_2_3, "prev": "a_prev * x0_hat"})],
     "predicted x_0 is scaled by sqrt(alpha_bar_{t-1}), not by alpha_bar_{t-1}"),
    ("02", "ex2_3_check", "check_ddim_step",
     [F_2_3.format(**{**RIGHT_2_3, "x0": "(x_t - (1 - a_t / a_prev).sqrt() * epsilon) / (a_t / a_prev).sqrt()"})],
     "predicted x_0 uses the per-step alpha_t"),
    ("02", "ex2_3_check", "check_ddim_step", [F_2_3.format(**{**RIGHT_2_3, "noise": "0"})],
     "the noise term sigma_t * noise is missing"),
    ("03", "ex3_1_check", "check_ddim_inversion_step",
     [F_3_1.format("(z_prev - (1 - t).sqrt() * epsilon) / t.sqrt()", "p.sqrt() * x0_hat + (1 - p).sqrt() * epsilon")],
     "alpha_bar_prev and alpha_bar_t are swapped"),
    ("03", "ex3_1_check", "check_ddim_inversion_step",
     [F_3_1.format("None", "(t / p).sqrt() * z_prev + (1 - t / p).sqrt() * epsilon")],
     "that is a forward-process step with the per-step alpha_t"),
    ("03", "ex3_1_check", "check_ddim_inversion_step",
     [F_3_1.format("(z_prev - (1 - p).sqrt() * epsilon) / p.sqrt()", "t * x0_hat + (1 - t).sqrt() * epsilon")],
     "x0_hat is scaled by sqrt(alpha_bar_t), not by alpha_bar_t"),
    ("03", "ex3_1_check", "check_ddim_inversion_step", [F_3_1.format("None", "z_prev")], "that is z_prev again"),
    ("03", "ex3_2_check", "check_ddim_invert", [RIGHT_3_1, F_3_2.format(PAIRS, "t", "z")],
     "the loop runs in the sampling order"),
    ("03", "ex3_2_check", "check_ddim_invert", [RIGHT_3_1, F_3_2.format(f"reversed({PAIRS})", "t_prev", "z")],
     "eps_hat is evaluated at t_prev"),
    ("03", "ex3_2_check", "check_ddim_invert", [RIGHT_3_1, F_3_2.format(f"{PAIRS}[::-1][:-1]", "t", "z")],
     "the loop stops one step short"),
    ("03", "ex3_2_check", "check_ddim_invert", [RIGHT_3_1, F_3_2.format(f"reversed({PAIRS})", "t", "z_0")],
     "that is z_0 itself"),
    ("03", "ex3_3_check", "check_null_text_inner_loop", [F_3_3.format(**{**RIGHT_3_3, "step": "pass"})],
     "the embedding did not change"),
    ("03", "ex3_3_check", "check_null_text_inner_loop",
     [F_3_3.format(**{**RIGHT_3_3, "loss": "-torch.nn.functional.mse_loss(z_prev, target)"})],
     "the embedding moved uphill"),
    ("03", "ex3_3_check", "check_null_text_inner_loop", [F_3_3.format(**{**RIGHT_3_3, "steps": "inner_steps - 1"})],
     "your loop took"),
    ("04", "ex4_1_check", "check_replace_cross_attention",
     ["def replace_cross_attention(source, mapper):\n    return torch.einsum('hqi,ij->hqj', source, mapper[0])\n"],
     "one set of maps per target"),
    ("04", "ex4_1_check", "check_replace_cross_attention",
     ["def replace_cross_attention(source, mapper):\n    return source[None].expand(len(mapper), -1, -1, -1)\n"],
     "the mapper is ignored"),
    ("04", "ex4_1_check", "check_replace_cross_attention",
     ["def replace_cross_attention(source, mapper):\n    return torch.einsum('hqi,kji->khqj', source, mapper)\n"],
     "the mapper is applied transposed"),
    ("04", "ex4_2_check", "check_refine_alignment",
     ["def refine_alignment(source_ids, target_ids):\n    return list(range(len(target_ids)))\n"],
     "you matched tokens by position"),
    ("04", "ex4_2_check", "check_refine_alignment", [F_4_2_NO_MINUS_ONE], "a target token the source lacks gets -1"),
    ("04", "ex4_2_check", "check_refine_alignment", [F_4_2_NO_SEARCH], "a token the source has is marked -1"),
    ("04", "ex4_3_check", "check_local_blend_mask", [F_4_3.format(**{**RIGHT_4_3, "normalise": "pass"})],
     "each prompt's averaged map must be divided by its maximum"),
    ("04", "ex4_3_check", "check_local_blend_mask", [F_4_3.format(**{**RIGHT_4_3, "dilate": "False"})],
     "the dilation is not applied"),
    ("04", "ex4_3_check", "check_local_blend_mask", [F_4_3.format(**{**RIGHT_4_3, "mode": "mode='nearest'"})],
     "upsample with mode='bilinear'"),
]


def _listed_mistakes() -> dict[str, list[str]]:
    """grade_id -> the `# mistake:` lines of its check cell, from labs/src."""
    from diffusion_lab.course.build import grade_id, is_grade_cell, notebook_from_source

    listed = {}
    for source in sorted((REPO / "labs" / "src").glob("[0-9][0-9]_*.py")):
        for cell in notebook_from_source(source).cells:
            if is_grade_cell(cell):
                listed[grade_id(cell)] = re.findall(r"^# mistake: (.+)$", cell.source, flags=re.M)
    return listed


def test_every_check_lists_three_or_four_mistakes_and_each_is_planted_here():
    listed = _listed_mistakes()
    for gid, mistakes in listed.items():
        assert 3 <= len(mistakes) <= 4, (gid, mistakes)
        assert sorted(mistakes) == sorted(m[4] for m in MISTAKES if m[1] == gid), gid


@pytest.fixture(scope="module")
def lab_inputs():
    from diffusion_lab.widgets import common

    pipe = common.get_pipeline("shapes-tiny", device="cpu")
    image, prompt = common.source_scene(pipe, 11)[:2]
    return {"pipe": pipe, "image": image, "prompt": prompt}


def _arguments(check: str, lab_inputs) -> tuple:
    if check == "check_ddim_invert":
        return lab_inputs["pipe"], lab_inputs["image"], lab_inputs["prompt"], 5
    if check in ("check_null_text_inner_loop", "check_local_blend_mask"):
        return (lab_inputs["pipe"],)
    if check in ("check_replace_cross_attention", "check_refine_alignment"):
        return (lab_inputs["pipe"].tokenizer,)
    return ()


@pytest.mark.parametrize("lab, gid, check, cells, message", MISTAKES, ids=[f"{m[1]}:{m[4][:40]}" for m in MISTAKES])
def test_a_planted_mistake_gets_its_message(lab, gid, check, cells, message, lab_inputs):
    namespace = {"__name__": "__main__", "torch": torch}
    for cell in cells:
        exec(compile(cell, "<cell>", "exec"), namespace)
    function = namespace[[line.split("(")[0][4:] for line in cells[-1].splitlines() if line.startswith("def ")][0]]
    needs_model = check in ("check_ddim_invert", "check_null_text_inner_loop", "check_local_blend_mask",
                            "check_replace_cross_attention", "check_refine_alignment")
    arguments = _arguments(check, lab_inputs) if needs_model else ()
    with pytest.raises(checks.ExerciseFailed) as failure:
        getattr(checks, check)(function, *arguments)
    assert message in str(failure.value), str(failure.value)
    assert "differs from the reference by up to" not in str(failure.value)


def test_an_alias_of_the_reference_scores_0_with_a_message():
    """`sigma_hat = posterior.sigma_hat` (an alias), a lambda or functools.partial around it, or a call inside the
    student's own function: each is the library's answer, not the student's (it scored full points)."""
    import functools

    from diffusion_lab import posterior
    from diffusion_lab.inversion import ddim_inversion_step

    cases = [
        (checks.check_sigma_hat, posterior.sigma_hat, "diffusion_lab.posterior.sigma_hat"),
        (checks.check_sigma_from_eta, functools.partial(posterior.sigma_from_eta), "posterior.sigma_from_eta"),
        (checks.check_forward_marginal_sample, lambda x_0, a, noise: posterior.forward_marginal_sample(x_0, a, noise),
         "posterior.forward_marginal_sample"),
        (checks.check_ddim_inversion_step, ddim_inversion_step, "inversion.step.ddim_inversion_step"),
    ]
    for check, student, named in cases:
        with pytest.raises(checks.ExerciseFailed, match="calls the library's reference") as failure:
            check(student)
        assert named in str(failure.value) and "scores 0" in str(failure.value)
