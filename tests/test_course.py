"""The course material: lab sources (labs/src, jupytext) against the committed notebooks, exercises, grading."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import nbformat
import pytest

REPO = Path(__file__).resolve().parent.parent
LABS = REPO / "labs"


def _build_labs():
    spec = importlib.util.spec_from_file_location("build_labs", LABS / "build_labs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


build_labs = _build_labs()


def test_every_lab_has_a_source_and_a_notebook():
    names = build_labs.lab_names()
    assert names == ["01_naive_noising", "02_generalized_posterior", "03_ddim_inversion", "04_prompt_to_prompt"]
    assert sorted(p.stem for p in LABS.glob("0*.ipynb")) == names


@pytest.mark.parametrize("name", build_labs.lab_names())
def test_notebook_matches_its_source(name):
    """Every committed .ipynb has exactly the cells (type, text, tags, nbgrader metadata) of labs/src/<name>.py:
    after editing a source, run `python labs/build_labs.py` (then `python pipelines/run_labs.py --in-place`)."""
    from_source = build_labs.cell_signature(build_labs.notebook_from_source(build_labs.SOURCES / f"{name}.py"))
    committed = build_labs.cell_signature(nbformat.read(LABS / f"{name}.ipynb", as_version=4))
    assert len(committed) == len(from_source), f"{name}: {len(committed)} cells, its source has {len(from_source)}"
    for index, (cell, source_cell) in enumerate(zip(committed, from_source)):
        assert cell == source_cell, f"{name}: cell {index} differs from labs/src/{name}.py; run labs/build_labs.py"


def test_cell_signature_sees_a_changed_tag():
    nb = build_labs.notebook_from_source(build_labs.SOURCES / "01_naive_noising.py")
    before = build_labs.cell_signature(nb)
    parameters = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", ()))
    parameters.metadata["tags"] = []
    assert build_labs.cell_signature(nb) != before


def test_no_local_path_in_committed_notebooks():
    for path in LABS.glob("0*.ipynb"):
        text = path.read_text()
        for marker in ("/work/", "/home/", "/Users/", "/tmp/"):
            assert marker not in text, f"{path.name} stores a local path ({marker}...)"
