"""JupyterLab as a user meets it after `make lab PROFILE=...`: a real JupyterLab server on loopback
with a token over a folder of notebooks and the session file `make lab` writes, a notebook opened in
headless Chromium (``tools.chromium``), Run > Run All Cells, saved. tests/test_lab.py holds the
result to "every cell ran without an error"; `make screenshots` keeps the picture in docs/images.
Development tooling, not shipped.

    python -m tools.jupyterlab --profile smoke docs/images
"""

from __future__ import annotations

import argparse
import contextlib
import json
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import nbformat

from kvasir_utils import artefacts, profiles
from kvasir_utils.config import PROJECT_ROOT
from kvasir_utils.errors import KvasirError
from kvasir_utils.run.notebooks import checkout_environment
from tools import chromium

TOKEN = "kvasir-lab-token"
NOTEBOOK = "04_evaluate.ipynb"  # the page with the most figures; the screenshot's and the test's


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def until(check, seconds: float, what: str):
    """``check()``'s first truthy value, polled; a clear error after ``seconds``."""
    deadline = time.time() + seconds
    while not (found := check()):
        if time.time() > deadline:
            raise KvasirError(f"timed out after {seconds:.0f} s waiting for {what}")
        time.sleep(0.5)
    return found


@contextlib.contextmanager
def open_lab(folder: Path, scratch: Path):
    """A JupyterLab server on loopback over ``folder`` (its settings, workspaces and log in
    ``scratch``); yields its base URL with the token and stops it."""
    port = free_port()
    env = {**checkout_environment(), "JUPYTER_CONFIG_DIR": str(scratch / "config"),
           "JUPYTER_RUNTIME_DIR": str(scratch / "rt")}  # its kernels import this checkout, as make lab's
    log_path = scratch / "server.log"
    # no "notified about Jupyter news?" pop-up over the notebook (JupyterLab would ask the network)
    news = scratch / "settings" / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings"
    news.parent.mkdir(parents=True, exist_ok=True)
    news.write_text(json.dumps({"fetchNews": "false", "checkForUpdates": False}))
    with open(log_path, "w") as log:
        server = subprocess.Popen(
            [str(Path(sys.executable).parent / "jupyter"), "lab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
             f"--IdentityProvider.token={TOKEN}", "--allow-root", f"--ServerApp.root_dir={folder}",
             f"--LabApp.user_settings_dir={scratch / 'settings'}", f"--LabApp.workspaces_dir={scratch / 'ws'}"],
            env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.time() + 60
            while True:
                try:
                    socket.create_connection(("127.0.0.1", port), 1).close()
                    break
                except OSError:
                    if time.time() > deadline or server.poll() is not None:
                        raise KvasirError(f"JupyterLab did not start: {log_path.read_text()[-2000:]}") from None
                    time.sleep(0.5)
            yield f"http://127.0.0.1:{port}"
        finally:
            server.terminate()
            try:
                server.wait(20)
            except subprocess.TimeoutExpired:
                server.kill()


def lab_folder(folder: Path, profile: str, overrides: list[str], notebook: str = NOTEBOOK) -> Path:
    """``folder`` as `make lab` leaves notebooks/: the stored notebook and the session file naming the
    profile and settings that "Run all" picks up."""
    folder.mkdir(parents=True, exist_ok=True)
    shutil.copy(PROJECT_ROOT / "notebooks" / notebook, folder)
    profiles.write_lab_session(profile, overrides, folder)
    return folder


def _menu(driver, menu: str, command: str) -> None:
    from selenium.webdriver.common.by import By

    next(e for e in driver.find_elements(By.CSS_SELECTOR, ".lm-MenuBar-itemLabel") if e.text == menu).click()
    until(lambda: driver.find_elements(By.CSS_SELECTOR, f'li.lm-Menu-item[data-command="{command}"]'), 10,
          f"{menu} > {command}")[0].click()


def run_all_and_save(driver, base_url: str, folder: Path, notebook: str = NOTEBOOK,
                     screenshot: Path | None = None, seconds: float = 600):
    """Open ``notebook`` in JupyterLab, Run > Run All Cells, wait until every cell ran, optionally
    take a screenshot, File > Save; the saved notebook (nbformat)."""
    path = folder / notebook
    code_cells = sum(cell.cell_type == "code" for cell in nbformat.read(path, as_version=4).cells)
    driver.get(f"{base_url}/lab/tree/{notebook}?token={TOKEN}")

    def status():
        return driver.execute_script("const e = document.querySelector('.jp-Notebook-ExecutionIndicator');"
                                     "return e ? e.getAttribute('data-status') : null")

    def prompts():
        return driver.execute_script("return Array.from(document.querySelectorAll("
                                     "'.jp-Notebook .jp-CodeCell .jp-InputPrompt')).map(e => e.textContent)")

    until(lambda: len(prompts()) == code_cells and status() == "idle", 120, "the notebook and its kernel")
    _menu(driver, "Run", "runmenu:run-all")
    until(lambda: all(p.strip("[]: ") and "*" not in p for p in prompts()) and status() == "idle", seconds,
          "every cell to run")
    if screenshot is not None:  # the first figure in view, with the prose before it
        driver.execute_script("const img = document.querySelector('.jp-Notebook .jp-OutputArea-output img');"
                              "if (img) img.scrollIntoView({block: 'center'});")
        time.sleep(1)
        driver.save_screenshot(str(screenshot))
    saved_before = path.stat().st_mtime_ns
    _menu(driver, "File", "docmanager:save")
    # this save, not an autosave from earlier in the run: a newer file in which every code cell ran
    return until(lambda: path.stat().st_mtime_ns != saved_before and (nb := nbformat.read(path, as_version=4)) and all(
        cell.execution_count for cell in nb.cells if cell.cell_type == "code") and nb, 30, "the notebook to be saved")


def screenshot(profile: str, overrides: list[str], dest: Path) -> Path:
    """A PNG of JupyterLab with notebook 04 run on ``profile``'s finished run, into ``dest``."""
    cfg = profiles.load_profile(profile, overrides)
    model = cfg.train.models[0]
    if not cfg.run.checkpoint(model, artefacts.final_stage(cfg.train.stage2.epochs)).exists():
        raise KvasirError(f"{profile} has no trained {model}: run `make smoke PROFILE={profile}` (or make evaluate) "
                          "first")
    dest.mkdir(parents=True, exist_ok=True)
    written = dest / f"{Path(cfg.profile).stem}-jupyterlab.png"
    with tempfile.TemporaryDirectory() as scratch, chromium.open_browser(1280, 900) as driver:
        folder = lab_folder(Path(scratch) / "notebooks", profile, overrides)
        with open_lab(folder, Path(scratch)) as url:
            run_all_and_save(driver, url, folder, screenshot=written)
    return written


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="a screenshot of JupyterLab with notebook 04 run on a profile")
    parser.add_argument("dest", type=Path, help="where the PNG goes, e.g. docs/images")
    parser.add_argument("--profile", default="smoke")
    parser.add_argument("--set", action="append", default=[], dest="overrides", metavar="KEY=VALUE")
    args = parser.parse_args(argv)
    try:
        print(f"wrote {screenshot(args.profile, args.overrides, args.dest)}")
    except KvasirError as exc:
        sys.exit(f"error: {exc}")


if __name__ == "__main__":
    main()
