"""End to end in a real browser: JupyterLab on localhost, headless Chromium, lab 04 run, its Run button clicked.

What it proves: the notebook runs in a real kernel under JupyterLab, the widget panel renders in the page, and a
click on "Run edit" reaches the Python callback and puts a new picture into the page.

Needs Debian's Chromium at /usr/bin/chromium (`apt-get install -y chromium`; never `playwright install`) and the
`playwright` Python package. The lab runs with DIFFUSION_LAB_QUICK=1 (smaller experiments, same code).
Marked `browser`; deselect with `-m "not browser"`.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
]
LAB = "04_prompt_to_prompt.ipynb"
NOTEBOOK_TIMEOUT_S = 420  # kernel start + a quick run of every cell on a loaded 2-core machine

pytestmark = pytest.mark.browser


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for_server(url: str, process: subprocess.Popen, timeout: float = 90.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"JupyterLab exited with code {process.returncode} (its log is printed above)")
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"JupyterLab did not answer at {url} within {timeout:.0f} s")


@pytest.fixture(scope="module")
def jupyterlab(tmp_path_factory):
    if not CHROMIUM.exists():
        pytest.skip("Debian's Chromium is missing at /usr/bin/chromium: install it with `apt-get install -y chromium`")
    pytest.importorskip("playwright.sync_api", reason="the playwright Python package is not installed")
    home = tmp_path_factory.mktemp("jupyter")
    port, token = _free_port(), secrets.token_hex(16)
    env = {
        **os.environ,
        "DIFFUSION_LAB_QUICK": "1",
        "DIFFUSION_LAB_NO_PROGRESS": "1",
        "DIFFUSION_LAB_OUT": str(home / "outputs"),
        "HF_HUB_OFFLINE": "1",
        "JUPYTER_CONFIG_DIR": str(home / "config"),
        "JUPYTER_RUNTIME_DIR": str(home / "runtime"),
        "JUPYTERLAB_SETTINGS_DIR": str(home / "settings"),
        "JUPYTERLAB_WORKSPACES_DIR": str(home / "workspaces"),
    }
    # render every cell (no virtual scrolling), so the test can find outputs anywhere in the notebook
    settings = home / "settings" / "@jupyterlab"
    (settings / "notebook-extension").mkdir(parents=True)
    (settings / "notebook-extension" / "tracker.jupyterlab-settings").write_text('{"windowingMode": "none"}')
    # never write the executed notebook back (it is a copy anyway: the repository's stored outputs stay as they are)
    (settings / "docmanager-extension").mkdir(parents=True)
    (settings / "docmanager-extension" / "plugin.jupyterlab-settings").write_text('{"autosave": false}')
    (settings / "apputils-extension").mkdir(parents=True)
    (settings / "apputils-extension" / "notification.jupyterlab-settings").write_text('{"fetchNews": "false"}')
    root = home / "labs"
    shutil.copytree(REPO / "labs", root, ignore=shutil.ignore_patterns(".ipynb_checkpoints"))
    command = [
        sys.executable, "-m", "jupyter", "lab", "--no-browser", f"--port={port}", "--ServerApp.ip=127.0.0.1",
        f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}", "--LabApp.expose_app_in_browser=True",
        "--LabApp.news_url=", "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate",
        "--allow-root",  # CI containers run as root
    ]
    log = open(home / "jupyterlab.log", "w")
    process = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT, cwd=root)
    try:
        try:
            _wait_for_server(f"http://127.0.0.1:{port}/api/status?token={token}", process)
        except Exception:
            log.flush()
            print((home / "jupyterlab.log").read_text()[-4000:])
            raise
        yield {"url": f"http://127.0.0.1:{port}", "token": token, "home": home}
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
        log.close()


def test_lab04_run_button_puts_a_new_picture_in_the_page(jupyterlab):
    from playwright.sync_api import sync_playwright

    profile = jupyterlab["home"] / "chromium-profile"  # a fresh --user-data-dir
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch_persistent_context(
            str(profile), executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS,
            viewport={"width": 1400, "height": 1000},
        )
        try:
            page = browser.new_page()
            page.set_default_timeout(60_000)
            page.goto(f"{jupyterlab['url']}/lab/tree/{LAB}?token={jupyterlab['token']}")
            page.wait_for_function("() => window.jupyterapp !== undefined")
            page.wait_for_selector(".jp-NotebookPanel .jp-Cell", timeout=90_000)
            # the kernel must be up before "run all"
            page.wait_for_function(
                """() => { const w = window.jupyterapp.shell.currentWidget;
                           const k = w && w.sessionContext && w.sessionContext.session && w.sessionContext.session.kernel;
                           return k && k.status === 'idle'; }""",
                timeout=120_000,
            )
            page.evaluate("() => window.jupyterapp.commands.execute('notebook:run-all-cells')")
            button = page.locator("button.jupyter-button", has_text="Run edit")
            button.wait_for(state="visible", timeout=NOTEBOOK_TIMEOUT_S * 1000)
            # wait until the whole notebook has run (the last cell prints where the outputs are)
            page.wait_for_function(
                """() => [...document.querySelectorAll('.jp-OutputArea-output')]
                          .some(o => o.innerText.includes('lab ran in'))""",
                timeout=NOTEBOOK_TIMEOUT_S * 1000,
            )
            panel_images = page.locator(".widget-image")

            def pictures() -> list[str]:
                return [image.get_attribute("src") or "" for image in panel_images.all()]

            before = pictures()
            button.scroll_into_view_if_needed()
            button.click()
            page.wait_for_function(
                """(before) => [...document.querySelectorAll('.widget-image')]
                     .some(i => i.getAttribute('src') && !before.includes(i.getAttribute('src'))
                                && i.naturalWidth > 0)""",
                arg=before,
                timeout=180_000,
            )
            after = pictures()
            assert any(src and src not in before for src in after)
            errors = page.locator(".widget-html", has_text="Error")
            assert errors.count() == 0, errors.first.inner_text()
            if os.environ.get("DIFFUSION_LAB_BROWSER_SCREENSHOT"):  # to look at what the test saw
                button.scroll_into_view_if_needed()
                page.screenshot(path=os.environ["DIFFUSION_LAB_BROWSER_SCREENSHOT"])
        except Exception:
            shot = jupyterlab["home"] / "failure.png"
            try:
                page.screenshot(path=str(shot), full_page=True)
                print(f"screenshot of the page: {shot}")
            except Exception:
                pass
            print("JupyterLab log (end):\n" + (jupyterlab["home"] / "jupyterlab.log").read_text()[-4000:])
            raise
        finally:
            browser.close()
