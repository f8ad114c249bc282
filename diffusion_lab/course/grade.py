"""Grade a folder of submitted lab notebooks with the autograder bundle of `course build`.

    python -m diffusion_lab course grade --submissions DIR --out scores.csv [--autograder BUILD/autograder]
                                         [--workers N | --scheduler ADDRESS]

Submissions: DIR/<student>/NN_name.ipynb (any subset of the labs; the file name's NN_ prefix says which lab).
One submission per student and lab: when a student's folder holds several files of one lab (`01_naive_noising.ipynb`
and `01_naive_noising (1).ipynb`), the most recently modified one is graded (equal times: the one named exactly as
handed out, then the first by name); the others are named in the total row's feedback and in the log, never graded.

For each submission, as nbgrader's autograde does: the check cells are replaced by the autograder's (so hidden
checks run and an edited check cannot pass), then only what the exercises need is executed in a fresh kernel
(the exercises section: the student's solution cells, any cells the student added there, the checks; and first the
`parameters` cell with INTERACTIVE = False and the `setup` cell when the section's first cell is tagged
`needs-setup`, i.e. the exercises use the model or the lab's images), with DIFFUSION_LAB_QUICK=1. The kernel runs in
a temporary folder of its own, which is also the lab's OUT_DIR (and $DIFFUSION_LAB_OUT): grading writes nothing
into the lecturer's outputs/ or labs/, nor next to the submissions. A check cell scores its points when it ran
without error (nbgrader.utils.determine_grade; what the student's code wrote to stderr is not an error: the checks
catch it, and it is left out here too), else 0, and its feedback is the check's message.

Results: scores.csv has one row per (student, lab, exercise) and one "total" row per (student, lab), each with the
graded file's name; scores.feedback/<student>.html is the feedback a student reads. Grading is resumable: each
graded submission is kept in scores.parts/<key>.json (the key hashes the student, the lab, the file's bytes and the
autograder's notebook) as soon as it is done, and a second run (after a crash, a kill, or with more submissions)
grades only what has no part yet; the CSV is made from the parts of the submissions chosen, each once.
--workers N grades N submissions at once (N kernels, each with cores / N torch threads); --scheduler ADDRESS sends
the submissions to a running Dask scheduler (a cluster, as `batch --scheduler`), each worker running one kernel at
a time per thread; the jobs carry the notebooks' text, so workers need no view of the driver's files.
"""

from __future__ import annotations

import copy
import csv
import hashlib
import html
import json
import os
import re
import tempfile
from pathlib import Path

from .build import EXERCISES_TAG, NEEDS_SETUP_TAG, SETUP_TAG, grade_id, is_grade_cell, lab_names

FIELDS = ["student", "lab", "file", "exercise", "score", "max_score", "feedback"]
SCHEDULER_TIMEOUT = "60s"  # how long to try reaching an external Dask scheduler (as batch)


def _lab_of(path: Path, labs: list[str]) -> str | None:
    match = re.match(r"(\d\d)", path.name)
    if not match:
        return None
    found = [lab for lab in labs if lab.startswith(match.group(1))]
    return found[0] if found else None


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


# ---------------------------------------------------------------------------------------------------------------
# The class: which submissions, in what order, on which workers; the CSV and the feedback pages
# ---------------------------------------------------------------------------------------------------------------


def choose_submissions(student_dir: Path, labs: list[str], log=print) -> list[tuple[str, Path, list[Path]]]:
    """[(lab, graded file, ignored files of the same lab)] of one student's folder (the rule: module docstring)."""
    by_lab: dict[str, list[Path]] = {}
    for path in sorted(Path(student_dir).glob("*.ipynb")):
        lab = _lab_of(path, labs)
        if lab is None:
            log(f"skipped {path} (not a lab: the name must start with a lab number, e.g. 02_...)")
            continue
        by_lab.setdefault(lab, []).append(path)
    chosen = []
    for lab in sorted(by_lab):
        paths = by_lab[lab]
        graded = max(paths, key=lambda p: (p.stat().st_mtime_ns, p.name == f"{lab}.ipynb"))  # ties: first by name
        ignored = [p for p in paths if p != graded]
        if ignored:
            log(f"{student_dir.name}: {len(paths)} files of {lab}; grading {graded.name} (the most recently "
                f"modified), not {', '.join(p.name for p in ignored)}")
        chosen.append((lab, graded, ignored))
    return chosen


