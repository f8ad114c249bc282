"""Where the repository is, when the package runs from a clone: labs/, pipelines/ and outputs/ live beside the
package there, but not in an installed wheel (site-packages holds only `diffusion_lab/`)."""

from __future__ import annotations

from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent


def checkout_root() -> Path | None:
    """The repository folder holding this package (it has pyproject.toml and labs/ beside the package), or None
    when the package is installed (e.g. the student bundle's wheel in site-packages)."""
    root = PACKAGE_DIR.parent
    if (root / "pyproject.toml").is_file() and (root / "labs").is_dir():
        return root
    return None


def default_outputs_dir() -> Path:
    """outputs/ of the checkout; for an installed package, outputs/ in the current folder."""
    root = checkout_root()
    return (root if root is not None else Path.cwd()) / "outputs"
