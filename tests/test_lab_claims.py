"""The labs' claims hold as rates, not only for their default example (issue 31): each lab runs headless in QUICK mode
with non-default seeds and scenes, and every check cell passes; the studies behind the claims are deterministic and
their checks can fail; `pipelines/claims.py --quick` prints every claim with its interval."""

import json

import pytest

from diffusion_lab.stats import rate
from diffusion_lab.studies import naive_noising as tradeoff_study

# (lab, parameters): seeds / scenes other than the defaults (lab 1: SCENE_SEED 3, SEED 0; lab 3: SEED 11; lab 4:
# SEED 0). Lab 3's
# SEED 0 sample holds scene 2, where DDIM inversion at S = 20 lands in another image (the failing case).
NON_DEFAULT_RUNS = [
    ("01", {"SCENE_SEED": 5, "SEED": 7}),
    ("01", {"SCENE_SEED": 42, "SEED": 1}),
    ("03", {"SEED": 0}),
    ("03", {"SEED": 42}),
    ("04", {"SEED": 2}),  # the object stays without P2P; refine's source is already green
    ("04", {"SEED": 42}),
]


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