def _key(student: str, lab: str, submission: bytes, reference: bytes) -> str:
    digest = hashlib.sha256()
    for part in (student.encode(), lab.encode(), hashlib.sha256(submission).digest(), hashlib.sha256(reference).digest()):
        digest.update(len(part).to_bytes(8, "little") + part)
    return digest.hexdigest()[:24]


def results_folder(out_csv: Path, kind: str) -> Path:
    """scores.csv -> scores.parts/ (resumable results) or scores.feedback/ (one HTML page per student)."""
    return out_csv.with_name(f"{out_csv.stem}.{kind}")


def _run_jobs(jobs: list[dict], workers: int, scheduler: str | None, on_done, log) -> None:
    """Run grade_job on every job, calling on_done(result) in this thread as each finishes (so a killed run keeps
    what is done). Without a scheduler: `workers` threads of this process, each driving one kernel at a time (the
    work is in the kernels, separate processes; a thread only waits for its kernel, and a kernel exits when this
    process dies). With a scheduler: the jobs go to that Dask cluster's workers (as `batch --scheduler`)."""
    import concurrent.futures

    if not scheduler:
        if workers <= 1:
            for job in jobs:
                on_done(grade_job(job))
            return
        pool = concurrent.futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="diffusion-lab-grade")
        try:
            futures = [pool.submit(grade_job, job) for job in jobs]
            for future in concurrent.futures.as_completed(futures):
                on_done(future.result())
        finally:
            pool.shutdown(wait=False, cancel_futures=True)
        return
    try:
        from distributed import Client, as_completed
    except ImportError:
        raise RuntimeError("--scheduler needs dask and distributed: pip install 'diffusion-lab[dask]'") from None
    try:
        client = Client(scheduler, timeout=SCHEDULER_TIMEOUT)
    except (OSError, TimeoutError, ValueError) as error:
        raise RuntimeError(f"could not reach the Dask scheduler {scheduler!r}: {error}") from None
    log(f"dask: connected to {client.scheduler.address}")
    try:
        futures = [client.submit(grade_job, job, key=f"diffusion-lab-grade-{job['key']}", pure=False) for job in jobs]
        for future in as_completed(futures):
            on_done(future.result())
    finally:
        client.close()


def _feedback_page(student: str, rows: list[dict]) -> str:
    """The HTML page a student reads: per lab, the graded file, each exercise's score and the check's message."""
    parts = [f"<!DOCTYPE html>\n<html><head><meta charset='utf-8'><title>Feedback: {html.escape(student)}</title>"
             "<style>body{font-family:sans-serif;max-width:60em}td,th{border:1px solid #ccc;padding:.3em;"
             "vertical-align:top}table{border-collapse:collapse}.ok{color:#060}.no{color:#a00}</style></head><body>",
             f"<h1>Feedback for {html.escape(student)}</h1>"]
    for lab in sorted({r["lab"] for r in rows}):
        lab_rows = [r for r in rows if r["lab"] == lab]
        total = next(r for r in lab_rows if r["exercise"] == "total")
        parts.append(f"<h2>{html.escape(lab)}: {total['score']:g} / {total['max_score']:g}</h2>"
                     f"<p>graded file: <code>{html.escape(total['file'])}</code>"
                     + (f"; {html.escape(total['feedback'])}" if total["feedback"] else "") + "</p>")
        parts.append("<table><tr><th>exercise</th><th>score</th><th>what the check says</th></tr>")
        for r in lab_rows:
            if r["exercise"] != "total":
                css = "ok" if r["score"] == r["max_score"] else "no"
                parts.append(f"<tr><td>{html.escape(r['exercise'])}</td><td class='{css}'>{r['score']:g} / "
                             f"{r['max_score']:g}</td><td>{html.escape(r['feedback'])}</td></tr>")
        parts.append("</table>")
    parts.append("</body></html>\n")
    return "\n".join(parts)


