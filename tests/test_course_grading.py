"""Grading a class that can trust it: grading touches nothing but its own work folder, one submission per student
and lab (the rule applied and reported, a file column), printing costs nothing, calling the reference scores 0,
per-student feedback pages, resumable grading."""

from __future__ import annotations

import csv
import hashlib
import os
import time
from pathlib import Path

import nbformat
import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def course(tmp_path_factory):
    from diffusion_lab.course.build import build_course

    return build_course(tmp_path_factory.mktemp("course"), wheel=False)


def _notebook(course, flavour, name):
    return nbformat.read(course / flavour / f"{name}.ipynb", as_version=4)


def _tree(folder: Path) -> dict:
    """Every file and folder under `folder` with its bytes' hash (folders: None)."""
    if not folder.exists():
        return {}
    return {str(p.relative_to(folder)): (hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else None)
            for p in sorted(folder.rglob("*"))}


def _rows(path: Path) -> dict:
    with open(path) as handle:
        return {(r["student"], r["lab"], r["exercise"]): r for r in csv.DictReader(handle)}


def _solution_cell(nb, function: str):
    return next(c for c in nb.cells if f"def {function}(" in c.source and c.metadata.get("nbgrader", {}).get("solution"))


def test_grading_touches_nothing_but_its_work_folder(course, tmp_path, monkeypatch):
    """Lab 3's set-up cell resets OUT_DIR's metrics.json: grading used <repo>/outputs/labs/03_ddim_inversion (and
    ran in the submissions' folder). Now outputs/, labs/ and the submissions are byte-identical after grading."""
    from diffusion_lab.course.classroom import grade_folder

    monkeypatch.delenv("DIFFUSION_LAB_OUT", raising=False)
    name = "03_ddim_inversion"
    submitted = tmp_path / "submitted" / "ada"
    submitted.mkdir(parents=True)
    nbformat.write(_notebook(course, "student", name), submitted / f"{name}.ipynb")
    watched = {"outputs": REPO / "outputs", "labs": REPO / "labs", "submitted": tmp_path / "submitted"}
    before = {key: _tree(folder) for key, folder in watched.items()}
    rows = grade_folder(tmp_path / "submitted", tmp_path / "scores.csv", course / "autograder", timeout=300,
                        log=lambda *_: None)
    assert [r["score"] for r in rows if r["exercise"] == "total"] == [0.0]  # blank: graded, all exercises 0
    assert all("not implemented yet" in r["feedback"] for r in rows if r["exercise"] != "total")
    for key, folder in watched.items():
        assert _tree(folder) == before[key], f"grading changed {folder}"


def _write(nb, path: Path, mtime: float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, path)
    os.utime(path, (mtime, mtime))


