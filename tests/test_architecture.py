"""The import rule of ARCHITECTURE.md, checked by parsing every import (top-level and inside functions) with ast.

    batch/ and pipelines/       never import diffusion_lab.widgets (the notebook panels)
    the maths core              imports no notebook package (papermill, ipywidgets, nbformat, jupyter, ...), none of
                                widgets/ batch/ course/ training/, and of the runtime corner only `runtime.call_unet`
                                (denoisers.py), never its tricks (traced_unet, convolution_backend) directly
    widgets/                    the notebook panels import layers 0-1 only: none of batch/ course/ training/
    runtime/                    imports nothing of diffusion_lab outside runtime/
    inversion/                  part of the maths core (the rules above), and each of its files imports only the
                                files listed before it in ARCHITECTURE.md's table of the package (INVERSION_FILES)
    studies/                    an application that imports only layers 0-1 (the labs and pipelines/claims.py call it)
    training/                   an application that imports only layers 0-1: no notebook package, none of widgets/
                                batch/ course/ or the other applications, no runtime trick; each of its files imports
                                only the files listed before it in ARCHITECTURE.md's table (TRAINING_FILES)
    the core package            imports without the notebook packages installed (checked in a subprocess that
                                blocks them with a sys.meta_path finder)
"""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGE = REPO / "diffusion_lab"

NOTEBOOK_PACKAGES = (
    "papermill", "ipywidgets", "ipykernel", "nbformat", "nbclient", "nbval", "jupyter_client", "jupyter_core",
    "jupyter_server", "jupyterlab", "jupytext", "IPython", "notebook",
)
# Everything under diffusion_lab/ that is NOT the maths core: the applications on top of it, and the runtime corner.
APPLICATION_PARTS = ("widgets", "batch", "course", "runtime", "training", "studies")
APPLICATION_MODULES = ("diffusion_lab.demo", "diffusion_lab.__main__", "diffusion_lab.lab_extra")
RUNTIME_TRICKS = ("diffusion_lab.runtime.traced_unet", "diffusion_lab.runtime.convolution_backend")
# The inversion package bottom-up, as ARCHITECTURE.md lists it: a file imports only the files before it.
INVERSION_FILES = ("methods", "step", "model", "fixed_point", "null_text", "direct", "edit_friendly", "latent_level",
                   "result", "pipeline_level", "cache")
