"""Run the four labs headlessly with papermill, or re-execute them in place for nbval.

    python pipelines/run_labs.py                         # all labs -> outputs/labs/<lab>/ (notebook, figures, metrics.json)
    python pipelines/run_labs.py --out /tmp/labs --labs 02 --full-table      # lab 2 with the full DDIM Table 1
    python pipelines/run_labs.py --model stable-diffusion-v1-5/stable-diffusion-v1-5   # on a GPU machine
    python pipelines/run_labs.py -p SEED 3 -p STEPS 20   # any parameter of the labs' `parameters` cells
                                                         # (a name no selected lab has is refused: exit 2)
    python pipelines/run_labs.py --in-place              # re-execute labs/*.ipynb with their default parameters
                                                         # and store the outputs (what nbval checks); widget state
                                                         # and papermill timings are stripped from the files

Headless runs pass INTERACTIVE=False (no widget is displayed; the same computations run) and OUT_DIR; each lab
writes its figures (PNG) and a metrics.json there, next to the executed notebook. `--quick` sets
DIFFUSION_LAB_QUICK=1: every lab shrinks its experiments (what tests and CI use; the code paths are the same).
The last lines printed say where everything is.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
LABS_DIR = REPO / "labs"
LABS = ("01_naive_noising", "02_generalized_posterior", "03_ddim_inversion", "04_prompt_to_prompt")
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
WIDGET_STATE = "widgets"


def select_labs(names) -> list[str]:
    if not names:
        return list(LABS)
    chosen = []
    for name in names:
        matches = [lab for lab in LABS if lab.startswith(name) or lab == Path(name).stem]
        if len(matches) != 1:
            raise SystemExit(f"unknown lab {name!r}; choose among {', '.join(LABS)} (a prefix such as 02 is enough)")
        chosen.append(matches[0])
    return chosen


def parse_value(text: str):
    """A parameter value as Python reads it (numbers, lists, True/None), else the string itself."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def lab_parameters(lab: str) -> set[str]:
    """The names in the lab's `parameters` cell (what papermill can override)."""
    import papermill

    return set(papermill.inspect_notebook(str(LABS_DIR / f"{lab}.ipynb")))


def check_parameter_names(names, labs: list[str], parameters_of=lab_parameters) -> list[str]:
    """Errors for the -p names that no selected lab has (with a "did you mean" from difflib), [] when all are known.
    A name that only some of the selected labs have is allowed (papermill ignores it for the others): one note on
    stderr says which labs use it."""
    import difflib

    known = {lab: parameters_of(lab) for lab in labs}
    every_name = sorted(set().union(*known.values()))
    errors = []
    for name in dict.fromkeys(names):  # each name once, in order
        having = [lab for lab in labs if name in known[lab]]
        if not having:
            close = difflib.get_close_matches(name, every_name, n=1) or difflib.get_close_matches(
                name.upper(), every_name, n=1)
            hint = f"; did you mean {close[0]}?" if close else f"; the parameters are: {', '.join(every_name)}"
            others = [lab for lab in LABS if lab not in labs and name in parameters_of(lab)]
            if others:
                hint = f"; it is a parameter of {', '.join(others)} only (select it with --labs)"
            errors.append(f"-p {name}: not a parameter of {', '.join(labs)}{hint}")
        elif len(having) < len(labs):
            print(f"note: -p {name} is a parameter of {', '.join(having)} only; the other labs ignore it",
                  file=sys.stderr)
    return errors


def clean_notebook(path: Path) -> None:
    """Strip what must not be stored: widget state and widget views (they cannot render without a kernel), and
    papermill's per-run metadata (timings, paths). Outputs stay: nbval compares them."""
    import nbformat

    nb = nbformat.read(path, as_version=4)
    nb.metadata.pop(WIDGET_STATE, None)
    nb.metadata.pop("papermill", None)
    for cell in nb.cells:
        cell.metadata.pop("papermill", None)
        cell.metadata.pop("execution", None)
        if cell.cell_type != "code":
            continue
        outputs = []
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            if WIDGET_VIEW in data:
                continue
            if output.get("output_type") == "stream" and output.get("name") == "stderr":
                continue  # progress bars and warnings: machine-dependent noise
            outputs.append(output)
        cell.outputs = outputs
    nbformat.write(nb, path)