def grade_folder(submissions: str | Path, out_csv: str | Path, autograder: str | Path, timeout: int = 600,
                 log=print, workers: int = 1, scheduler: str | None = None) -> list[dict]:
    """Grade every DIR/<student>/NN_name.ipynb (one per student and lab); write and return the rows of scores.csv,
    and the feedback pages. Resumable (see the module docstring)."""
    from diffusion_lab.atomic_files import atomic_write_json, atomic_write_text

    submissions, autograder, out_csv = Path(submissions), Path(autograder), Path(out_csv)
    manifest_path = autograder / "manifest.json"
    if not manifest_path.exists():
        raise FileNotFoundError(f"{manifest_path} not found: build the course first "
                                "(python -m diffusion_lab course build --out DIR) and pass --autograder DIR/autograder")
    labs = sorted(json.loads(manifest_path.read_text()))
    references = {lab: (autograder / f"{lab}.ipynb").read_bytes() for lab in labs}
    students = sorted(p for p in submissions.iterdir() if p.is_dir()) if submissions.is_dir() else []
    if not students:
        raise FileNotFoundError(f"no submissions in {submissions}: expected {submissions}/<student>/NN_name.ipynb")
    parts = results_folder(out_csv, "parts")
    threads = max(1, (os.cpu_count() or 1) // max(1, workers)) if not scheduler else None
    graded, jobs = [], []
    for student in students:
        for lab, path, ignored in choose_submissions(student, labs, log):
            data = path.read_bytes()
            key = _key(student.name, lab, data, references[lab])
            graded.append((student.name, lab, path.name, ignored, key))
            if not (parts / f"{key}.json").exists():
                jobs.append({"key": key, "student": student.name, "lab": lab, "file": path.name,
                             "submission": data.decode("utf-8", errors="replace"),
                             "reference": references[lab].decode(), "timeout": timeout, "threads": threads})
    if len(jobs) < len(graded):
        log(f"{len(graded) - len(jobs)} submission(s) already graded (in {parts}); grading {len(jobs)}")

    def done(result: dict) -> None:
        atomic_write_json(parts / f"{result['key']}.json", result)
        total = sum(r["score"] for r in result["results"]), sum(r["max_score"] for r in result["results"])
        log(f"graded {result['student']} / {result['file']}: {total[0]:g} / {total[1]:g}")

    _run_jobs(jobs, workers, scheduler, done, log)
    rows = []
    for student, lab, name, ignored, key in graded:
        results = json.loads((parts / f"{key}.json").read_text())["results"]
        rows.extend({"student": student, "lab": lab, "file": name, **result} for result in results)
        note = (f"not graded (one submission per lab, the most recently modified): {', '.join(p.name for p in ignored)}"
                if ignored else "")
        rows.append({"student": student, "lab": lab, "file": name, "exercise": "total",
                     "score": sum(r["score"] for r in results), "max_score": sum(r["max_score"] for r in results),
                     "feedback": note})
    out_csv.parent.mkdir(parents=True, exist_ok=True)
    import io

    text = io.StringIO()
    writer = csv.DictWriter(text, fieldnames=FIELDS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(rows)
    atomic_write_text(out_csv, text.getvalue())  # a crash never leaves half a CSV
    for student in sorted({r["student"] for r in rows}):
        page = _feedback_page(student, [r for r in rows if r["student"] == student])
        atomic_write_text(results_folder(out_csv, "feedback") / f"{student}.html", page)
    return rows


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

    from .build import build_course, build_nbgrader

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


__all__ = ["choose_submissions", "grade_folder", "grade_notebook", "grade_submission", "grading_notebook", "lab_names"]
