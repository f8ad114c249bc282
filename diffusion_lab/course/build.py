"""Build the course from the lab sources: student, instructor and autograder versions of every lab.

    python -m diffusion_lab course build --out DIR

writes
    DIR/student/                   all a student needs, handed out as it is (zip it):
      NN_name.ipynb                solutions removed (nbgrader's ClearSolutions: `# YOUR CODE HERE` +
                                   `raise NotImplementedError()`), hidden checks removed (ClearHiddenTests), no
                                   outputs; check cells tagged raises-exception (Run All goes on past a failed one)
      STUDENTS.md                  set up, work, submit; its install line names the wheel below
      diffusion_lab-*.whl          the package (`pip wheel --no-deps` of a copy of diffusion_lab/): the library, the
                                   built-in model and the visible checks; no lab, no solution, no hidden check
    DIR/instructor/NN_name.ipynb   solutions and outputs: the committed labs/NN_name.ipynb (executed by
                                   `python pipelines/run_labs.py --in-place`, checked by nbval)
    DIR/autograder/NN_name.ipynb   solutions, hidden checks, no outputs: where `course grade` takes the check cells from
    DIR/autograder/manifest.json   per lab: the graded exercises (grade_id, points) and which cells grading runs
    DIR/STUDENTS.md                the same as DIR/student/STUDENTS.md

Exercise cells carry nbgrader's metadata (`# %% nbgrader={...}` in labs/src): solution cells
(`"solution": true`) with the solution between `### BEGIN SOLUTION` and `### END SOLUTION`, check cells
(`"grade": true, "points": N`) that call diffusion_lab.course.checks, optionally with more checks between
`### BEGIN HIDDEN TESTS` and `### END HIDDEN TESTS`. nbgrader (pinned in pyproject.toml) does the stripping; its
course database and exchange are not needed (see `grade`).
"""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent.parent
LABS = REPO / "labs"
SOURCES = LABS / "src"
LANGUAGE_INFO = {"name": "python", "pygments_lexer": "ipython3"}
SETUP_TAG = "setup"  # the cell that loads the model and the lab's inputs: grading runs it before the exercises
EXERCISES_TAG = "exercises"  # the first cell of the exercises section (imports torch and the checks)
NEEDS_SETUP_TAG = "needs-setup"  # on that cell when the exercises use the model or the lab's inputs


def lab_names(sources: Path = SOURCES) -> list[str]:
    """The labs' stems (01_naive_noising, ...), from the sources."""
    names = sorted(path.stem for path in Path(sources).glob("[0-9][0-9]_*.py"))
    if not names:
        raise FileNotFoundError(
            f"no lab sources (NN_name.py) in {sources}: the course is built from a clone of the repository (its "
            "labs/src holds the solutions and hidden checks, which the installed package does not ship); run "
            "`python -m diffusion_lab course ...` in the clone, or pass --autograder DIR to `course grade`")
    return names


def notebook_from_source(source: Path):
    """The notebook (no outputs) that a jupytext percent source describes."""
    import jupytext
    import nbformat

    nb = jupytext.read(source, fmt="py:percent")
    nb.metadata.pop("jupytext", None)
    nb.metadata["language_info"] = dict(LANGUAGE_INFO)
    seen: dict[str, int] = {}
    for cell in nb.cells:
        if cell.cell_type == "code":
            cell.outputs, cell.execution_count = [], None
        # cell ids from the cell's text (jupytext draws random ones): rebuilding an unchanged source changes nothing
        digest = hashlib.sha1(f"{cell.cell_type}\n{cell.source}".encode()).hexdigest()[:8]
        seen[digest] = seen.get(digest, 0) + 1
        cell.id = digest if seen[digest] == 1 else f"{digest}-{seen[digest]}"
    nbformat.validate(nb)
    return nb


def cell_signature(nb) -> list[tuple]:
    """What a notebook and its source must agree on: each cell's type, text, tags and nbgrader metadata."""
    return [(cell.cell_type, cell.source.strip("\n"), tuple(cell.metadata.get("tags", ())),
             json.dumps(cell.metadata.get("nbgrader", {}), sort_keys=True)) for cell in nb.cells]


