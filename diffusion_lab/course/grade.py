"""Grade a folder of submitted lab notebooks with the autograder bundle of `course build`.

    python -m diffusion_lab course grade --submissions DIR --out scores.csv [--autograder BUILD/autograder]

Submissions: DIR/<student>/NN_name.ipynb (any subset of the labs; the file name's NN_ prefix says which lab).
For each submission, as nbgrader's autograde does: the check cells are replaced by the autograder's (so hidden
checks run and an edited check cannot pass), then only what the exercises need is executed in a fresh kernel
(the exercises section: the student's solution cells, any cells the student added there, the checks; and first the
`parameters` cell with INTERACTIVE = False and the `setup` cell when the section's first cell is tagged
`needs-setup`, i.e. the exercises use the model or the lab's images), with DIFFUSION_LAB_QUICK=1. A check cell
scores its points when it ran without error (nbgrader.utils.determine_grade), else 0, and its feedback is the
check's message. scores.csv has one row per (student, lab, exercise) and one "total" row per (student, lab).
"""

from __future__ import annotations

import copy
import csv
import json
import os
import re
from pathlib import Path

from .build import EXERCISES_TAG, NEEDS_SETUP_TAG, SETUP_TAG, grade_id, is_grade_cell, lab_names

FIELDS = ["student", "lab", "exercise", "score", "max_score", "feedback"]


def _lab_of(path: Path, labs: list[str]) -> str | None:
    match = re.match(r"(\d\d)", path.name)
    if not match:
        return None
    found = [lab for lab in labs if lab.startswith(match.group(1))]
    return found[0] if found else None


def grading_notebook(submission, reference):
    """The cells grading runs: parameters + setup from the reference, the submission's exercises section with the
    reference's check cells. Check cells the student deleted are appended (they then fail if what they check is
    missing)."""
    import nbformat

    reference_checks = {grade_id(c): c for c in reference.cells if is_grade_cell(c)}
    needs_setup = any(NEEDS_SETUP_TAG in c.metadata.get("tags", ()) for c in reference.cells)
    cells = []
    for cell in reference.cells:
        tags = cell.metadata.get("tags", ())
        if needs_setup and cell.cell_type == "code" and ("parameters" in tags or SETUP_TAG in tags):
            cell = copy.deepcopy(cell)
            if "parameters" in tags:
                cell.source += "\nINTERACTIVE = False  # grading: no widgets"
            cells.append(cell)
    start = next((i for i, c in enumerate(submission.cells) if EXERCISES_TAG in c.metadata.get("tags", ())), None)
    if start is None:  # the student removed the section's first cell: take the reference's
        start = len(submission.cells)
        cells.append(copy.deepcopy(next(c for c in reference.cells if EXERCISES_TAG in c.metadata.get("tags", ()))))
    seen = set()
    for cell in submission.cells[start:]:
        if cell.cell_type != "code" or "finish" in cell.metadata.get("tags", ()):
            continue
        if is_grade_cell(cell) or grade_id(cell) in reference_checks:
            if grade_id(cell) not in reference_checks or grade_id(cell) in seen:
                continue  # not a check of this lab, or a copy of one already placed (each check scores once)
            cell = copy.deepcopy(reference_checks[grade_id(cell)])
            seen.add(grade_id(cell))
        cell = copy.deepcopy(cell)
        cell.outputs, cell.execution_count = [], None
        cells.append(cell)
    cells.extend(copy.deepcopy(c) for gid, c in reference_checks.items() if gid not in seen)
    nb = nbformat.v4.new_notebook(cells=cells, metadata=copy.deepcopy(reference.metadata))
    return nb


def _feedback(cell) -> str:
    for output in cell.get("outputs", []):
        if output.get("output_type") == "error":
            return f"{output.get('ename')}: {output.get('evalue')}"
        if output.get("output_type") == "stream" and output.get("name") == "stderr":
            return "printed to stderr: " + output.get("text", "").strip()[:300]
    return "passed"


def execute(nb, cwd: Path, timeout: int = 600):
    """Run every cell, errors allowed (a failed check must not stop the next one)."""
    from nbclient import NotebookClient

    from diffusion_lab.batch.kernels import EncryptedKernelManager

    environment = {"DIFFUSION_LAB_QUICK": "1", "DIFFUSION_LAB_NO_PROGRESS": "1", "TRANSFORMERS_VERBOSITY": "error",
                   "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore"}
    previous = {k: os.environ.get(k) for k in environment}
    os.environ.update(environment)
    try:
        client = NotebookClient(nb, timeout=timeout, kernel_name="python3", allow_errors=True,
                                interrupt_on_timeout=True,  # a cell over `timeout` becomes that cell's error
                                resources={"metadata": {"path": str(cwd)}}, kernel_manager_class=EncryptedKernelManager)
        client.execute()
    finally:
        for key, value in previous.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    return nb


def execute_in_process(nb):
    """Run the cells in this Python process, one fresh namespace, errors recorded as nbformat error outputs. For
    tests of the course's own notebooks (no kernel start-up, the model cache is shared); grading students' work
    uses `execute` (a separate kernel: their code cannot touch the grader)."""
    import contextlib
    import io
    import traceback

    from nbformat.v4 import new_output

    namespace: dict = {"__name__": "__main__"}
    for cell in nb.cells:
        if cell.cell_type != "code":
            continue
        stdout = io.StringIO()
        cell.outputs = []
        try:
            with contextlib.redirect_stdout(stdout):
                exec(compile(cell.source, "<cell>", "exec"), namespace)
        except Exception as error:
            if stdout.getvalue():
                cell.outputs.append(new_output("stream", name="stdout", text=stdout.getvalue()))
            cell.outputs.append(new_output("error", ename=type(error).__name__, evalue=str(error),
                                           traceback=traceback.format_exception_only(type(error), error)))
            continue
        if stdout.getvalue():
            cell.outputs.append(new_output("stream", name="stdout", text=stdout.getvalue()))
    return nb


