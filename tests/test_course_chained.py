"""Chained exercises judge their own exercise only (a wrong earlier function neither costs a second point nor gets
blamed on the later exercise), and run_labs refuses a -p name that no selected lab has."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import torch

from diffusion_lab.course import checks

REPO = Path(__file__).resolve().parent.parent

RIGHT_1_1 = """
def forward_marginal_sample(x_0, alpha_bar_t, noise):
    alpha_bar_t = torch.as_tensor(alpha_bar_t, dtype=x_0.dtype)
    return alpha_bar_t.sqrt() * x_0 + (1 - alpha_bar_t).sqrt() * noise
"""
NO_ROOTS_1_1 = """
def forward_marginal_sample(x_0, alpha_bar_t, noise):
    alpha_bar_t = torch.as_tensor(alpha_bar_t, dtype=x_0.dtype)
    return alpha_bar_t * x_0 + (1 - alpha_bar_t) * noise
"""
RIGHT_1_2 = """
def strength_timesteps(timesteps, strength):
    kept = int(len(timesteps) * strength)
    return timesteps[len(timesteps) - kept :]
"""
FIRST_INSTEAD_OF_LAST_1_2 = """
def strength_timesteps(timesteps, strength):
    return timesteps[: int(len(timesteps) * strength)]
"""
RIGHT_1_3 = """
def noise_to_strength(z_0, schedule, num_steps, strength, noise):
    left = strength_timesteps(schedule.timesteps(num_steps), strength)
    if len(left) == 0:
        return z_0, left
    return forward_marginal_sample(z_0, schedule.alpha_bar(int(left[0])), noise), left
"""
LAST_TIMESTEP_1_3 = RIGHT_1_3.replace("int(left[0])", "int(left[-1])")


def _notebook_namespace(*cells: str) -> dict:
    """The globals of a notebook whose cells are `cells` (the student's functions live there, as in a kernel)."""
    namespace = {"__name__": "__main__", "torch": torch}
    for cell in cells:
        exec(compile(cell, "<cell>", "exec"), namespace)
    return namespace


def test_a_wrong_exercise_1_1_does_not_fail_exercise_1_3(capsys):
    namespace = _notebook_namespace(NO_ROOTS_1_1, RIGHT_1_2, RIGHT_1_3)
    with pytest.raises(checks.ExerciseFailed, match="square roots are missing"):
        checks.check_forward_marginal_sample(namespace["forward_marginal_sample"])
    students_own = namespace["forward_marginal_sample"]
    assert checks.check_noise_to_strength(namespace["noise_to_strength"]) is None
    printed = capsys.readouterr().out
    assert "passed" in printed and "exercise 1.1 (forward_marginal_sample) is not right yet" in printed
    assert "exercise 1.2" not in printed  # strength_timesteps is right: the student's own was used
    assert namespace["forward_marginal_sample"] is students_own  # the notebook's name is restored


def test_a_wrong_exercise_1_2_or_a_missing_one_does_not_fail_exercise_1_3(capsys):
    namespace = _notebook_namespace(RIGHT_1_1, FIRST_INSTEAD_OF_LAST_1_2, RIGHT_1_3)
    assert checks.check_noise_to_strength(namespace["noise_to_strength"]) is None
    assert "exercise 1.2 (strength_timesteps) is not right yet" in capsys.readouterr().out
    namespace = _notebook_namespace(RIGHT_1_1, RIGHT_1_3)  # the exercise 1.2 cell never ran (or failed to define it)
    assert checks.check_noise_to_strength(namespace["noise_to_strength"]) is None
    assert "exercise 1.2 (strength_timesteps) is not defined" in capsys.readouterr().out
    assert "strength_timesteps" not in namespace


def test_a_wrong_exercise_1_3_is_still_blamed_on_exercise_1_3():
    namespace = _notebook_namespace(NO_ROOTS_1_1, RIGHT_1_2, LAST_TIMESTEP_1_3)
    with pytest.raises(checks.ExerciseFailed, match="noised to the LAST timestep") as failure:
        checks.check_noise_to_strength(namespace["noise_to_strength"])
    assert "exercise 1.1 (forward_marginal_sample) is not right yet" in str(failure.value)  # said as a note
    # all right: no note
    namespace = _notebook_namespace(RIGHT_1_1, RIGHT_1_2, LAST_TIMESTEP_1_3)
    with pytest.raises(checks.ExerciseFailed, match="LAST") as failure:
        checks.check_noise_to_strength(namespace["noise_to_strength"])
    assert "note" not in str(failure.value)


def test_the_stand_ins_pass_their_own_exercises_checks():
    """The stand-ins compute the right thing (they call the library, which a student's solution may not)."""
    for earlier in (e for chain in checks.EARLIER_EXERCISES.values() for e in chain.values()):
        with checks.reference_calls_allowed():
            assert earlier.check(earlier.reference) is None
        with pytest.raises(checks.ExerciseFailed, match="calls the library's reference"):
            earlier.check(earlier.reference)


RIGHT_3_2 = """
def ddim_invert(z_0, epsilon_at, schedule, timesteps):
    steps = [int(t) for t in timesteps]
    z = z_0
    for t, t_prev in reversed(list(zip(steps, steps[1:] + [-1]))):
        z = ddim_inversion_step(z, epsilon_at(z, t), schedule.alpha_bar(t_prev), schedule.alpha_bar(t))
    return z
"""
IDENTITY_3_1 = """
def ddim_inversion_step(z_prev, epsilon, alpha_bar_prev, alpha_bar_t):
    return z_prev
"""


def test_a_wrong_exercise_3_1_does_not_fail_exercise_3_2(capsys):
    """Exercise 3.2 (the inversion loop) calls exercise 3.1's step: a wrong step costs 3.1's point only (it cost
    both: 3.2 had no code of its own and said "fix 3.1 first"); the note names exercise 3.1."""
    from diffusion_lab.widgets import common

    pipe = common.get_pipeline("shapes-tiny", device="cpu")
    image, prompt = common.source_scene(pipe, 11)[:2]  # lab 3's first test image
    namespace = _notebook_namespace(IDENTITY_3_1, RIGHT_3_2)
    with pytest.raises(checks.ExerciseFailed, match="z_prev again"):
        checks.check_ddim_inversion_step(namespace["ddim_inversion_step"])
    assert checks.check_ddim_invert(namespace["ddim_invert"], pipe, image, prompt, num_steps=5) is None
    assert "exercise 3.1 (ddim_inversion_step) is not right yet" in capsys.readouterr().out


def _exercise(grade_id: str) -> str:
    """ex1_3_noise_to_strength, ex1_3_check -> ex1_3."""
    return "_".join(grade_id.split("_")[:2])


@pytest.mark.parametrize("name", sorted(p.stem for p in (REPO / "labs" / "src").glob("[0-9][0-9]_*.py")))
def test_every_chain_in_the_labs_is_known_to_the_checks(name):
    """Every call of a later exercise's solution to an earlier exercise's function is in EARLIER_EXERCISES (so its
    check stands the reference in), and every check cell that is given an earlier exercise's function is in
    CHECKS_OF_EARLIER_EXERCISES (so it says "fix it first"): a new chained exercise cannot slip in unnoticed."""
    from diffusion_lab.course.build import grade_id, is_grade_cell, is_solution_cell, notebook_from_source

    nb = notebook_from_source(REPO / "labs" / "src" / f"{name}.py")
    defined: dict[str, str] = {}  # function -> exercise
    for cell in nb.cells:
        if cell.cell_type != "code" or not grade_id(cell):
            continue
        tree = ast.parse(cell.source)
        exercise = _exercise(grade_id(cell))
        used = {n.id for n in ast.walk(tree) if isinstance(n, ast.Name)}
        earlier = {f for f in used if f in defined and defined[f] != exercise}
        if is_solution_cell(cell):
            functions = [n.name for n in tree.body if isinstance(n, ast.FunctionDef)]
            for function in functions:
                body = {n.id for n in ast.walk(next(f for f in tree.body if getattr(f, "name", None) == function))
                        if isinstance(n, ast.Name)}
                chained = {f for f in body if f in defined and defined[f] != exercise}
                assert chained <= set(checks.EARLIER_EXERCISES.get(function, {})), (name, function, chained)
            defined.update({f: exercise for f in functions})
        elif is_grade_cell(cell) and earlier:
            calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)]
            for call in calls:
                given = {a.id for a in call.args if isinstance(a, ast.Name)} & earlier
                if given:
                    assert checks.CHECKS_OF_EARLIER_EXERCISES.get(call.func.attr) in given, (name, call.func.attr)