def test_one_submission_per_student_and_lab_and_fair_scores(course, tmp_path):
    """Through the real path (a kernel per submission, the CSV) on lab 1, whose exercises need no model:
    - duplicates: `01_naive_noising.ipynb` (blank, older) and `01_naive_noising (1).ipynb` (right, newer) gave two
      sets of rows and two totals; now the newer one is graded, once, and the total names the other;
    - a right solution that prints to stderr and warns scored 0 (nbgrader's rule for stderr), and so did the
      exercise calling it; now full points;
    - a solution that returns the library's reference scores 0 and says so;
    - per-student HTML feedback beside the CSV."""
    from diffusion_lab.course.classroom import grade_folder, results_folder

    name = "01_naive_noising"
    now = time.time()
    _write(_notebook(course, "student", name), tmp_path / "submitted" / "bo" / f"{name}.ipynb", now - 100)
    _write(_notebook(course, "autograder", name), tmp_path / "submitted" / "bo" / f"{name} (1).ipynb", now)
    noisy = _notebook(course, "autograder", name)
    cell = _solution_cell(noisy, "forward_marginal_sample")
    cell.source = cell.source.replace('    ### BEGIN SOLUTION\n', '    ### BEGIN SOLUTION\n    import sys, warnings\n'
                                      '    print("debug: computing x_t", file=sys.stderr)\n'
                                      '    warnings.warn("a warning of mine")\n')
    _write(noisy, tmp_path / "submitted" / "cy" / f"{name}.ipynb", now)
    aliased = _notebook(course, "autograder", name)
    cell = _solution_cell(aliased, "forward_marginal_sample")
    cell.source = ("from diffusion_lab import posterior as p\n\n\ndef forward_marginal_sample(x_0, alpha_bar_t, noise):\n"
                   "    return p.forward_marginal_sample(x_0, alpha_bar_t, noise=noise)\n")
    _write(aliased, tmp_path / "submitted" / "di" / f"{name}.ipynb", now)
    grade_folder(tmp_path / "submitted", tmp_path / "scores.csv", course / "autograder", timeout=300,
                 log=lambda *_: None)
    rows = _rows(tmp_path / "scores.csv")
    assert sum(1 for key in rows if key[0] == "bo" and key[2] == "total") == 1
    assert float(rows[("bo", name, "total")]["score"]) == 3.0
    assert rows[("bo", name, "total")]["file"] == f"{name} (1).ipynb"
    assert f"not graded (one submission per lab, the most recently modified): {name}.ipynb" in \
        rows[("bo", name, "total")]["feedback"]
    assert float(rows[("cy", name, "total")]["score"]) == 3.0, rows[("cy", name, "ex1_1_check")]
    assert rows[("di", name, "ex1_1_check")]["score"] == "0.0"
    assert "calls the library's reference diffusion_lab.posterior.forward_marginal_sample" in \
        rows[("di", name, "ex1_1_check")]["feedback"]
    assert rows[("di", name, "ex1_3_check")]["score"] == "1.0"  # judged alone, with the reference standing in
    page = (results_folder(tmp_path / "scores.csv", "feedback") / "di.html").read_text()
    assert "calls the library&#x27;s reference" in page and "2 / 3" in page


def test_duplicates_with_equal_times_take_the_name_handed_out(tmp_path):
    from diffusion_lab.course.classroom import choose_submissions

    folder = tmp_path / "ed"
    for file in ("01_naive_noising (1).ipynb", "01_naive_noising.ipynb", "01_naive_noising-copy.ipynb"):
        _write(nbformat.v4.new_notebook(), folder / file, 1_000_000)
    [(lab, graded, ignored)] = choose_submissions(folder, ["01_naive_noising", "02_generalized_posterior"],
                                                  log=lambda *_: None)
    assert (lab, graded.name) == ("01_naive_noising", "01_naive_noising.ipynb")
    assert sorted(p.name for p in ignored) == ["01_naive_noising (1).ipynb", "01_naive_noising-copy.ipynb"]


def _lab_1_class(course, folder: Path) -> None:
    """Three students of lab 1: right (3/3), a planted mistake (2/3), blank (0/3)."""
    name = "01_naive_noising"
    planted = _notebook(course, "autograder", name)
    cell = _solution_cell(planted, "forward_marginal_sample")
    cell.source = cell.source.replace("alpha_bar_t.sqrt() * x_0 + (1 - alpha_bar_t).sqrt() * noise",
                                      "alpha_bar_t * x_0 + (1 - alpha_bar_t) * noise")
    for student, nb in (("right", _notebook(course, "autograder", name)), ("planted", planted),
                        ("blank", _notebook(course, "student", name))):
        (folder / student).mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, folder / student / f"{name}.ipynb")


class _Killed(Exception):
    pass


