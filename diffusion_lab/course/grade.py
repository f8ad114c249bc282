"""Grade ONE submitted lab notebook with the autograder's copy of its lab (`course grade` grades a class with
diffusion_lab.course.classroom, which calls this for each submission).

As nbgrader's autograde does: the check cells are replaced by the autograder's (so hidden checks run and an edited
check cannot pass), then only what the exercises need is executed in a fresh kernel (the exercises section: the
student's solution cells, any cells the student added there, the checks; and first the `parameters` cell with
INTERACTIVE = False and the `setup` cell when the section's first cell is tagged `needs-setup`, i.e. the exercises
use the model or the lab's images), with DIFFUSION_LAB_QUICK=1. The kernel runs in a temporary folder of its own,
which is also the lab's OUT_DIR (and $DIFFUSION_LAB_OUT): grading writes nothing into the lecturer's outputs/ or
labs/, nor next to the submissions. A check cell scores its points when it ran without error
(nbgrader.utils.determine_grade; what the student's code wrote to stderr is not an error: the checks catch it, and
it is left out here too), else 0, and its feedback is the check's message.

    python -m diffusion_lab course grade --submissions DIR --out scores.csv [--autograder BUILD/autograder]
                                         [--workers N | --scheduler ADDRESS]
"""

from __future__ import annotations

import copy
import os
import sys
import tempfile
from pathlib import Path

from .build import EXERCISES_TAG, NEEDS_SETUP_TAG, SETUP_TAG, grade_id, is_grade_cell



def grading_notebook(submission, reference, out_dir: str | None = None, threads: int | None = None):
    """The cells grading runs: parameters + setup from the reference, the submission's exercises section with the
    reference's check cells. Check cells the student deleted are appended (they then fail if what they check is
    missing). `out_dir` becomes the lab's OUT_DIR (grading's own work folder), `threads` its THREADS."""
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
                if out_dir is not None:
                    cell.source += f"\nOUT_DIR = {str(out_dir)!r}  # grading: its own work folder"
                if threads is not None:
                    cell.source += f"\nTHREADS = {int(threads)}"
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


def _is_stderr(output) -> bool:
    return output.get("output_type") == "stream" and output.get("name") == "stderr"


def _feedback(cell) -> str:
    for output in cell.get("outputs", []):
        if output.get("output_type") == "error":
            return f"{output.get('ename')}: {output.get('evalue')}"
    return "passed"


