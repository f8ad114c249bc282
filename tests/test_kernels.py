"""Kernels of headless runs and JupyterLab ask for CurveZMQ transport encryption (diffusion_lab.batch.kernels)."""

import nbformat
import pytest

from diffusion_lab.batch.kernels import EncryptedKernelManager, curve_available, jupyter_server_arguments

WARNING = "running over TCP without encryption"


def _run(tmp_path, **kwargs):
    import papermill

    notebook = nbformat.v4.new_notebook()
    notebook.cells = [nbformat.v4.new_code_cell("print(6 * 7)")]
    nbformat.write(notebook, tmp_path / "in.ipynb")
    papermill.execute_notebook(str(tmp_path / "in.ipynb"), str(tmp_path / "out.ipynb"), kernel_name="python3",
                               progress_bar=False, cwd=str(tmp_path), **kwargs)
    return nbformat.read(tmp_path / "out.ipynb", as_version=4).cells[0].outputs[0]["text"]


@pytest.mark.skipif(not curve_available(), reason="this jupyter_client / pyzmq cannot encrypt kernel sockets")
def test_papermill_kernels_run_encrypted_and_without_the_warning(tmp_path, capfd):
    """The kernel gets Curve keys and runs the notebook; ipykernel's plain-TCP warning is gone (and is there,
    where this ipykernel emits it, for jupyter_client's default manager: the test can tell the two apart)."""
    import ipykernel

    assert EncryptedKernelManager().transport_encryption == "auto"
    assert _run(tmp_path, kernel_manager_class=EncryptedKernelManager) == "42\n"
    assert WARNING not in capfd.readouterr().err
    if tuple(int(p) for p in ipykernel.__version__.split(".")[:2]) >= (7, 3):
        assert _run(tmp_path) == "42\n"
        assert WARNING in capfd.readouterr().err


def test_jupyterlab_gets_the_same_policy():
    """`python -m diffusion_lab lab` passes a setting jupyter_server's kernel manager takes (or none at all)."""
    from traitlets.config.loader import KVArgParseConfigLoader

    arguments = jupyter_server_arguments()
    if not arguments:
        pytest.skip("this jupyter_server / pyzmq cannot encrypt kernel sockets")
    from jupyter_server.services.kernels.kernelmanager import MappingKernelManager

    config = KVArgParseConfigLoader(arguments).load_config()
    assert MappingKernelManager(config=config).transport_encryption == "auto"