# The training package bottom-up, as ARCHITECTURE.md lists it: a file imports only the files before it.
TRAINING_FILES = ("settings", "run_folder", "data", "vae", "locality", "text_encoder", "grounding", "batches", "ema",
                  "evaluation", "export", "unet")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imports_of(path: Path) -> set[str]:
    """Every module `path` imports, absolute: `from ..x import y` in diffusion_lab/a/b.py gives diffusion_lab.x and
    diffusion_lab.x.y (y may be a module)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - (node.level - 1)]
                base_name = ".".join(base + ([node.module] if node.module else []))
            else:
                base_name = node.module or ""
            found.add(base_name)
            found.update(f"{base_name}.{alias.name}" for alias in node.names)
    return found


def python_files(folder: Path):
    return sorted(p for p in folder.rglob("*.py") if "__pycache__" not in p.parts)


def is_core(name: str) -> bool:
    parts = name.split(".")
    return (name != "diffusion_lab" and not (len(parts) > 1 and parts[1] in APPLICATION_PARTS)
            and name not in APPLICATION_MODULES)


def starts_with(name: str, prefixes) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def violations() -> list[str]:
    found = []
    for path in python_files(PACKAGE / "batch") + python_files(REPO / "pipelines"):
        for name in sorted(imports_of(path)):
            if starts_with(name, ("diffusion_lab.widgets",)):
                found.append(f"{path.relative_to(REPO)} imports {name} (batch and pipelines never import widgets)")
    for path in python_files(PACKAGE):
        name = module_name(path)
        imported = imports_of(path)
        if is_core(name):
            for other in sorted(imported):
                if starts_with(other, NOTEBOOK_PACKAGES):
                    found.append(f"{name} imports the notebook package {other}")
                if starts_with(other, [f"diffusion_lab.{part}" for part in APPLICATION_PARTS if part != "runtime"]):
                    found.append(f"{name} imports {other}, an application layer above the maths core")
                if starts_with(other, RUNTIME_TRICKS):
                    found.append(f"{name} imports the runtime trick {other} (call runtime.call_unet instead)")
                if starts_with(other, ("diffusion_lab.runtime",)) and other not in (
                        "diffusion_lab.runtime", "diffusion_lab.runtime.call_unet"):
                    found.append(f"{name} imports {other}: of the runtime corner only call_unet is public")
        if starts_with(name, ("diffusion_lab.training",)):
            above = [f"diffusion_lab.{part}" for part in ("widgets", "batch", "course")] + list(APPLICATION_MODULES)
            for other in sorted(imported):
                if starts_with(other, NOTEBOOK_PACKAGES):
                    found.append(f"{name} imports the notebook package {other} (training imports layers 0-1 only)")
                if starts_with(other, above) or starts_with(other, RUNTIME_TRICKS):
                    found.append(f"{name} imports {other} (training imports layers 0-1 only)")
        if starts_with(name, ("diffusion_lab.studies",)):
            above = [f"diffusion_lab.{part}" for part in ("widgets", "batch", "course", "training")]
            for other in sorted(imported):
                if starts_with(other, NOTEBOOK_PACKAGES) or starts_with(other, above) or starts_with(other, RUNTIME_TRICKS):
                    found.append(f"{name} imports {other} (studies import layers 0-1 only)")
        if starts_with(name, ("diffusion_lab.widgets",)):
            for other in sorted(imported):
                if starts_with(other, [f"diffusion_lab.{part}" for part in ("batch", "course", "training")]):
                    found.append(f"{name} imports {other} (the notebook panels import layers 0-1 only)")
        if name.startswith("diffusion_lab.runtime"):
            for other in sorted(imported):
                if starts_with(other, ("diffusion_lab",)) and not starts_with(other, ("diffusion_lab.runtime",)):
                    found.append(f"{name} imports {other}: the runtime corner depends on nothing of diffusion_lab")
    return found


def test_the_import_rule_holds():
    assert violations() == []


@pytest.mark.parametrize("package, bottom_up, core", [("inversion", INVERSION_FILES, True),
                                                      ("training", TRAINING_FILES, False)])
def test_the_package_is_layered_bottom_up(package, bottom_up, core):
    """Every file of diffusion_lab/<package>/ is in its bottom-up list (so ARCHITECTURE.md describes it), is checked as
    maths core (inversion) or as an application (training) by the rule above, and imports only the package's files
    listed before it."""
    files = {path.stem: path for path in python_files(PACKAGE / package) if path.name != "__init__.py"}
    assert sorted(files) == sorted(bottom_up)
    assert all(is_core(module_name(path)) == core for path in python_files(PACKAGE / package))
    documented = (REPO / "ARCHITECTURE.md").read_text(encoding="utf-8")
    for position, stem in enumerate(bottom_up):
        assert f"| `{stem}.py` |" in documented, f"ARCHITECTURE.md does not describe {package}/{stem}.py"
        inside = {name.split(".")[2] for name in imports_of(files[stem])
                  if name.startswith(f"diffusion_lab.{package}.")}
        assert inside <= set(bottom_up[:position]), f"{package}/{stem}.py imports {sorted(inside)}"


def test_the_rule_sees_a_violation(tmp_path):
    """The parser resolves relative imports, so the rule cannot pass by not seeing them."""
    fake = PACKAGE / "batch" / "rows.py"
    assert "diffusion_lab.shapes.scoring" in imports_of(fake)  # `from ..shapes.scoring import score_edit`
    denoisers = imports_of(PACKAGE / "denoisers.py")
    assert "diffusion_lab.runtime.call_unet" in denoisers and not any(starts_with(n, RUNTIME_TRICKS) for n in denoisers)
    pipeline_level = imports_of(PACKAGE / "inversion" / "pipeline_level.py")  # relative imports one package down
    assert {"diffusion_lab.inversion.methods", "diffusion_lab.models.defaults"} <= pipeline_level
    unet = imports_of(PACKAGE / "training" / "unet.py")  # `from ..posterior import ...`, `from .export import ...`
    assert {"diffusion_lab.posterior", "diffusion_lab.training.export", "diffusion_lab.progress"} <= unet


BLOCKER = textwrap.dedent("""
    import importlib.abc, sys
    BLOCKED = {blocked!r}

    class Blocker(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ModuleNotFoundError(f"No module named {{name!r}} (blocked by the test)", name=name)
            return None

    sys.meta_path.insert(0, Blocker())
""")


def _run_without_notebook_packages(code: str) -> subprocess.CompletedProcess:
    script = BLOCKER.format(blocked=set(NOTEBOOK_PACKAGES)) + textwrap.dedent(code)
    return subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, timeout=300)


def test_the_core_imports_without_the_notebook_packages():
    result = _run_without_notebook_packages("""
        import diffusion_lab, diffusion_lab.editing, diffusion_lab.generation, diffusion_lab.inversion
        import diffusion_lab.shapes.scoring, diffusion_lab.models.defaults, diffusion_lab.batch.manifest
        print("imported")
    """)
    assert result.returncode == 0 and "imported" in result.stdout, result.stderr[-3000:]


def test_a_lab_command_without_the_notebook_packages_says_what_to_install():
    result = _run_without_notebook_packages("""
        import sys
        from diffusion_lab.__main__ import main
        sys.exit(main(["batch", "examples/batch_manifest.yaml", "--out", "/nonexistent/never-written"]))
    """)
    assert result.returncode == 2, result.stderr[-3000:]
    assert "papermill" in result.stderr and 'pip install "diffusion-lab[lab]"' in result.stderr, result.stderr[-3000:]
    assert not Path("/nonexistent/never-written").exists()