def grading_environment(work: Path, threads: int | None = None) -> dict:
    """The kernel's environment: quick labs, no progress bars, offline, OUT_DIR's default in the work folder."""
    environment = {**os.environ, "DIFFUSION_LAB_QUICK": "1", "DIFFUSION_LAB_NO_PROGRESS": "1",
                   "TRANSFORMERS_VERBOSITY": "error", "HF_HUB_OFFLINE": "1", "PYTHONWARNINGS": "ignore",
                   "DIFFUSION_LAB_OUT": str(work / "out")}
    if threads is not None:
        environment.update({"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)})
    return environment


def execute(nb, cwd: Path, timeout: int = 600, env: dict | None = None):
    """Run every cell in a fresh kernel started in `cwd` with `env`, errors allowed (a failed check must not stop
    the next one). The kernel (ipykernel) exits when this process dies (it polls its parent)."""
    from nbclient import NotebookClient

    from diffusion_lab.batch.kernels import EncryptedKernelManager

    client = NotebookClient(nb, timeout=timeout, kernel_name="python3", allow_errors=True,
                            interrupt_on_timeout=True,  # a cell over `timeout` becomes that cell's error
                            resources={"metadata": {"path": str(cwd)}}, kernel_manager_class=EncryptedKernelManager)
    client.execute(env=env if env is not None else grading_environment(Path(cwd)))
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
    """[{exercise, score, max_score, feedback}] of an executed grading notebook (nbgrader.utils.determine_grade, on
    the cell without what was written to stderr: printing costs nothing, only an error does)."""
    from nbgrader.utils import determine_grade

    rows = []
    for cell in nb.cells:
        if is_grade_cell(cell):
            judged = copy.deepcopy(cell)
            judged.outputs = [output for output in cell.get("outputs", []) if not _is_stderr(output)]
            score, max_score = determine_grade(judged)
            rows.append({"exercise": grade_id(cell), "score": float(score), "max_score": float(max_score),
                         "feedback": _feedback(cell)})
    return rows


def _every_exercise_zero(reference, reason: str) -> list[dict]:
    return [{"exercise": grade_id(c), "score": 0.0, "max_score": float(c.metadata["nbgrader"].get("points", 1)),
             "feedback": reason} for c in reference.cells if is_grade_cell(c)]


def grade_notebook(submission, reference, name: str = "the notebook", timeout: int = 600,
                   threads: int | None = None) -> list[dict]:
    """[{exercise, score, max_score, feedback}] of one submitted notebook (nbformat nodes), run in a temporary work
    folder of its own (the kernel's cwd and the lab's OUT_DIR), removed afterwards."""
    with tempfile.TemporaryDirectory(prefix="diffusion-lab-grading-") as work:
        work = Path(work)
        try:
            nb = grading_notebook(submission, reference, out_dir=str(work / "out"), threads=threads)
            return scores_of(execute(nb, work, timeout, grading_environment(work, threads)))
        except Exception as error:  # the kernel died (e.g. os._exit in the student's code) or never started
            return _every_exercise_zero(reference, f"the notebook's kernel stopped while grading "
                                        f"({type(error).__name__}: {error}); run {name} top to bottom yourself to "
                                        "find the cell that ends Python")


def grade_submission(path: Path, reference, timeout: int = 600, threads: int | None = None) -> list[dict]:
    """[{exercise, score, max_score, feedback}] of one submitted notebook file."""
    import nbformat

    path = Path(path)
    try:
        submission = nbformat.read(path, as_version=4)
    except Exception as error:  # not a notebook: every exercise 0, and say why
        return _every_exercise_zero(reference, f"could not read {path.name}: {error}")
    return grade_notebook(submission, reference, path.name, timeout, threads)


def grade_job(job: dict) -> dict:
    """One submission, as a Dask task or a local call: the job carries the notebooks' text (a worker needs no view
    of the driver's files). Returns the job's key and its rows."""
    import nbformat

    reference = nbformat.reads(job["reference"], as_version=4)
    try:
        submission = nbformat.reads(job["submission"], as_version=4)
    except Exception as error:
        results = _every_exercise_zero(reference, f"could not read {job['file']}: {error}")
    else:
        results = grade_notebook(submission, reference, job["file"], job["timeout"], job.get("threads"))
    return {"key": job["key"], "student": job["student"], "lab": job["lab"], "file": job["file"], "results": results}


def add_arguments(parser) -> None:
    sub = parser.add_subparsers(dest="course_command", required=True)
    build = sub.add_parser("build", help="write the student, instructor and autograder versions of the labs")
    build.add_argument("--out", required=True, help="output folder")
    build.add_argument("--nbgrader", default=None, metavar="DIR",
                       help="also write an nbgrader course folder (source/<lab>/, nbgrader_config.py) to DIR")
    build.add_argument("--no-wheel", action="store_true",
                       help="leave the package's wheel out of student/ (students then need another install line)")
    grade = sub.add_parser("grade", help="grade a folder of submissions (DIR/<student>/NN_name.ipynb) into a CSV")
    grade.add_argument("--submissions", required=True)
    grade.add_argument("--out", default="scores.csv", help="CSV of scores (default scores.csv)")
    grade.add_argument("--autograder", default=None,
                       help="the autograder folder of `course build` (default: build one in a temporary folder)")
    grade.add_argument("--timeout", type=int, default=600, help="seconds per cell")
    grade.add_argument("--workers", type=int, default=1,
                       help="submissions graded at once, each in its own kernel (default 1)")
    grade.add_argument("--scheduler", default=None, help="address of a running Dask scheduler to grade on instead")


def run_from_args(args) -> int:
    import tempfile

    from .build import SOURCES, build_course, build_nbgrader, lab_names
    from .classroom import grade_folder, results_folder

    if args.course_command == "build" or (args.course_command == "grade" and not args.autograder):
        try:
            lab_names(SOURCES)
        except FileNotFoundError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
    if args.course_command == "build":
        out = build_course(args.out, wheel=not args.no_wheel)
        print(f"Course written to {out.resolve()}:")
        for flavour in ("student", "instructor", "autograder"):
            print(f"  {flavour + '/':12s} {', '.join(sorted(p.name for p in (out / flavour).iterdir()))}")
        if args.nbgrader:
            folder = build_nbgrader(args.nbgrader).resolve()
            print(f"nbgrader course folder: {folder} (from there: nbgrader generate_assignment NN_name; nbgrader "
                  "autograde NN_name --create; nbgrader generate_feedback NN_name)")
        return 0
    if args.course_command == "grade":
        with tempfile.TemporaryDirectory() as temporary:
            autograder = args.autograder or (build_course(temporary, wheel=False) / "autograder")
            rows = grade_folder(args.submissions, args.out, autograder, args.timeout, workers=args.workers,
                                scheduler=args.scheduler)
        totals = [r for r in rows if r["exercise"] == "total"]
        out = Path(args.out).resolve()
        print(f"\n{len(totals)} notebook(s) graded; scores in {out}, feedback pages in "
              f"{results_folder(out, 'feedback')}")
        return 0
    return 1


__all__ = ["grade_job", "grade_notebook", "grade_submission", "grading_notebook", "scores_of"]