def is_grade_cell(cell) -> bool:
    return bool(cell.metadata.get("nbgrader", {}).get("grade")) and cell.cell_type == "code"


def is_solution_cell(cell) -> bool:
    return bool(cell.metadata.get("nbgrader", {}).get("solution"))


def grade_id(cell) -> str | None:
    return cell.metadata.get("nbgrader", {}).get("grade_id")


def exercises(nb) -> list[dict]:
    """The graded check cells of a lab: [{grade_id, points}] in order."""
    return [{"grade_id": grade_id(c), "points": float(c.metadata["nbgrader"].get("points", 1))}
            for c in nb.cells if is_grade_cell(c)]


# in handed-out notebooks: figures and metrics.json go to outputs/ next to the notebook (not into the installed package)
LOCAL_OUT_DIR = 'OUT_DIR = OUT_DIR or "outputs"  # next to this notebook'
RAISES_TAG = "raises-exception"  # JupyterLab's Run All (and nbclient, papermill) go on past a cell with this tag


def allow_failure(cell) -> None:
    """Tag a check cell so that Run All goes on past it when it fails: every exercise then shows its state. A
    failed check still has an error output, which nbgrader and `course grade` score 0."""
    tags = list(cell.metadata.get("tags", []))
    if RAISES_TAG not in tags:
        cell.metadata["tags"] = tags + [RAISES_TAG]


def student_version(nb):
    """Solutions and hidden checks removed, outputs cleared (nbgrader's preprocessors)."""
    import copy

    from nbgrader.preprocessors import ClearHiddenTests, ClearOutput, ClearSolutions

    nb = copy.deepcopy(nb)
    resources: dict = {}
    for preprocessor in (ClearSolutions(), ClearHiddenTests(), ClearOutput()):
        nb, resources = preprocessor.preprocess(nb, resources)
    for cell in nb.cells:
        if is_grade_cell(cell):
            allow_failure(cell)
        if "parameters" in cell.metadata.get("tags", ()):
            cell.source += f"\n{LOCAL_OUT_DIR}"
        text = cell.source
        for marker in ("BEGIN SOLUTION", "END SOLUTION", "BEGIN HIDDEN TESTS", "END HIDDEN TESTS"):
            if marker in text:
                raise RuntimeError(f"{marker} left in the student version of a cell: {text[:80]!r}")
    return nb


def check_sources_match_notebooks(labs: Path = LABS) -> None:
    """Refuse to build from notebooks that were not rebuilt after their source changed."""
    import nbformat

    for name in lab_names(labs / "src"):
        committed = nbformat.read(labs / f"{name}.ipynb", as_version=4)
        if cell_signature(committed) != cell_signature(notebook_from_source(labs / "src" / f"{name}.py")):
            raise RuntimeError(f"labs/{name}.ipynb does not match labs/src/{name}.py: run `python labs/build_labs.py` "
                               "and `python pipelines/run_labs.py --in-place` first")


WHEEL_NAME = re.compile(r"diffusion_lab-[0-9][^\s\"'`/]*\.whl")  # how STUDENTS.md names the wheel


def build_wheel(out: str | Path, repo: Path = REPO) -> Path:
    """The package's wheel in `out`, built (pip wheel --no-deps, without build isolation: offline) from a copy of
    diffusion_lab/, pyproject.toml and README.md only, so nothing else of the checkout (labs, solutions, tests) can
    get in, and the checkout gets no build/ or egg-info."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="diffusion-lab-wheel-") as temporary:
        source = Path(temporary) / "source"
        shutil.copytree(repo / "diffusion_lab", source / "diffusion_lab",
                        ignore=shutil.ignore_patterns("__pycache__", "*.pyc", ".ipynb_checkpoints"))
        for name in ("pyproject.toml", "README.md"):
            shutil.copyfile(repo / name, source / name)
        before = set(out.glob("diffusion_lab-*.whl"))
        completed = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                                    "-w", str(out), str(source)], capture_output=True, text=True)
        if completed.returncode != 0:
            raise RuntimeError(f"building the wheel failed (pip wheel --no-deps): {completed.stderr.strip()[-2000:]}")
    wheels = sorted(set(out.glob("diffusion_lab-*.whl")) - before) or sorted(out.glob("diffusion_lab-*.whl"))
    return wheels[-1]


def student_guide(wheel_name: str, students: Path = REPO / "STUDENTS.md") -> str:
    """STUDENTS.md with its install line naming this build's wheel."""
    return WHEEL_NAME.sub(wheel_name, students.read_text())