def execute(lab: str, output_path: Path, parameters: dict | None, cwd: Path, timeout: int | None) -> float:
    import papermill

    from diffusion_lab.batch.kernels import EncryptedKernelManager

    start = time.perf_counter()
    papermill.execute_notebook(
        str(LABS_DIR / f"{lab}.ipynb"), str(output_path), parameters=parameters or None, cwd=str(cwd),
        kernel_name="python3", progress_bar=False, execution_timeout=timeout, kernel_manager_class=EncryptedKernelManager,
    )
    return time.perf_counter() - start


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=str(REPO / "outputs" / "labs"), help="output folder (one subfolder per lab)")
    parser.add_argument("--labs", nargs="*", help="labs to run (prefixes: 01 02 03 04); default all")
    parser.add_argument("--model", help="MODEL parameter (default: the labs' own, shapes-tiny)")
    parser.add_argument("--full-table", action="store_true", help="lab 2: the full DDIM Table 1 (S up to 1000)")
    parser.add_argument("--quick", action="store_true", help="small experiments (DIFFUSION_LAB_QUICK=1)")
    parser.add_argument("-p", "--parameter", nargs=2, action="append", default=[], metavar=("NAME", "VALUE"),
                        help="any parameter of the labs' parameters cell, e.g. -p SEED 3")
    parser.add_argument("--in-place", action="store_true",
                        help="execute labs/*.ipynb themselves with default parameters and keep the outputs (for nbval)")
    parser.add_argument("--timeout", type=int, default=None, help="seconds per cell (default: none)")
    args = parser.parse_args(argv)

    os.environ.setdefault("DIFFUSION_LAB_NO_PROGRESS", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    if args.quick:
        os.environ["DIFFUSION_LAB_QUICK"] = "1"
    labs = select_labs(args.labs)
    if args.parameter and not args.in_place:  # before anything runs: a misspelt name would be ignored by papermill
        errors = check_parameter_names([name for name, _ in args.parameter], labs)
        if errors:
            parser.error("\n  ".join(errors))
    times = {}
    if args.in_place:
        if args.model or args.full_table or args.parameter:
            raise SystemExit("--in-place runs the labs with their default parameters: drop --model/--full-table/-p")
        for lab in labs:
            path = LABS_DIR / f"{lab}.ipynb"
            print(f"executing {path} in place ...", flush=True)
            times[lab] = execute(lab, path, None, LABS_DIR, args.timeout)
            clean_notebook(path)
            print(f"  {lab}: {times[lab]:.0f} s", flush=True)
        print("\nStored outputs updated in:", *(str(LABS_DIR / f"{lab}.ipynb") for lab in labs), sep="\n  ")
        return 0

    out = Path(args.out).resolve()
    for lab in labs:
        folder = out / lab
        folder.mkdir(parents=True, exist_ok=True)
        parameters = {"INTERACTIVE": False, "OUT_DIR": str(folder)}
        if args.model:
            parameters["MODEL"] = args.model
        if args.full_table and lab.startswith("02"):
            parameters["FULL_TABLE"] = True
        for name, value in args.parameter:
            parameters[name] = parse_value(value)
        notebook = folder / f"{lab}.ipynb"
        print(f"running {lab} (headless) ...", flush=True)
        times[lab] = execute(lab, notebook, parameters, LABS_DIR, args.timeout)
        clean_notebook(notebook)
        print(f"  {lab}: {times[lab]:.0f} s", flush=True)
    (out / "run_times.json").write_text(json.dumps({k: round(v, 1) for k, v in times.items()}, indent=1) + "\n")
    print(f"\nLab results are in {out}:")
    for lab in labs:
        folder = out / lab
        figures = sorted(p.name for p in folder.glob("*.png"))
        print(f"  {lab} ({times[lab]:.0f} s)")
        print(f"    executed notebook: {folder / (lab + '.ipynb')}")
        print(f"    metrics:           {folder / 'metrics.json'}")
        print(f"    figures:           {', '.join(figures) if figures else '(none)'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