def test_a_killed_run_resumes_without_regrading_and_counts_each_once(course, tmp_path):
    """The first run dies right after its first submission is done (as a kill would: nothing after it runs); the
    second, on 2 workers, grades only the other two, and the CSV has each submission once."""
    from diffusion_lab.course.classroom import grade_folder, results_folder

    _lab_1_class(course, tmp_path / "submitted")
    out = tmp_path / "scores.csv"

    def dies_after_the_first(message: str) -> None:
        if message.startswith("graded "):
            raise _Killed(message)

    with pytest.raises(_Killed):
        grade_folder(tmp_path / "submitted", out, course / "autograder", timeout=300, log=dies_after_the_first)
    assert not out.exists() and len(list(results_folder(out, "parts").glob("*.json"))) == 1
    said: list[str] = []
    rows = grade_folder(tmp_path / "submitted", out, course / "autograder", timeout=300, log=said.append, workers=2)
    assert "1 submission(s) already graded" in said[0] and said[0].endswith("grading 2")
    assert len([m for m in said if m.startswith("graded ")]) == 2
    totals = {r["student"]: r["score"] for r in rows if r["exercise"] == "total"}
    assert totals == {"blank": 0.0, "planted": 2.0, "right": 3.0}
    assert len(_rows(out)) == len(rows) == 12  # 3 students x (3 exercises + total), each once


def test_the_kernels_die_with_a_killed_driver(course, tmp_path):
    """`course grade --workers 2` killed (SIGKILL) while its kernels run: the kernels exit too (ipykernel polls
    its parent), nothing is left running."""
    import signal
    import subprocess
    import sys

    import psutil

    _lab_1_class(course, tmp_path / "submitted")
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    driver = subprocess.Popen([sys.executable, "-m", "diffusion_lab", "course", "grade", "--submissions",
                               str(tmp_path / "submitted"), "--autograder", str(course / "autograder"), "--out",
                               str(tmp_path / "scores.csv"), "--workers", "2"], env=env, cwd=tmp_path,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline, kernels = time.time() + 120, []
        while time.time() < deadline and len(kernels) < 2:
            kernels = [p for p in psutil.Process(driver.pid).children(recursive=True)
                       if "ipykernel" in " ".join(p.cmdline())]
            time.sleep(0.2)
        assert len(kernels) == 2, "two kernels should be running"
    finally:
        driver.send_signal(signal.SIGKILL)
        driver.wait()
    gone, alive = psutil.wait_procs(kernels, timeout=30)
    for process in alive:  # do not leave them behind even when the test fails
        process.kill()
    assert not alive, [p.pid for p in alive]


def test_bench_grading_plants_one_mistake_per_lab(course, tmp_path, import_script):
    """pipelines/bench_grading.py's generated class: every lab's planted mistake is found in its solution (a
    rebuilt lab cannot silently turn the planted submissions into right ones)."""
    bench = import_script("pipelines/bench_grading.py")
    labs = ["01_naive_noising", "02_generalized_posterior", "03_ddim_inversion", "04_prompt_to_prompt"]
    kinds = bench.write_class(course, tmp_path / "submitted", 3, labs)
    assert kinds == {"student000": "right", "student001": "blank", "student002": "planted"}
    for lab in labs:
        right, wrong = bench.PLANTED[lab[:2]]
        assert wrong in (tmp_path / "submitted" / "student002" / f"{lab}.ipynb").read_text().replace('\\"', '"')


def test_grading_on_a_dask_scheduler(course, tmp_path):
    """--scheduler ADDRESS: the submissions go to a running Dask cluster's workers (the jobs carry the notebooks'
    text); the scores are those of local grading."""
    from distributed import LocalCluster

    from diffusion_lab.course.classroom import grade_folder

    name = "01_naive_noising"
    (tmp_path / "submitted" / "fay").mkdir(parents=True)
    nbformat.write(_notebook(course, "autograder", name), tmp_path / "submitted" / "fay" / f"{name}.ipynb")
    said: list[str] = []
    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as cluster:
        rows = grade_folder(tmp_path / "submitted", tmp_path / "scores.csv", course / "autograder", timeout=300,
                            log=said.append, scheduler=cluster.scheduler_address)
    assert said[0].startswith("dask: connected to")
    assert [(r["exercise"], r["score"]) for r in rows][-1] == ("total", 3.0)
