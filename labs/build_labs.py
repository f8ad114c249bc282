"""Write the four lab notebooks (labs/0*.ipynb) from their jupytext sources (labs/src/0*.py).

    python labs/build_labs.py [02 ...]        # rewrite the notebooks (or only some) from labs/src, WITHOUT outputs
    python labs/build_labs.py --keep-outputs  # keep the stored outputs of code cells whose source did not change
    python pipelines/run_labs.py --in-place   # then execute them and store outputs for nbval

The sources are the labs: an instructor edits labs/src/NN_name.py (jupytext "percent" format: `# %%` starts a code
cell, `# %% [markdown]` a text cell, `# %% tags=["parameters"]` keeps a cell's tags), never the JSON.
tests/test_course.py checks that every committed notebook's cells match its source.

Conventions of every lab:
- a cell tagged `parameters` (papermill) with INTERACTIVE, MODEL, SEED, STEPS, GUIDANCE, the sizes of the
  experiments and OUT_DIR; derived values are computed in the next cell;
- every code cell is short and only calls diffusion_lab (experiments and panels live in diffusion_lab/widgets/);
- widget and timing cells start with `# NBVAL_IGNORE_OUTPUT`; cells whose printed numbers do not depend on the
  network (schedules, the Monte Carlo check) start with `# NBVAL_CHECK_OUTPUT` (the labs are checked with
  nbval-lax, which compares only those); check cells (`assert ...`) must run without error;
- INTERACTIVE=False displays no widget; the same computations run and figures + metrics.json go to OUT_DIR;
- the cell after `parameters` is tagged `setup`, the first cell of the exercises section `exercises`, the last
  cell `finish` (grading runs parameters + setup + the exercises section, see diffusion_lab/course/grade.py);
- exercises (see diffusion_lab/course) are cells with nbgrader metadata; solution regions sit between
  `### BEGIN SOLUTION` and `### END SOLUTION` and are removed from the student version, hidden checks sit between
  `### BEGIN HIDDEN TESTS` and `### END HIDDEN TESTS`.
"""

from __future__ import annotations

import sys
from pathlib import Path

LABS = Path(__file__).resolve().parent
sys.path.insert(0, str(LABS.parent))  # this checkout's diffusion_lab, also when run as a script
from diffusion_lab.course.build import cell_signature, lab_names, notebook_from_source  # noqa: E402

SOURCES = LABS / "src"


def keep_outputs(new, old) -> int:
    """Copy the outputs of `old`'s code cells into `new`'s code cells with the same source (in order); returns how
    many code cells of `new` have none to take (they need `python pipelines/run_labs.py --in-place`)."""
    stored = {}
    for cell in old.cells:
        if cell.cell_type == "code":
            stored.setdefault(cell.source, []).append(cell)
    missing = 0
    for cell in new.cells:
        if cell.cell_type != "code":
            continue
        candidates = stored.get(cell.source)
        if candidates:
            previous = candidates.pop(0)
            cell.outputs, cell.execution_count = previous.outputs, previous.execution_count
        else:
            missing += 1
    return missing


def main(argv=None) -> int:
    import argparse

    import nbformat

    parser = argparse.ArgumentParser(description="Write the lab notebooks (without outputs) from labs/src.")
    parser.add_argument("labs", nargs="*", help="prefixes of the labs to write (default: all), e.g. 02")
    parser.add_argument("--keep-outputs", action="store_true",
                        help="keep the stored outputs of code cells whose source is unchanged")
    args = parser.parse_args(argv)
    for name in lab_names():
        if args.labs and not any(name.startswith(prefix) for prefix in args.labs):
            continue
        path = LABS / f"{name}.ipynb"
        nb = notebook_from_source(SOURCES / f"{name}.py")
        note = ""
        if args.keep_outputs and path.exists():
            missing = keep_outputs(nb, nbformat.read(path, as_version=4))
            note = f" ({missing} code cells without stored outputs)" if missing else " (outputs kept)"
        nbformat.write(nb, path)
        print(f"wrote {path}{note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
