"""The student's view, inside a REAL kernel (what JupyterLab runs): a failed check shows one short message (no
traceback into diffusion_lab/course/checks.py: it was 20-32 lines with the useful one last), Run All goes on past
a failed check (the `raises-exception` tag the student version carries; it stopped at the first one, so later
exercises never ran), nbgrader still scores a failed check 0, and a right solution that prints to stderr passes
with nothing on the check cell's stderr (nbgrader scored it 0)."""

from __future__ import annotations

import copy
import os
from pathlib import Path

import nbformat
import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def student_lab_2():
    from diffusion_lab.course.build import EXERCISES_TAG, notebook_from_source, student_version

    nb = student_version(notebook_from_source(REPO / "labs" / "src" / "02_generalized_posterior.py"))
    start = next(i for i, c in enumerate(nb.cells) if EXERCISES_TAG in c.metadata.get("tags", ()))
    nb.cells = [c for c in nb.cells[start:] if "finish" not in c.metadata.get("tags", ())]  # the exercises section
    return nb


def _run_all(nb, tmp_path):
    """JupyterLab's Run All: stop at a failing cell unless it is tagged raises-exception (nbclient's rule too)."""
    from nbclient import NotebookClient

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    client = NotebookClient(nb, timeout=120, kernel_name="python3", allow_errors=False,
                            resources={"metadata": {"path": str(tmp_path)}})
    client.execute(env=env)
    return nb


def test_run_all_goes_past_failed_checks_and_each_says_one_line(student_lab_2, tmp_path):
    from nbgrader.utils import determine_grade

    from diffusion_lab.course.build import is_grade_cell

    nb = _run_all(copy.deepcopy(student_lab_2), tmp_path)
    checks = [c for c in nb.cells if is_grade_cell(c)]
    assert len(checks) == 3
    for cell in checks:
        assert cell.execution_count is not None  # ran: Run All did not stop at the first failed check
        [error] = [o for o in cell.outputs if o.output_type == "error"]
        assert error.ename == "ExerciseFailed" and "not implemented yet" in error.evalue
        assert len(error.traceback) == 1, error.traceback  # the message, no traceback
        assert "checks.py" not in error.traceback[0] and "Traceback" not in error.traceback[0]
        assert determine_grade(cell) == (0, 1.0)  # nbgrader still counts it as failed


def test_without_the_tag_run_all_stops_at_the_first_failed_check(student_lab_2, tmp_path):
    from nbclient.exceptions import CellExecutionError

    nb = copy.deepcopy(student_lab_2)
    for cell in nb.cells:
        cell.metadata["tags"] = [t for t in cell.metadata.get("tags", []) if t != "raises-exception"]
    with pytest.raises(CellExecutionError):
        _run_all(nb, tmp_path)


def test_a_right_solution_that_prints_to_stderr_passes_in_a_kernel(student_lab_2, tmp_path):
    from nbgrader.utils import determine_grade

    from diffusion_lab.course.build import grade_id

    nb = copy.deepcopy(student_lab_2)
    cell = next(c for c in nb.cells if grade_id(c) == "ex2_2_sigma_hat")
    cell.source = ("import sys, warnings\n\ndef sigma_hat(alpha_bar_t, alpha_bar_prev):\n"
                   "    print('debug', alpha_bar_t, file=sys.stderr)\n    warnings.warn('mine')\n"
                   "    t, p = torch.as_tensor(alpha_bar_t, dtype=torch.float64), torch.as_tensor(alpha_bar_prev, dtype=torch.float64)\n"
                   "    return (1 - t / p).sqrt()\n")
    nb = _run_all(nb, tmp_path)
    check = next(c for c in nb.cells if grade_id(c) == "ex2_2_check")
    assert not [o for o in check.outputs if o.output_type == "stream" and o.name == "stderr"], check.outputs
    assert determine_grade(check) == (1.0, 1.0)
    assert not [o for o in check.outputs if o.output_type == "execute_result"]  # no value for nbgrader to read
    text = "".join(o.text for o in check.outputs if o.output_type == "stream")
    assert "passed" in text and "costs nothing" in text
