"""The notebook packages are an optional extra: `pip install "diffusion-lab[lab]"`.

The maths (sampling, inversion, editing, the shapes world) imports none of them. The commands that run notebooks
(`diffusion-lab lab`, `diffusion-lab demo` with its labs, `diffusion-lab batch`: papermill chunks) check for them
first with `require_lab_packages` and say what to install instead of failing deep inside with an ImportError.
"""

from __future__ import annotations

import importlib

# import name -> what the [lab] extra installs it as
LAB_PACKAGES = {"papermill": "papermill", "nbformat": "nbformat", "ipykernel": "ipykernel", "ipywidgets": "ipywidgets"}
JUPYTERLAB = {"jupyterlab": "jupyterlab"}


class MissingLabPackages(ImportError):
    """A notebook command was run without the [lab] extra installed; the message says what to install."""


def require_lab_packages(command: str, packages: dict[str, str] | None = None) -> None:
    """Raise MissingLabPackages, naming `command` and the install line, when any of `packages` (default:
    LAB_PACKAGES) cannot be imported."""
    packages = LAB_PACKAGES if packages is None else packages
    missing = []
    for module, distribution in packages.items():
        try:
            importlib.import_module(module)
        except ImportError:
            missing.append(distribution)
    if missing:
        raise MissingLabPackages(
            f"`{command}` runs notebooks and needs the notebook packages {', '.join(missing)}, which are not "
            "installed: pip install \"diffusion-lab[lab]\" (in a checkout: pip install -e \".[lab]\", or make setup). "
            "The library itself (sampling, inversion, editing) works without them."
        )
