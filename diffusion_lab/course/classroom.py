"""Grade a class: every DIR/<student>/NN_name.ipynb, one per student and lab, into scores.csv and feedback pages.

    python -m diffusion_lab course grade --submissions DIR --out scores.csv [--autograder BUILD/autograder]
                                         [--workers N | --scheduler ADDRESS]

Submissions: DIR/<student>/NN_name.ipynb (any subset of the labs; the file name's NN_ prefix says which lab).
One submission per student and lab: when a student's folder holds several files of one lab (`01_naive_noising.ipynb`
and `01_naive_noising (1).ipynb`), the most recently modified one is graded (equal times: the one named exactly as
handed out, then the first by name); the others are named in the total row's feedback and in the log, never graded.
Each submission is graded by diffusion_lab.course.grade (a fresh kernel in a work folder of its own).

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

import csv
import hashlib
import html
import json
import os
import re
from pathlib import Path

from .grade import grade_job

FIELDS = ["student", "lab", "file", "exercise", "score", "max_score", "feedback"]
SCHEDULER_TIMEOUT = "60s"  # how long to try reaching an external Dask scheduler (as batch)


def _lab_of(path: Path, labs: list[str]) -> str | None:
    match = re.match(r"(\d\d)", path.name)
    if not match:
        return None
    found = [lab for lab in labs if lab.startswith(match.group(1))]
    return found[0] if found else None


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


__all__ = ["choose_submissions", "grade_folder", "results_folder"]
