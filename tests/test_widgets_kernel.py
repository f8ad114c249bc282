"""Lab panels inside a REAL IPython kernel (what JupyterLab runs): a failed run must be reported as a failure.

Outside IPython (tests/test_widgets.py) an exception leaving `with output_widget:` propagates; inside IPython the
Output widget's __exit__ prints the traceback and swallows it, so Panel.run turned the status green "done (7.4 s)"
over a traceback. Only a kernel shows that, so this test starts one (jupyter_client), builds a panel there, clicks
Run with a bad (empty) prompt and reads the panel's widgets back."""

import json
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent

CODE = r"""
import json
from diffusion_lab.models.tiny_random import build_tiny_random_pipeline
from diffusion_lab.widgets.posterior_panel import SamplerPanel

panel = SamplerPanel(build_tiny_random_pipeline(seed=0), ["a large red circle on a gray background"], num_steps=5)
panel.button.click()
good = {"style": panel.progress.bar.bar_style, "status": panel.progress.status.value,
        "picture": panel.samples.picture is not None, "seconds": panel.last_seconds}
panel.prompts.value = ""  # a bad prompt
panel.button.click()
first_failure = len(panel.log.outputs)
panel.button.click()  # again: the log must not stack a second message
bad = {"style": panel.progress.bar.bar_style, "status": panel.progress.status.value,
       "error": type(panel.error).__name__, "picture": panel.samples.picture is not None,
       "image_hidden": panel.samples.image.layout.display == "none",
       "log_outputs": [first_failure, len(panel.log.outputs)],
       "labels": sorted({w.style.description_width for w in (panel.prompts, panel.steps, panel.seed)})}
print("RESULT " + json.dumps({"good": good, "bad": bad}))
"""


@pytest.fixture(scope="module")
def kernel():
    from jupyter_client.manager import start_new_kernel

    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    manager, client = start_new_kernel(kernel_name="python3", env=env, cwd=str(REPO))
    yield client
    client.stop_channels()
    manager.shutdown_kernel(now=True)


def run_in(client, code: str) -> tuple[str, list]:
    streams, errors = [], []

    def collect(message):
        kind, content = message["msg_type"], message["content"]
        if kind == "stream":
            streams.append(content["text"])
        elif kind == "error":
            errors.append("\n".join(content["traceback"]))

    reply = client.execute_interactive(code, timeout=300, output_hook=collect)
    assert reply["content"]["status"] == "ok", errors
    return "".join(streams), errors


def test_a_failed_panel_run_in_a_kernel_is_red_with_one_line_and_clears_its_pictures(kernel):
    text, errors = run_in(kernel, CODE)
    line = next(line for line in text.splitlines() if line.startswith("RESULT "))
    result = json.loads(line[len("RESULT "):])
    good, bad = result["good"], result["bad"]
    assert good["style"] == "success" and good["status"].startswith("done") and good["picture"]
    assert bad["style"] == "danger", bad  # was "success" ("done (...)") in a kernel
    assert "failed: ValueError: write at least one prompt" in bad["status"] and "\n" not in bad["status"]
    assert "done" not in bad["status"] and bad["error"] == "ValueError"
    assert not bad["picture"] and bad["image_hidden"]  # the good run's samples are gone
    assert bad["log_outputs"][1] <= bad["log_outputs"][0] <= 1  # no traceback stacking up in the log
    assert bad["labels"] == ["initial"]  # labels shown whole
    assert not errors
