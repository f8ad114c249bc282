"""The labs' claims hold as rates, not only for their default example (issue 31): each lab runs headless in QUICK mode
with non-default seeds and scenes, and every check cell passes; the studies behind the claims are deterministic and
their checks can fail; `pipelines/claims.py --quick` prints every claim with its interval."""

import json

import numpy as np
import pytest

from diffusion_lab.stats import rate
from diffusion_lab.studies import naive_noising as tradeoff_study

# (lab, parameters): seeds / scenes other than the defaults (lab 1: SCENE_SEED 3, SEED 0; lab 3: SEED 11; lab 4:
# SEED 0). Lab 3's
# SEED 0 sample holds scene 2, where DDIM inversion at S = 20 lands in another image (the failing case).
NON_DEFAULT_RUNS = [
    ("01", {"SCENE_SEED": 5, "SEED": 7}),
    ("01", {"SCENE_SEED": 42, "SEED": 1}),
    ("02", {"SEED": 3}),
    ("02", {"SEED": 42}),
    ("03", {"SEED": 0}),
    ("04", {"SEED": 2}),  # the object stays without P2P; refine's source is already green
]  # labs 3 and 4 at SEED 42 passed too (issue 31); one other seed each keeps CI under 30 minutes


@pytest.mark.parametrize("lab, parameters", NON_DEFAULT_RUNS, ids=lambda v: str(v))
def test_a_lab_passes_its_checks_with_other_seeds_and_scenes(lab, parameters, tmp_path, import_script, monkeypatch):
    monkeypatch.setenv("DIFFUSION_LAB_QUICK", "1")
    run_labs = import_script("pipelines/run_labs.py")
    argv = ["--quick", "--labs", lab, "--out", str(tmp_path)]
    for name, value in parameters.items():
        argv += ["-p", name, str(value)]
    assert run_labs.main(argv) == 0  # papermill raises PapermillExecutionError when a check cell fails
    folder = next(tmp_path.glob(f"{lab}_*"))
    metrics = json.loads((folder / "metrics.json").read_text())
    assert metrics["quick"] is True


def _study(edit_done, layout_kept):
    """A hand-made lab 1 study: rows of per-scene flags, one row per strength (0.1, 1.0)."""
    flags = {"edit_done": edit_done, "layout_kept": layout_kept,
             "both": [[e and k for e, k in zip(er, kr)] for er, kr in zip(edit_done, layout_kept)]}
    return {"strengths": [0.1, 1.0], "flags": flags, "n": len(edit_done[0]),
            "rates": {kind: [rate(row) for row in rows] for kind, rows in flags.items()}}


def test_the_tradeoff_checks_can_fail_and_say_where_an_example_departs():
    n = 16
    clear = _study([[False] * n, [True] * n], [[True] * n, [False] * 10 + [True] * 6])
    assert all(c["holds"] for c in tradeoff_study.tradeoff_claims(clear))
    reversed_ = _study([[True] * n, [False] * n], [[False] * n, [True] * n])
    assert not any(c["holds"] for c in tradeoff_study.tradeoff_claims(reversed_))
    close = _study([[False] * 6 + [True] * 10, [True] * 12 + [False] * 4], [[True] * n, [True] * n])
    claims = tradeoff_study.tradeoff_claims(close)
    assert not claims[0]["holds"]  # 62% vs 75%: the intervals overlap
    assert tradeoff_study.tradeoff_claims(close, intervals=False)[0]["holds"]  # QUICK: the direction only
    lines = tradeoff_study.example_against_study(clear, [{"strength": 0.1, "edit_success": 0.0, "layout_kept": 1.0},
                                                         {"strength": 1.0, "edit_success": 1.0, "layout_kept": 0.5}])
    assert len(lines) == 1 and "this draw is one of the 38% (6/16" in lines[0]
    assert tradeoff_study.sweet_spot(clear) is None


def test_the_tradeoff_study_is_deterministic():
    from diffusion_lab.models import load_pipeline

    pipe = load_pipeline("shapes-tiny")
    args = dict(obj={"shape": "triangle", "colour": "blue", "size": "large"}, background="gray", edit_kind="shape",
                edit_value="square", strengths=[0.1, 1.0], scene_seeds=[0, 1, 2], num_steps=5, seed=3)
    first, second = tradeoff_study.strength_tradeoff(pipe, **args), tradeoff_study.strength_tradeoff(pipe, **args)
    assert first["flags"] == second["flags"] and first["n"] == 3 and first["scene_seeds"] == [0, 1, 2]