# ---------------------------------------------------------------------------------------------------------------
# run_labs: -p names
# ---------------------------------------------------------------------------------------------------------------


@pytest.fixture
def run_labs(import_script, monkeypatch):
    module = import_script("pipelines/run_labs.py")

    def must_not_run(*args, **kwargs):
        raise AssertionError("a lab was executed")

    monkeypatch.setattr(module, "execute", must_not_run)
    return module


def test_run_labs_refuses_a_misspelt_parameter_before_running(run_labs, capsys):
    with pytest.raises(SystemExit) as exit_:
        run_labs.main(["-p", "SEEED", "3", "--out", "/nonexistent/never-written"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2
    assert "-p SEEED: not a parameter" in err and "did you mean SEED?" in err
    assert not Path("/nonexistent/never-written").exists()


def test_run_labs_parameter_messages(run_labs, capsys):
    with pytest.raises(SystemExit) as exit_:
        run_labs.main(["-p", "SEEED", "3", "-p", "STEPS", "4", "--labs", "01", "04"])
    err = capsys.readouterr().err
    assert exit_.value.code == 2
    assert "-p SEEED: not a parameter of 01_naive_noising, 04_prompt_to_prompt; did you mean SEED?" in err
    assert "STEPS" not in err.split("error:")[1]  # a known name is not reported
    # a parameter of a lab that is not selected: say which lab has it
    errors = run_labs.check_parameter_names(["FULL_TABLE"], ["01_naive_noising"])
    assert errors and "02_generalized_posterior only (select it with --labs)" in errors[0]
    # lower case: suggest the name
    assert "did you mean SEED?" in run_labs.check_parameter_names(["seed"], ["03_ddim_inversion"])[0]


def test_run_labs_allows_a_parameter_of_some_selected_labs_with_one_note(run_labs, capsys):
    assert run_labs.check_parameter_names(["FULL_TABLE", "SEED", "FULL_TABLE"],
                                          ["01_naive_noising", "02_generalized_posterior"]) == []
    err = capsys.readouterr().err
    assert err.count("note:") == 1 and "FULL_TABLE is a parameter of 02_generalized_posterior only" in err


def test_run_labs_reads_the_labs_parameters_cells(run_labs):
    for lab in run_labs.LABS:
        assert {"SEED", "MODEL", "INTERACTIVE", "OUT_DIR"} <= run_labs.lab_parameters(lab), lab
    assert "FULL_TABLE" in run_labs.lab_parameters("02_generalized_posterior")
