"""The course material: lab sources (labs/src, jupytext) against the committed notebooks, exercises, grading."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import nbformat
import torch
import pytest

REPO = Path(__file__).resolve().parent.parent
LABS = REPO / "labs"


def _build_labs():
    spec = importlib.util.spec_from_file_location("build_labs", LABS / "build_labs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


build_labs = _build_labs()


def test_every_lab_has_a_source_and_a_notebook():
    names = build_labs.lab_names()
    assert names == ["01_naive_noising", "02_generalized_posterior", "03_ddim_inversion", "04_prompt_to_prompt"]
    assert sorted(p.stem for p in LABS.glob("0*.ipynb")) == names


@pytest.mark.parametrize("name", build_labs.lab_names())
def test_notebook_matches_its_source(name):
    """Every committed .ipynb has exactly the cells (type, text, tags, nbgrader metadata) of labs/src/<name>.py:
    after editing a source, run `python labs/build_labs.py` (then `python pipelines/run_labs.py --in-place`)."""
    from_source = build_labs.cell_signature(build_labs.notebook_from_source(build_labs.SOURCES / f"{name}.py"))
    committed = build_labs.cell_signature(nbformat.read(LABS / f"{name}.ipynb", as_version=4))
    assert len(committed) == len(from_source), f"{name}: {len(committed)} cells, its source has {len(from_source)}"
    for index, (cell, source_cell) in enumerate(zip(committed, from_source)):
        assert cell == source_cell, f"{name}: cell {index} differs from labs/src/{name}.py; run labs/build_labs.py"


def test_cell_signature_sees_a_changed_tag():
    nb = build_labs.notebook_from_source(build_labs.SOURCES / "01_naive_noising.py")
    before = build_labs.cell_signature(nb)
    parameters = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", ()))
    parameters.metadata["tags"] = []
    assert build_labs.cell_signature(nb) != before


def test_no_local_path_in_committed_notebooks():
    for path in LABS.glob("0*.ipynb"):
        text = path.read_text()
        for marker in ("/work/", "/home/", "/Users/", "/tmp/"):
            assert marker not in text, f"{path.name} stores a local path ({marker}...)"


# ---------------------------------------------------------------------------------------------------------------
# The course: build, autograder on the instructor and student versions, grading of submissions
# ---------------------------------------------------------------------------------------------------------------

LABS_WITH_EXERCISES = build_labs.lab_names()


@pytest.fixture(scope="module")
def course(tmp_path_factory):
    from diffusion_lab.course.build import build_course

    return build_course(tmp_path_factory.mktemp("course"), wheel=False)


def _notebook(course, flavour, name):
    return nbformat.read(course / flavour / f"{name}.ipynb", as_version=4)


def test_build_writes_three_versions(course):
    import json

    manifest = json.loads((course / "autograder" / "manifest.json").read_text())
    assert sorted(manifest) == LABS_WITH_EXERCISES
    for name in LABS_WITH_EXERCISES:
        assert 3 <= len(manifest[name]["exercises"]) <= 5, name
        student = _notebook(course, "student", name)
        text = "\n".join(c.source for c in student.cells)
        for marker in ("BEGIN SOLUTION", "HIDDEN TESTS", "check_forward_marginal_statistics", "check_ddim_step_marginals"):
            assert marker not in text, f"{name}: {marker} left in the student version"
        assert all(not c.get("outputs") for c in student.cells if c.cell_type == "code"), f"{name}: student outputs"
        solutions = [c for c in student.cells if c.metadata.get("nbgrader", {}).get("solution")]
        assert solutions and all("raise NotImplementedError()" in c.source for c in solutions)
        instructor = _notebook(course, "instructor", name)
        assert any(c.get("outputs") for c in instructor.cells if c.cell_type == "code"), f"{name}: no stored outputs"
        assert "BEGIN SOLUTION" in "\n".join(c.source for c in _notebook(course, "autograder", name).cells)
    assert (course / "STUDENTS.md").exists()


def _grade_in_process(course, name, flavour):
    from diffusion_lab.course.grade import execute_in_process, grading_notebook, scores_of

    reference = _notebook(course, "autograder", name)
    submission = _notebook(course, flavour, name)
    out_dir = course / "work" / flavour / name  # the set-up cell's OUT_DIR: not the checkout's outputs/
    return scores_of(execute_in_process(grading_notebook(submission, reference, out_dir=str(out_dir))))


@pytest.mark.parametrize("name", LABS_WITH_EXERCISES)
def test_instructor_solutions_pass_every_check(course, name, monkeypatch):
    monkeypatch.setenv("DIFFUSION_LAB_QUICK", "1")
    rows = _grade_in_process(course, name, "autograder")  # solutions + hidden checks
    failed = [r for r in rows if r["score"] != r["max_score"]]
    assert rows and not failed, failed


@pytest.mark.parametrize("name", LABS_WITH_EXERCISES)
def test_student_versions_fail_every_check_with_its_message(course, name, monkeypatch):
    monkeypatch.setenv("DIFFUSION_LAB_QUICK", "1")
    rows = _grade_in_process(course, name, "student")
    assert rows
    for row in rows:
        assert row["score"] == 0.0, row
        assert row["feedback"].startswith("ExerciseFailed: ") and "not implemented yet" in row["feedback"], row


def test_grading_two_submissions_gives_the_expected_scores(course, tmp_path):
    """Through the real path (a kernel per submission, the CSV): one right, one with a planted mistake (the square
    roots of the forward process forgotten), in lab 1 whose exercises need no model."""
    import csv

    from diffusion_lab.course.classroom import grade_folder

    name = "01_naive_noising"
    right = _notebook(course, "autograder", name)
    wrong = _notebook(course, "autograder", name)
    cell = next(c for c in wrong.cells if "def forward_marginal_sample" in c.source)
    assert "alpha_bar_t.sqrt() * x_0 + (1 - alpha_bar_t).sqrt() * noise" in cell.source
    cell.source = cell.source.replace("alpha_bar_t.sqrt() * x_0 + (1 - alpha_bar_t).sqrt() * noise",
                                      "alpha_bar_t * x_0 + (1 - alpha_bar_t) * noise")
    # the planted student also "fixes" a check cell: grading must use the autograder's copy
    check = next(c for c in wrong.cells if c.metadata.get("nbgrader", {}).get("grade_id") == "ex1_1_check")
    check.source = "pass"
    # one pasted a check cell twice (it must score once), one ends Python in an exercise (the rest are still graded)
    duplicated = _notebook(course, "autograder", name)
    index = next(i for i, c in enumerate(duplicated.cells) if c.metadata.get("nbgrader", {}).get("grade_id") == "ex1_2_check")
    duplicated.cells.insert(index, nbformat.from_dict(duplicated.cells[index]))
    crashing = _notebook(course, "autograder", name)
    cell = next(c for c in crashing.cells if "def forward_marginal_sample" in c.source)
    cell.source = "import os\nos._exit(3)\n" + cell.source
    for student, nb in (("right", right), ("planted", wrong), ("duplicated", duplicated), ("crashing", crashing)):
        (tmp_path / "submitted" / student).mkdir(parents=True)
        nbformat.write(nb, tmp_path / "submitted" / student / f"{name}.ipynb")
    grade_folder(tmp_path / "submitted", tmp_path / "scores.csv", course / "autograder", timeout=300, log=lambda *_: None)
    with open(tmp_path / "scores.csv") as handle:
        rows = {(r["student"], r["exercise"]): r for r in csv.DictReader(handle)}
    assert float(rows[("right", "total")]["score"]) == 3.0 == float(rows[("right", "total")]["max_score"])
    assert float(rows[("planted", "total")]["score"]) == 2.0  # one mistake (in ex1_1) costs one point
    assert rows[("planted", "ex1_1_check")]["score"] == "0.0"
    assert "square roots are missing" in rows[("planted", "ex1_1_check")]["feedback"]
    assert rows[("planted", "ex1_2_check")]["score"] == "1.0"
    # ex1_3 calls the wrong forward_marginal_sample, but its own formula is right: judged alone, it passes
    assert rows[("planted", "ex1_3_check")]["score"] == "1.0"
    assert rows[("planted", "ex1_3_check")]["feedback"] == "passed"
    assert float(rows[("duplicated", "total")]["score"]) == 3.0 == float(rows[("duplicated", "total")]["max_score"])
    assert float(rows[("crashing", "total")]["score"]) == 0.0
    assert "kernel stopped" in rows[("crashing", "ex1_1_check")]["feedback"]


def test_checks_name_common_mistakes():
    from diffusion_lab.course import checks

    def swapped_sigma(alpha_bar_t, alpha_bar_prev, eta):
        t, p = (torch.as_tensor(v, dtype=torch.float64) for v in (alpha_bar_t, alpha_bar_prev))
        return eta * ((1 - t) / (1 - p) * (1 - p / t)).sqrt()  # NaN where the ratio exceeds 1, as a student gets

    with pytest.raises(checks.ExerciseFailed, match="swapped"):
        checks.check_sigma_from_eta(swapped_sigma)
    with pytest.raises(checks.ExerciseFailed, match="sigma_t\\(eta=1\\)"):
        checks.check_sigma_hat(lambda a, p: checks_reference_sigma(a, p))
    with pytest.raises(checks.ExerciseFailed, match="LAST"):
        checks.check_strength_timesteps(lambda timesteps, s: timesteps[: int(len(timesteps) * s)])


def checks_reference_sigma(alpha_bar_t, alpha_bar_prev):
    from diffusion_lab.posterior import sigma_from_eta

    return sigma_from_eta(alpha_bar_t, alpha_bar_prev, 1.0)
