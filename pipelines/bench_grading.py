"""Benchmark grading a class: submissions per minute at 1 and 2 workers, the speed-up, and the projection for a
class of 200 students on a 16-core machine.

    python pipelines/bench_grading.py [--students 12] [--labs 01 02 03 04] [--workers 1 2] [--out outputs/bench_grading]

A class is generated from one course build: student i hands in every selected lab as a right solution (the
autograder's notebook), a blank one (the student notebook) or one with a planted mistake (one solution line
changed), in turn. Each worker count grades the whole class from scratch (its own CSV and parts folder) with
`diffusion_lab.course.grade.grade_folder` (N workers: N kernels at once, each with cores / N torch threads),
after one warm-up submission that is not counted, and the scores are checked (right: full points, blank: 0,
planted: one point less). Wall-clock times; on a machine shared with other work they vary from run to run.

The projection assumes what the measurement shows at 2 workers holds at 16: rate(16) = rate(1) * 16 * (speed-up at
2 / 2), one single-thread worker per core, each submission an independent kernel.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

# one plausible mistake per lab: (text of the solution, as the student wrote it instead)
PLANTED = {
    "01": ("alpha_bar_t.sqrt() * x_0 + (1 - alpha_bar_t).sqrt() * noise", "alpha_bar_t * x_0 + (1 - alpha_bar_t) * noise"),
    "02": ("return (1 - alpha_bar_t / alpha_bar_prev).sqrt()", "return 1 - alpha_bar_t / alpha_bar_prev"),
    "03": ("return (alpha_bar_t.sqrt() * x0_hat", "return (alpha_bar_t * x0_hat"),
    "04": ('torch.einsum("hqi,kij->khqj", source, mapper)', 'torch.einsum("hqi,kji->khqj", source, mapper)'),
}
KINDS = ("right", "blank", "planted")


def write_class(course: Path, submissions: Path, students: int, labs: list[str]) -> dict[str, str]:
    """submissions/<student>/<lab>.ipynb for every student and lab; returns {student: kind}."""
    import nbformat

    kinds = {}
    for index in range(students):
        student, kind = f"student{index:03d}", KINDS[index % len(KINDS)]
        kinds[student] = kind
        for lab in labs:
            flavour = "student" if kind == "blank" else "autograder"
            nb = nbformat.read(course / flavour / f"{lab}.ipynb", as_version=4)
            if kind == "planted":
                right, wrong = PLANTED[lab[:2]]
                cells = [c for c in nb.cells if right in c.source]
                assert len(cells) == 1, (lab, right)
                cells[0].source = cells[0].source.replace(right, wrong)
            (submissions / student).mkdir(parents=True, exist_ok=True)
            nbformat.write(nb, submissions / student / f"{lab}.ipynb")
    return kinds


def check_scores(rows: list[dict], kinds: dict[str, str]) -> None:
    for row in (r for r in rows if r["exercise"] == "total"):
        expected = {"right": row["max_score"], "blank": 0.0, "planted": row["max_score"] - 1}[kinds[row["student"]]]
        if row["score"] != expected:
            raise SystemExit(f"unexpected score: {row} (a {kinds[row['student']]} submission should score {expected})")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--students", type=int, default=12)
    parser.add_argument("--labs", nargs="+", default=["01", "02", "03", "04"], help="lab numbers to hand in")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--class-size", type=int, default=200, help="students of the projection")
    parser.add_argument("--cores", type=int, default=16, help="cores of the projection")
    parser.add_argument("--out", default=str(REPO / "outputs" / "bench_grading"))
    args = parser.parse_args(argv)

    from diffusion_lab.course.build import build_course, lab_names
    from diffusion_lab.course.classroom import grade_folder

    out = Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    course = build_course(out / "course", wheel=False)
    labs = [name for name in lab_names() if name[:2] in args.labs]
    kinds = write_class(course, out / "submitted", args.students, labs)
    count = args.students * len(labs)
    warm = out / "warm-up" / "student000"  # one submission first, not counted: files and imports in the OS cache
    shutil.copytree(out / "submitted" / "student000", warm)
    grade_folder(warm.parent, out / "warm-up.csv", course / "autograder", log=lambda *_: None)
    results = {}
    for workers in args.workers:
        started = time.perf_counter()
        rows = grade_folder(out / "submitted", out / f"scores-{workers}.csv", course / "autograder",
                            log=lambda *_: None, workers=workers)
        seconds = time.perf_counter() - started
        check_scores(rows, kinds)
        results[workers] = {"seconds": seconds, "per_minute": count / seconds * 60}
        print(f"{workers} worker(s): {count} submissions in {seconds:.1f} s = {results[workers]['per_minute']:.1f} "
              "submissions/min", flush=True)
    summary = {"submissions": count, "labs": labs, "students": args.students, "workers": results}
    if 1 in results and 2 in results:
        speedup = results[1]["seconds"] / results[2]["seconds"]
        rate = results[1]["per_minute"] * args.cores * speedup / 2
        minutes = args.class_size * len(labs) / rate
        summary.update({"speedup_2": speedup, "projection": {"students": args.class_size, "cores": args.cores,
                                                             "per_minute": rate, "minutes": minutes}})
        print(f"2-worker speed-up: {speedup:.2f}x")
        print(f"projection: {args.class_size} students x {len(labs)} lab(s) on {args.cores} cores ({args.cores} "
              f"workers, 2-worker efficiency {speedup / 2:.0%} assumed): {rate:.0f} submissions/min, "
              f"{minutes:.1f} min")
    (out / "results.json").write_text(json.dumps(summary, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