def scores_of(nb) -> list[dict]:
    """[{exercise, score, max_score, feedback}] of an executed grading notebook (nbgrader.utils.determine_grade)."""
    from nbgrader.utils import determine_grade

    rows = []
    for cell in nb.cells:
        if is_grade_cell(cell):
            score, max_score = determine_grade(cell)
            rows.append({"exercise": grade_id(cell), "score": float(score), "max_score": float(max_score),
                         "feedback": _feedback(cell)})
    return rows


def grade_submission(path: Path, reference, timeout: int = 600) -> list[dict]:
    """[{exercise, score, max_score, feedback}] of one submitted notebook."""
    import nbformat

    def every_exercise_zero(reason: str) -> list[dict]:
        return [{"exercise": grade_id(c), "score": 0.0, "max_score": float(c.metadata["nbgrader"].get("points", 1)),
                 "feedback": reason} for c in reference.cells if is_grade_cell(c)]

    try:
        submission = nbformat.read(path, as_version=4)
    except Exception as error:  # not a notebook: every exercise 0, and say why
        return every_exercise_zero(f"could not read {path.name}: {error}")
    try:
        return scores_of(execute(grading_notebook(submission, reference), path.parent, timeout))
    except Exception as error:  # the kernel died (e.g. os._exit in the student's code) or never started
        return every_exercise_zero(f"the notebook's kernel stopped while grading ({type(error).__name__}: {error}); "
                                   "run it top to bottom yourself to find the cell that ends Python")


def grade_folder(submissions: str | Path, out_csv: str | Path, autograder: str | Path, timeout: int = 600,
                 log=print) -> list[dict]:
    """Grade every DIR/<student>/NN_name.ipynb; write and return the rows of scores.csv."""
    import nbformat

    submissions, autograder, out_csv = Path(submissions), Path(autograder), Path(out_csv)
    manifest_path = autograder / "manifest.json"
    if not manifest_path.exists():
        raise FileNotFoundError(f"{manifest_path} not found: build the course first "
                                "(python -m diffusion_lab course build --out DIR) and pass --autograder DIR/autograder")
    labs = sorted(json.loads(manifest_path.read_text()))
    references = {lab: nbformat.read(autograder / f"{lab}.ipynb", as_version=4) for lab in labs}
    students = sorted(p for p in submissions.iterdir() if p.is_dir()) if submissions.is_dir() else []
    if not students:
        raise FileNotFoundError(f"no submissions in {submissions}: expected {submissions}/<student>/NN_name.ipynb")
    rows = []
    for student in students:
        for path in sorted(student.glob("*.ipynb")):
            lab = _lab_of(path, labs)
            if lab is None:
                log(f"skipped {path} (not a lab: the name must start with a lab number, e.g. 02_...)")
                continue
            log(f"grading {student.name} / {path.name} ...")
            results = grade_submission(path, references[lab], timeout)
            for result in results:
                rows.append({"student": student.name, "lab": lab, **result})
            rows.append({"student": student.name, "lab": lab, "exercise": "total",
                         "score": sum(r["score"] for r in results), "max_score": sum(r["max_score"] for r in results),
                         "feedback": ""})
            log(f"  {rows[-1]['score']:g} / {rows[-1]['max_score']:g}")
    out_csv.parent.mkdir(parents=True, exist_ok=True)
    temporary = out_csv.with_suffix(out_csv.suffix + ".partial")
    with open(temporary, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=FIELDS)
        writer.writeheader()
        writer.writerows(rows)
    temporary.replace(out_csv)  # atomic: a crash never leaves half a CSV
    return rows


def add_arguments(parser) -> None:
    sub = parser.add_subparsers(dest="course_command", required=True)
    build = sub.add_parser("build", help="write the student, instructor and autograder versions of the labs")
    build.add_argument("--out", required=True, help="output folder")
    grade = sub.add_parser("grade", help="grade a folder of submissions (DIR/<student>/NN_name.ipynb) into a CSV")
    grade.add_argument("--submissions", required=True)
    grade.add_argument("--out", default="scores.csv", help="CSV of scores (default scores.csv)")
    grade.add_argument("--autograder", default=None,
                       help="the autograder folder of `course build` (default: build one in a temporary folder)")
    grade.add_argument("--timeout", type=int, default=600, help="seconds per cell")


def run_from_args(args) -> int:
    import tempfile

    from .build import build_course

    if args.course_command == "build":
        out = build_course(args.out)
        print(f"Course written to {out.resolve()}:")
        for flavour in ("student", "instructor", "autograder"):
            print(f"  {flavour + '/':12s} {', '.join(sorted(p.name for p in (out / flavour).iterdir()))}")
        return 0
    if args.course_command == "grade":
        with tempfile.TemporaryDirectory() as temporary:
            autograder = args.autograder or (build_course(temporary) / "autograder")
            rows = grade_folder(args.submissions, args.out, autograder, args.timeout)
        totals = [r for r in rows if r["exercise"] == "total"]
        print(f"\n{len(totals)} notebook(s) graded; scores in {Path(args.out).resolve()}")
        return 0
    return 1


__all__ = ["grade_folder", "grade_submission", "grading_notebook", "lab_names"]
