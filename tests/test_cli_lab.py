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
