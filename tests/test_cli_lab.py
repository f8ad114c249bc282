"""`python -m diffusion_lab lab`: --allow-root for containers, a clear message for root without it, and kernels
that do not print transformers' torchvision warning."""

import subprocess
import sys

import diffusion_lab.__main__ as cli


def test_lab_command_passes_allow_root_and_quiets_transformers(monkeypatch):
    monkeypatch.delenv("TRANSFORMERS_VERBOSITY", raising=False)
    command, env = cli.lab_command(port=8899, allow_root=True)
    assert command[1:4] == ["-m", "jupyter", "lab"] and "--allow-root" in command and "8899" in command
    assert env["TRANSFORMERS_VERBOSITY"] == "error"
    assert "--allow-root" not in cli.lab_command()[0]


def test_root_without_allow_root_gets_a_message_that_names_the_flag(monkeypatch, capsys):
    monkeypatch.setattr(cli, "_is_root", lambda: True)
    monkeypatch.setattr(subprocess, "call", lambda *a, **k: (_ for _ in ()).throw(AssertionError("started")))
    assert cli.main(["lab"]) == 2
    assert "--allow-root" in capsys.readouterr().err
    calls = []
    monkeypatch.setattr(subprocess, "call", lambda command, env: calls.append(command) or 0)
    assert cli.main(["lab", "--allow-root"]) == 0 and "--allow-root" in calls[0]


def test_the_torchvision_warning_is_silenced_by_the_lab_environment():
    """What a lab's first cell imports, in a fresh Python with the lab's environment: no torchvision warning."""
    _, env = cli.lab_command()
    code = "import diffusion_lab.models, transformers; transformers.CLIPImageProcessor"
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert "torchvision" not in done.stderr


def test_an_installed_package_uses_the_current_folder_not_site_packages(tmp_path):
    """The package alone (as a wheel installs it: no pyproject.toml or labs/ beside it) opens JupyterLab on the current
    folder and writes a lab's outputs under it, not next to site-packages; in a clone, labs/ and <repo>/outputs."""
    import shutil
    from pathlib import Path

    from diffusion_lab.checkout import checkout_root

    assert checkout_root() == Path(cli.__file__).resolve().parent.parent  # this clone
    assert cli.labs_folder() == checkout_root() / "labs" and cli.labs_folder(tmp_path) == tmp_path
    site = tmp_path / "site-packages"
    shutil.copytree(Path(cli.__file__).resolve().parent, site / "diffusion_lab",
                    ignore=shutil.ignore_patterns("__pycache__", "*.safetensors"))
    work = tmp_path / "student"
    work.mkdir()
    code = ("import os, diffusion_lab.__main__ as cli, diffusion_lab.checkout as c, diffusion_lab.widgets.common as w;"
            "os.environ.pop('DIFFUSION_LAB_OUT', None);"
            "print(c.checkout_root(), cli.labs_folder(), w.lab_out_dir(None, 'lab1'), sep='|')")
    done = subprocess.run([sys.executable, "-c", code], cwd=work, capture_output=True, text=True, timeout=300,
                          env={**__import__("os").environ, "PYTHONPATH": str(site)})
    assert done.returncode == 0, done.stderr
    root, labs, out = done.stdout.strip().splitlines()[-1].split("|")
    assert root == "None" and Path(labs) == work and Path(out) == work / "outputs" / "labs" / "lab1"
    assert (work / "outputs" / "labs" / "lab1").is_dir()
    assert cli.main(["lab", "--dir", str(tmp_path / "missing")]) == 2
    # the course is built from a clone (labs/src holds the solutions): an install says so instead of a traceback
    done = subprocess.run([sys.executable, "-m", "diffusion_lab", "course", "build", "--out", str(work / "course")],
                          cwd=work, capture_output=True, text=True, timeout=300,
                          env={**__import__("os").environ, "PYTHONPATH": str(site)})
    assert done.returncode == 2 and "built from a clone" in done.stderr and "Traceback" not in done.stderr
