"""Jupyter kernels of our headless runs (papermill: `run_labs.py`, batch chunks) and of `python -m diffusion_lab lab`.

A kernel talks to its client over ZMQ sockets on localhost TCP. jupyter_client >= 8.9 can encrypt them with
CurveZMQ keys it provisions itself (Jupyter enhancement proposal "Transport encryption for ZMQ communication"),
and ipykernel >= 7.3 warns on every start of a kernel that runs without them ("Kernel is running over TCP without
encryption ..."). We ask for "auto": keys whenever the kernelspec declares support (ipykernel's does) and pyzmq
has Curve; otherwise the kernel runs exactly as before (older jupyter_client, a pyzmq without libsodium).

The manager is jupyter_client's ASYNC one, the class nbclient (papermill) expects: with the blocking manager its
client's `get_msg(timeout=None)` blocks nbclient's event loop, so the once-a-second "is the kernel alive?" check
never runs and a chunk whose kernel died waited forever (measured: still hung after 11 minutes).
"""

from __future__ import annotations

from jupyter_client import AsyncKernelManager, KernelManager

ENCRYPTION = "auto"


def curve_available() -> bool:
    """True when this jupyter_client has transport encryption and pyzmq has CurveZMQ (libsodium)."""
    import zmq

    return KernelManager.class_traits().get("transport_encryption") is not None and bool(zmq.has("curve"))


class EncryptedKernelManager(AsyncKernelManager):
    """An AsyncKernelManager whose kernels get CurveZMQ keys when they can (transport_encryption "auto").

    Pass it to papermill: `papermill.execute_notebook(..., kernel_manager_class=EncryptedKernelManager)`: a kernel
    that dies is then noticed within about a second (nbclient raises DeadKernelError)."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        if curve_available() and self.transport_encryption == "disabled":
            self.transport_encryption = ENCRYPTION


def jupyter_server_arguments() -> list[str]:
    """Command-line configuration that gives JupyterLab's kernels the same policy (empty where the installed
    jupyter_server or pyzmq cannot encrypt: its default then applies, without an unknown-option warning)."""
    try:
        from jupyter_server.services.kernels.kernelmanager import MappingKernelManager
    except ImportError:
        return []
    if MappingKernelManager.class_traits().get("transport_encryption") is None or not curve_available():
        return []
    return [f"--MappingKernelManager.transport_encryption={ENCRYPTION}"]
