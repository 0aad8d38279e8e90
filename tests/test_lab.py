"""JupyterLab as a user meets it after `make lab PROFILE=smoke`: a real JupyterLab server on loopback
with a token, notebook 04 opened in headless Chromium (selenium), Run > Run All Cells, saved, and
every cell ran without an error, on the smoke chain's finished run; the server is stopped."""

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest

from kvasir_utils import artefacts, profiles
from kvasir_utils.config import PROJECT_ROOT

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("chain")]
TOKEN = "kvasir-test-token"


def test_profiles_of_notebooks_run_by_hand(tmp_path):
    profiles.write_lab_session("smoke", ["eval.seed=3"], tmp_path)
    assert profiles.notebook_profile(None, ["a=1"], tmp_path) == ("smoke", ["eval.seed=3", "a=1"])
    assert profiles.notebook_profile(None, [], tmp_path / "elsewhere") == ("paper", [])  # no session: the paper's
    assert profiles.notebook_profile("smoke", ["a=1"], tmp_path) == ("smoke", ["a=1"])  # papermill's wins
    with pytest.raises(Exception, match="no-such-profile"):
        profiles.write_lab_session("no-such-profile", [], tmp_path)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def lab(smoke_chain, tmp_path):
    """A JupyterLab server on loopback over a folder holding notebook 04 and the session file that
    `make lab PROFILE=smoke` writes (the chain's settings); yields (folder, url) and stops it."""
    folder = tmp_path / "notebooks"
    folder.mkdir()
    shutil.copy(PROJECT_ROOT / "notebooks" / "04_evaluate.ipynb", folder)
    profiles.write_lab_session("smoke", smoke_chain.overrides, folder)
    port = _free_port()
    env = {**os.environ, "JUPYTER_CONFIG_DIR": str(tmp_path / "config"), "JUPYTER_RUNTIME_DIR": str(tmp_path / "rt")}
    with open(tmp_path / "server.log", "w") as log:
        server = subprocess.Popen(
            [str(Path(sys.executable).parent / "jupyter"), "lab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
             f"--IdentityProvider.token={TOKEN}", "--allow-root", f"--ServerApp.root_dir={folder}",
             f"--LabApp.user_settings_dir={tmp_path / 'settings'}", f"--LabApp.workspaces_dir={tmp_path / 'ws'}"],
            env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.time() + 60
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), 1).close()
                    break
                except OSError:
                    assert time.time() < deadline and server.poll() is None, (tmp_path / "server.log").read_text()
                    time.sleep(0.5)
            yield folder, f"http://127.0.0.1:{port}/lab/tree/04_evaluate.ipynb?token={TOKEN}"
        finally:
            server.terminate()
            server.wait(20)


def _until(check, seconds: float, what: str):
    deadline = time.time() + seconds
    while not (found := check()):
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.5)
    return found


def _menu(driver, menu: str, command: str) -> None:
    from selenium.webdriver.common.by import By

    next(e for e in driver.find_elements(By.CSS_SELECTOR, ".lm-MenuBar-itemLabel") if e.text == menu).click()
    _until(lambda: driver.find_elements(By.CSS_SELECTOR, f'li.lm-Menu-item[data-command="{command}"]'), 10,
           f"{menu} > {command}")[0].click()


def test_run_all_in_jupyterlab_works_on_the_smoke_run_without_editing_a_cell(lab, driver, smoke_chain):
    folder, url = lab
    stored = nbformat.read(folder / "04_evaluate.ipynb", as_version=4)
    assert "PROFILE = None" in stored.cells[1].source
    code_cells = sum(cell.cell_type == "code" for cell in stored.cells)
    driver.get(url)

    def status():
        return driver.execute_script("const e = document.querySelector('.jp-Notebook-ExecutionIndicator');"
                                     "return e ? e.getAttribute('data-status') : null")

    def prompts():
        return driver.execute_script("return Array.from(document.querySelectorAll("
                                     "'.jp-Notebook .jp-CodeCell .jp-InputPrompt')).map(e => e.textContent)")

    _until(lambda: len(prompts()) == code_cells and status() == "idle", 120, "the notebook and its kernel")
    _menu(driver, "Run", "runmenu:run-all")
    _until(lambda: all(p.strip("[]: ") and "*" not in p for p in prompts()) and status() == "idle", 600,
           "every cell to run")
    driver.save_screenshot(str(folder / "jupyterlab.png"))
    _menu(driver, "File", "docmanager:save")
    ran = _until(lambda: (nb := nbformat.read(folder / "04_evaluate.ipynb", as_version=4)).cells[2].get("outputs")
                 and nb, 30, "the notebook to be saved")
    errors = [o for cell in ran.cells for o in cell.get("outputs", []) if o["output_type"] == "error"]
    assert errors == [], errors
    assert all(cell.execution_count for cell in ran.cells if cell.cell_type == "code")
    shown = "".join(str(o.get("data", {})) for cell in ran.cells for o in cell.get("outputs", []))
    assert "smoke" in shown and (folder / artefacts.LAB_SESSION).exists()
