"""nbgrader's own workflow on the labs: `course build --nbgrader DIR` writes a standard nbgrader course folder,
and the real nbgrader commands (generate_assignment, autograde, generate_feedback) run on it and give the same
scores as `course grade`. (Before, grading re-implemented nbgrader's autograde and a course running nbgrader could
not drop the labs in.) Autograde runs the whole lab, so this test grades two lab-1 submissions only: the released
(blank) notebook and one with a planted mistake."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import nbformat

REPO = Path(__file__).resolve().parent.parent
LAB = "01_naive_noising"


def _nbgrader(folder: Path, *arguments: str) -> None:
    # nbgrader runs the `alembic` command of its environment: the venv's bin/ comes first on PATH, as it does in an
    # activated venv (`make test` calls .venv/bin/python without activating it)
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    env = {**os.environ, "PATH": path, "PYTHONPATH": str(REPO), "DIFFUSION_LAB_QUICK": "1",
           "DIFFUSION_LAB_NO_PROGRESS": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_VERBOSITY": "error"}
    completed = subprocess.run([sys.executable, "-m", "nbgrader", *arguments], cwd=folder, env=env,
                               capture_output=True, text=True, timeout=600)
    assert completed.returncode == 0, completed.stderr[-3000:]


def test_nbgrader_workflow_gives_the_scores_of_course_grade(tmp_path):
    from nbgrader.api import Gradebook

    from diffusion_lab.course.build import build_course, build_nbgrader
    from diffusion_lab.course.classroom import grade_folder

    folder = build_nbgrader(tmp_path / "nbgrader")
    assert (folder / "nbgrader_config.py").exists() and (folder / "source" / LAB / f"{LAB}.ipynb").exists()
    _nbgrader(folder, "generate_assignment", LAB, "--force")
    released = nbformat.read(folder / "release" / LAB / f"{LAB}.ipynb", as_version=4)
    assert "BEGIN SOLUTION" not in str(released) and "HIDDEN TESTS" not in str(released)
    planted = nbformat.read(folder / "source" / LAB / f"{LAB}.ipynb", as_version=4)
    cell = next(c for c in planted.cells if "def forward_marginal_sample" in c.source)
    cell.source = cell.source.replace("alpha_bar_t.sqrt() * x_0 + (1 - alpha_bar_t).sqrt() * noise",
                                      "alpha_bar_t * x_0 + (1 - alpha_bar_t) * noise")
    for student, nb in (("blank", released), ("planted", planted)):
        for root in (folder / "submitted" / student / LAB, tmp_path / "ours" / student):
            root.mkdir(parents=True, exist_ok=True)
            nbformat.write(nb, root / f"{LAB}.ipynb")
    _nbgrader(folder, "autograde", LAB, "--create", "--force")
    _nbgrader(folder, "generate_feedback", LAB, "--force")
    with Gradebook(f"sqlite:///{folder / 'gradebook.db'}") as gradebook:
        theirs = {(s.student_id, g.name): float(g.score) for s in gradebook.assignment_submissions(LAB)
                  for nb in s.notebooks for g in nb.grades}
    for student in ("blank", "planted"):
        assert (folder / "feedback" / student / LAB / f"{LAB}.html").exists()

    course = build_course(tmp_path / "course", wheel=False)
    rows = grade_folder(tmp_path / "ours", tmp_path / "scores.csv", course / "autograder", timeout=300,
                        log=lambda *_: None)
    ours = {(r["student"], r["exercise"]): r["score"] for r in rows if r["exercise"] != "total"}
    assert ours == theirs
    assert sum(score for (student, _), score in ours.items() if student == "planted") == 2.0