NBGRADER_CONFIG = """# nbgrader's configuration of the diffusion-lab course (written by `python -m diffusion_lab course build --nbgrader`)
c = get_config()
c.CourseDirectory.course_id = "diffusion-lab"
c.ClearSolutions.code_stub = {"python": "# YOUR CODE HERE\\nraise NotImplementedError()"}
c.Execute.timeout = 600  # seconds per cell
"""


def build_nbgrader(out: str | Path, labs: str | Path = LABS) -> Path:
    """A standard nbgrader course folder: out/nbgrader_config.py and out/source/<lab>/<lab>.ipynb (solutions and
    hidden checks between nbgrader's markers, no outputs; check cells tagged raises-exception, OUT_DIR next to the
    notebook). nbgrader's own workflow then runs on it, from `out`:

        nbgrader generate_assignment NN_name --force   # release/NN_name/NN_name.ipynb: the student version
        nbgrader autograde NN_name --create --force    # submitted/<student>/NN_name/NN_name.ipynb -> gradebook.db
        nbgrader generate_feedback NN_name --force     # feedback/<student>/NN_name/NN_name.html

    Autograde runs the whole notebook (the lab's experiments too): run it with DIFFUSION_LAB_QUICK=1 in the
    environment for the smaller experiments `course grade` also uses."""
    import nbformat

    out, labs = Path(out), Path(labs)
    check_sources_match_notebooks(labs)
    names = lab_names(labs / "src")
    for name in names:
        nb = notebook_from_source(labs / "src" / f"{name}.py")
        for cell in nb.cells:
            if is_grade_cell(cell):
                allow_failure(cell)
            if "parameters" in cell.metadata.get("tags", ()):
                cell.source += f"\n{LOCAL_OUT_DIR}"
        (out / "source" / name).mkdir(parents=True, exist_ok=True)
        nbformat.write(nb, out / "source" / name / f"{name}.ipynb")
    (out / "nbgrader_config.py").write_text(NBGRADER_CONFIG)
    return out


def build_course(out: str | Path, labs: str | Path = LABS, wheel: bool = True) -> Path:
    """Write the student, instructor and autograder versions of every lab under `out` (see the module docstring).
    wheel=False leaves the package's wheel out of student/ (tests of the notebooks only)."""
    import nbformat

    out, labs = Path(out), Path(labs)
    check_sources_match_notebooks(labs)
    manifest = {}
    for flavour in ("student", "instructor", "autograder"):
        (out / flavour).mkdir(parents=True, exist_ok=True)
    for name in lab_names(labs / "src"):
        source_nb = notebook_from_source(labs / "src" / f"{name}.py")
        graded = exercises(source_nb)
        if not graded:
            raise RuntimeError(f"labs/src/{name}.py has no graded check cell")
        nbformat.write(student_version(source_nb), out / "student" / f"{name}.ipynb")
        shutil.copyfile(labs / f"{name}.ipynb", out / "instructor" / f"{name}.ipynb")
        nbformat.write(source_nb, out / "autograder" / f"{name}.ipynb")
        manifest[name] = {"exercises": graded, "max_score": sum(e["points"] for e in graded)}
    (out / "autograder" / "manifest.json").write_text(json.dumps(manifest, indent=1) + "\n")
    wheel_name = build_wheel(out / "student").name if wheel else "diffusion_lab-0.1.0-py3-none-any.whl"
    guide = student_guide(wheel_name)
    (out / "student" / "STUDENTS.md").write_text(guide)
    (out / "STUDENTS.md").write_text(guide)
    return out
