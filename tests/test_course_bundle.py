"""The student bundle: `course build` writes student/ with all a student needs (the notebooks, STUDENTS.md, the
package's wheel and one install line naming it), and neither the wheel nor the folder carries a lab solution or a
hidden check (hidden checks live in the autograder bundle). Before, STUDENTS.md sent students to `git clone` the
repository, which holds every solution."""

from __future__ import annotations

import re
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
MIN_LENGTH = 20  # shorter lines are generic Python (`return z`, `i += 1`, `return mapper`)
GENERIC = ("from ", "import ", "with ")  # imports and context lines (`with torch.no_grad():`) say nothing of a solution


def _telling(line: str) -> bool:
    return len(line) >= MIN_LENGTH and not line.startswith(GENERIC)


def _normal(line: str) -> str:
    return re.sub(r"\s+", "", line)


def _blocks(begin: str, end: str) -> list[tuple[str, str]]:
    """(function names of the cell, line) of every line between the markers in labs/src."""
    found = []
    for source in sorted((REPO / "labs" / "src").glob("[0-9][0-9]_*.py")):
        for cell in source.read_text().split("\n# %%"):
            functions = " ".join(re.findall(r"^def (\w+)\(", cell, flags=re.M))
            for block in re.findall(rf"### {begin}\n(.*?)### {end}", cell, flags=re.S):
                found += [(functions, line.strip()) for line in block.splitlines() if _telling(line.strip())]
    return found


@pytest.fixture(scope="module")
def bundle(tmp_path_factory):
    from diffusion_lab.course.build import build_course

    out = build_course(tmp_path_factory.mktemp("course"))
    student = out / "student"
    [wheel] = student.glob("diffusion_lab-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        texts = {name: archive.read(name).decode("utf-8", errors="ignore") for name in archive.namelist()
                 if not name.endswith((".safetensors", ".bin", ".png"))}
    texts.update({f"student/{p.name}": p.read_text() for p in student.iterdir() if p.suffix in (".ipynb", ".md")})
    return {"student": student, "wheel": wheel, "texts": texts}


def test_the_student_folder_is_all_a_student_needs(bundle):
    student, wheel = bundle["student"], bundle["wheel"]
    names = sorted(p.name for p in student.iterdir())
    assert names == sorted(["01_naive_noising.ipynb", "02_generalized_posterior.ipynb", "03_ddim_inversion.ipynb",
                            "04_prompt_to_prompt.ipynb", "STUDENTS.md", wheel.name])
    guide = (student / "STUDENTS.md").read_text()
    assert f'pip install "{wheel.name}[lab]"' in guide  # the one install line, naming this wheel
    assert "git clone" not in guide and "Do not clone" in guide and "from your lecturer" in guide
    with zipfile.ZipFile(wheel) as archive:
        files = archive.namelist()
    assert "diffusion_lab/course/checks.py" in files and any("shapes-tiny" in f for f in files)
    assert not [f for f in files if f.startswith(("labs/", "tests/")) or "/labs/" in f], files


def test_no_solution_line_in_the_wheel_or_the_student_folder(bundle):
    """Every solution line of labs/src (20 characters or more, not an import or a `with` line) is searched in every text file of the wheel and
    the student folder. The one place it may occur is the library function that IS the exercise's reference (e.g.
    naive_noising.py for strength_timesteps), which the exercise tells students to read."""
    from diffusion_lab.course.checks import REFERENCES

    lines = _blocks("BEGIN SOLUTION", "END SOLUTION")
    assert len(lines) > 30
    leaks = []
    for functions, line in lines:
        allowed = {target.split(":")[0].replace(".", "/") + ".py" for f in functions.split()
                   for target in REFERENCES.get(f, ())}
        for name, text in bundle["texts"].items():
            if _normal(line) in _normal(text) and name not in allowed:
                leaks.append((name, line))
    assert not leaks, leaks


def test_no_hidden_check_in_the_wheel_or_the_student_folder(bundle):
    """A hidden check's own lines (not those it shares with the visible checks, e.g. `a_t, a_prev = ...`) and its
    functions' names are nowhere in what a student gets."""
    visible = _normal((REPO / "diffusion_lab" / "course" / "checks.py").read_text())
    lines = [(f, line) for f, line in _blocks("BEGIN HIDDEN TESTS", "END HIDDEN TESTS") if _normal(line) not in visible]
    assert len(lines) >= 20
    for functions, line in lines:
        for name, text in bundle["texts"].items():
            assert _normal(line) not in _normal(text), (name, line)
    for name in ("check_forward_marginal_statistics", "check_ddim_step_marginals", "check_three_targets"):
        assert not [n for n, text in bundle["texts"].items() if name in text], name
