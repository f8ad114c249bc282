"""Command line: `python -m diffusion_lab {demo,lab,batch}` (the Makefile's targets call these).

    python -m diffusion_lab demo [--out outputs/demo]   headless tour: shapes world, samplers, built-in model,
                                                         then the four labs run by papermill (outputs/labs)
    python -m diffusion_lab lab [--dir DIR]              JupyterLab on labs/ (a clone) or DIR / the current folder
    python -m diffusion_lab batch MANIFEST --out DIR     batch editing through papermill (README: Batch editing)
    python -m diffusion_lab course build --out DIR       student / instructor / autograder versions of the labs
    python -m diffusion_lab course grade --submissions DIR --out scores.csv   grade submitted labs (README: Teaching)
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path


def labs_folder(folder: str | os.PathLike | None = None) -> Path:
    """Where `lab` opens JupyterLab: `folder` if given, else the clone's labs/, else (an installed package, e.g. the
    student bundle's wheel) the current folder."""
    from .checkout import checkout_root

    if folder is not None:
        path = Path(folder)
        if not path.is_dir():
            raise FileNotFoundError(f"--dir {folder}: no such folder; give the folder that holds the lab notebooks")
        return path
    root = checkout_root()
    return root / "labs" if root is not None else Path.cwd()


def _is_root() -> bool:
    return hasattr(os, "geteuid") and os.geteuid() == 0


def lab_command(port: int | None = None, allow_root: bool = False, folder=None) -> tuple[list[str], dict]:
    """The JupyterLab command line and environment of `python -m diffusion_lab lab`. Its kernels inherit the
    environment: TRANSFORMERS_VERBOSITY=error silences transformers' "requires torchvision" warning in every
    lab's first cell, as the headless runs do (set it yourself to see transformers' warnings)."""
    from .batch.kernels import jupyter_server_arguments

    command = [sys.executable, "-m", "jupyter", "lab", str(labs_folder(folder)), *jupyter_server_arguments()]
    if port:
        command += ["--port", str(port)]
    if allow_root:
        command.append("--allow-root")
    env = {**os.environ}
    env.setdefault("TRANSFORMERS_VERBOSITY", "error")
    return command, env


def _check_lab_packages(args) -> None:
    """The notebook commands need the [lab] extra: say so before any work starts."""
    from .lab_extra import JUPYTERLAB, LAB_PACKAGES, require_lab_packages

    if args.command == "lab":
        require_lab_packages("diffusion-lab lab", {**LAB_PACKAGES, **JUPYTERLAB})
    elif args.command == "demo" and not args.no_labs:
        require_lab_packages("diffusion-lab demo (its labs; --no-labs skips them)")
    elif args.command == "batch" and not getattr(args, "validate_only", False):
        require_lab_packages("diffusion-lab batch (--validate-only needs none)")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="diffusion-lab", description="Image editing with diffusion models: labs, batch editing, benchmarks.")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="run the headless demo and print where its results are")
    demo.add_argument("--out", default="outputs/demo")
    demo.add_argument("--seed", type=int, default=0)
    demo.add_argument("--labs-out", default="outputs/labs", help="where the executed labs, figures and metrics go")
    demo.add_argument("--quick-labs", action="store_true", help="smaller lab experiments (about 2 minutes for all four)")
    demo.add_argument("--no-labs", action="store_true", help="skip running the labs")
    lab = sub.add_parser("lab", help="open JupyterLab on labs/ (in a clone) or on the current folder")
    lab.add_argument("--dir", default=None, help="the folder to open (default: the clone's labs/, or the current "
                                                 "folder when the package is installed, e.g. from the student bundle)")
    lab.add_argument("--port", type=int, default=None)
    lab.add_argument("--allow-root", action="store_true",
                     help="let JupyterLab run as root (containers); it refuses to otherwise")
    from .batch.runner import add_arguments as add_batch_arguments

    add_batch_arguments(sub.add_parser("batch", help="edit many images from a CSV/YAML manifest (papermill, Dask)"))
    from .course.grade import add_arguments as add_course_arguments

    add_course_arguments(sub.add_parser("course", help="build the course's lab versions; grade submissions"))
    args = parser.parse_args(argv)
    try:
        _check_lab_packages(args)
    except ImportError as error:  # lab_extra.MissingLabPackages: what to install
        print(f"error: {error}", file=sys.stderr)
        return 2

    if args.command == "demo":
        from .demo import run_demo, run_labs_demo

        out = run_demo(args.out, seed=args.seed)
        if not args.no_labs:
            run_labs_demo(args.labs_out, ["--quick"] if args.quick_labs else [])
        print(f"\nDemo results are in {out.resolve()}")
        if not args.no_labs:
            print(f"Executed labs, their figures and metrics.json are in {Path(args.labs_out).resolve()}")
        return 0
    if args.command == "lab":
        if _is_root() and not args.allow_root:
            print("error: you are root, and JupyterLab refuses to run as root; run as another user, or pass "
                  "--allow-root (e.g. in a container): python -m diffusion_lab lab --allow-root", file=sys.stderr)
            return 2
        try:
            command, env = lab_command(port=args.port, allow_root=args.allow_root, folder=args.dir)
        except FileNotFoundError as error:
            print(f"error: {error}", file=sys.stderr)
            return 2
        return subprocess.call(command, env=env)
    if args.command == "batch":
        from .batch.runner import run_from_args

        return run_from_args(args)
    if args.command == "course":
        from .course.grade import run_from_args as run_course

        return run_course(args)
    return 1


if __name__ == "__main__":
    sys.exit(main())
