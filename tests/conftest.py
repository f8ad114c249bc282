import importlib.util
import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

# Progress bars off in tests (and in anything the tests start).
os.environ.setdefault("DIFFUSION_LAB_NO_PROGRESS", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


@pytest.fixture(autouse=True, scope="session")
def one_torch_thread():
    """The tests' tensors are tiny: one thread is faster than two, and much faster on a shared 2-core machine."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture
def model_without_positions(tmp_path):
    """A copy of the built-in model folder whose training_info.json lists the position words as untrained (as
    shapes-tiny's did before it learnt positions at 37,072 steps): what refusing untrained words is tested on."""
    import json
    import shutil

    from diffusion_lab.models.shapes_tiny import MODEL_DIR

    folder = tmp_path / "model"
    shutil.copytree(MODEL_DIR, folder)
    info = json.loads((folder / "training_info.json").read_text())
    info["untrained_words"] = {"words": ["top", "bottom", "left", "right", "center"],
                               "why": "its training captions never named positions."}
    (folder / "training_info.json").write_text(json.dumps(info))
    return folder


@pytest.fixture(scope="session")
def import_script():
    """Import a script of the repository (pipelines/*.py are scripts, not package modules) by its path from the
    repository root, e.g. import_script("pipelines/bench_p2p.py"). The module is registered in sys.modules under
    its file name while the tests run (dataclasses look their module up there)."""
    imported = []

    def load(relative_path: str):
        path = REPO / relative_path
        spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[path.stem] = module
        imported.append(path.stem)
        spec.loader.exec_module(module)
        return module

    yield load
    for name in imported:
        sys.modules.pop(name, None)