def test_claims_script_prints_every_claim_with_its_interval(tmp_path, import_script, capsys):
    claims = import_script("pipelines/claims.py")
    code = claims.main(["--quick", "--n", "2", "--out", str(tmp_path)])
    printed = capsys.readouterr().out
    assert "95% CI" in printed and "Lab 1" in printed
    results = json.loads((tmp_path / "claims.json").read_text())
    assert results["n"] == 2 and set(results["studies"]) == set(claims.STUDIES)
    assert (tmp_path / "claims.md").read_text().startswith("# The labs' claims, measured (N = 2")
    assert code in (0, 1)  # at n = 2 a claim may not separate; the test above checks that checks can fail


def test_the_wrong_basin_search_finds_the_labs_own_scenes():
    """Lab 3's search renders the lab's scenes (one object each): the scene it names is the one that missed (it
    searched scenes of one to three objects and the lab then showed another image of the same seed)."""
    from diffusion_lab.latents import image_size
    from diffusion_lab.models import load_pipeline
    from diffusion_lab.studies import inversion, scene_draws

    pipe = load_pipeline("shapes-tiny")
    found = inversion.find_wrong_basin(pipe, image_size(pipe), 29, 20, max_scenes=2, batch=2)
    assert found == {"scene_seed": 30, "searched": 2, "gap": pytest.approx(found["gap"])} and found["gap"] > 5
    draw = scene_draws(image_size(pipe), [30])
    alone = inversion.vae_psnr(pipe, draw) - inversion.reconstruction_psnr(pipe, draw, "ddim", 20, 1.0, [1.0])[1.0]
    assert alone[0] == pytest.approx(found["gap"], abs=0.5)


@pytest.mark.parametrize("lab", ["01_naive_noising", "02_generalized_posterior", "03_ddim_inversion",
                                 "04_prompt_to_prompt"])
def test_papermill_sees_every_parameter(lab):
    """Every name assigned in a lab's parameters cell is one papermill can override (`-p NAME VALUE`): papermill
    skips a line whose comment holds '=' (lab 3's STEPS_SWEEP and BASIN_STEPS were invisible to it)."""
    import ast

    import nbformat
    import papermill

    from conftest import REPO

    notebook = nbformat.read(REPO / "labs" / f"{lab}.ipynb", as_version=4)
    cell = next(c for c in notebook.cells if "parameters" in c.metadata.get("tags", []))
    assigned = {target.id for node in ast.parse(cell.source).body if isinstance(node, ast.Assign)
                for target in node.targets}
    assert assigned == set(papermill.inspect_notebook(str(REPO / "labs" / f"{lab}.ipynb")))


# ------------------------------------------------------------------------------------------------------------
# Lab 2 (studies/posterior.py) and lab 3's method table (studies/inversion.py): the checks can fail
# ------------------------------------------------------------------------------------------------------------


def _sampler_study(gap_small, gap_large, eta_step, n=24, seed=0):
    """A hand-made lab 2 study: per-image noise of the five samplers at S = 10 and 50; the etas rise by `eta_step`
    each, sigma-hat lies `gap` above eta = 1 (plus per-image scatter); FD per set mirrors the noise."""
    from diffusion_lab.studies import posterior

    rng = np.random.default_rng(seed)
    noise = {}
    for s, gap in ((10, gap_small), (50, gap_large)):
        base = 0.03 + 0.005 * rng.standard_normal(n)
        values = {label: base + i * eta_step + 0.0005 * rng.standard_normal(n)
                  for i, label in enumerate(posterior.PAPER_ORDER)}
        values[posterior.SIGMA_HAT] = values[posterior.DDPM] + gap + 0.001 * rng.standard_normal(n)
        noise[s] = values
    fd = {s: {label: list(v.reshape(4, -1).mean(axis=1)) for label, v in values.items()} for s, values in noise.items()}
    return posterior.summarize(noise, fd, set_size=n // 4, seed=seed)


def test_the_sampler_claims_can_fail():
    from diffusion_lab.studies import posterior

    shapes_world = posterior.sampler_claims(_sampler_study(0.015, 0.001, 0.0))
    assert [c["holds"] for c in shapes_world] == [True, True, True]
    cifar_like = posterior.sampler_claims(_sampler_study(0.015, 0.001, 0.004))  # the etas spread as on CIFAR10
    assert [c["holds"] for c in cifar_like] == [True, False, True]
    no_sigma_hat = posterior.sampler_claims(_sampler_study(-0.002, 0.0, 0.0))  # sigma-hat as clean as the etas
    assert not no_sigma_hat[0]["holds"] and not no_sigma_hat[2]["holds"]
    study = _sampler_study(0.015, 0.001, 0.0)
    assert study["fd_order"][10]["sigma-hat last"].successes == 4 and study["sets"] == 4
    table = {"steps": [10], "fd": {label: [0.1] for label in study["noise"][10]}}
    table["fd"][posterior.SIGMA_HAT] = [0.05]  # this draw ranks sigma-hat first: one of the 0% of the sets
    lines = posterior.example_against_study(study, table)
    assert any("does not rank sigma-hat last: this draw is one of the 0% (0/4" in line for line in lines)


def test_the_marginal_check_catches_a_sampler_off_the_marginal():
    """The marginal check passes for q_sigma at any seed and fails when the draws' std is 2% off the marginal's."""
    import torch

    from diffusion_lab.studies import posterior

    x_0 = torch.linspace(-1, 1, 48, dtype=torch.float64)
    alpha_bar = torch.tensor(0.5, dtype=torch.float64)
    generator = torch.Generator().manual_seed(0)
    noise = torch.randn(2000, 48, generator=generator, dtype=torch.float64)
    right = alpha_bar.sqrt() * x_0 + (1 - alpha_bar).sqrt() * noise
    assert posterior._marginal_row("t", "eta=1", right, x_0, alpha_bar, 0)["kept"]
    assert not posterior._marginal_row("t", "eta=1", right * 1.02, x_0, alpha_bar, 0)["kept"]
    rows = [posterior._marginal_row("t", label, draws, x_0, alpha_bar, 0)
            for label, draws in (("eta=0", right), (posterior.SIGMA_HAT, right))]
    assert [c["holds"] for c in posterior.marginal_claims(rows)] == [True, False]  # sigma-hat must be too noisy
    shifted = right + 0.02 * x_0  # sigma-hat's mean coefficient off by chance (SEED 27): its std claim still holds
    assert posterior._marginal_row("t", posterior.SIGMA_HAT, shifted * 1.05, x_0, alpha_bar, 0)["too_noisy"]


def _method_study(gaps: dict, n=8):
    """A hand-made lab 3 method study: per method its gap to a 33 dB VAE round trip, the same on every scene but a
    +-0.2 dB scatter (+-0.01 dB for a gap under 0.1 dB)."""
    from diffusion_lab.studies import inversion

    vae = np.full(n, 33.0)
    methods = {}
    for name, gap in gaps.items():
        psnr = vae - gap + (0.2 if gap >= 0.1 else 0.01) * np.resize([1.0, -1.0], n)
        methods[name] = {"n": n, "w": 7.5, "psnr": psnr, "gap": inversion.mean(vae - psnr, "dB"),
                         "keeps": rate(vae - psnr < inversion.KEEPS_DB)}
    return {"num_steps": 20, "scene_seeds": list(range(n)), "vae": vae, "methods": methods}


def test_the_method_claims_can_fail():
    from diffusion_lab.studies import inversion

    usual = {"DDIM inverted at w=1": 9.0, "DDIM inverted at w": 10.0, "null-text": 1.0, "negative-prompt": 1.2,
             "edit-friendly": 0.0}
    claims = inversion.method_claims(_method_study(usual), keep_rates=True)
    assert all(c["holds"] for c in claims) and len(claims) == 8
    no_failure = inversion.method_claims(_method_study({**usual, "DDIM inverted at w=1": 1.0}))
    assert [c["holds"] for c in no_failure] == [False, True, False, False, True]  # no repair without a failure
    inexact = inversion.method_claims(_method_study({**usual, "edit-friendly": 0.3}))
    assert not inexact[-1]["holds"]
    wrong_basins = _method_study({"DDIM (w=1)": 7.0, "fixed-point (w=1)": 0.1, "null-text (w=7.5)": 6.0}, n=2)
    fixes = {c["claim"].split(" brings")[0]: c["holds"] for c in inversion.basin_fix_claims(wrong_basins)}
    assert fixes == {"fixed-point (w=1)": True, "null-text (w=7.5)": False}


def test_the_sampler_study_samples_as_lab_2s_table():
    """studies.posterior (layers 0-1 only) keeps its own copy of the table's samplers and sampling call: the same
    settings, and the same images as widgets.posterior_panel.sample_images for the same prompts, x_T and seed."""
    from diffusion_lab.generation import initial_noise
    from diffusion_lab.models import load_pipeline
    from diffusion_lab.studies import posterior
    from diffusion_lab.widgets import posterior_panel

    assert posterior.SAMPLERS == posterior_panel.SETTINGS
    pipe = load_pipeline("shapes-tiny")
    prompts = posterior.study_prompts(2, seed=5)
    x_T = initial_noise(pipe, 2, 5)
    for _, eta, variance in posterior.SAMPLERS[3:]:
        ours = posterior.sample_with_sampler(pipe, prompts, 3, eta, variance, x_T, 5)
        table = posterior_panel.sample_images(pipe, prompts, 3, eta, variance, 1.0, 5, x_T=x_T)
        assert np.array_equal(ours, table)
