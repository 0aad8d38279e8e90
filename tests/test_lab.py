"""JupyterLab as a user meets it after `make lab PROFILE=smoke`: a real JupyterLab server on loopback
with a token, notebook 04 opened in headless Chromium (selenium), Run > Run All Cells, saved, and
every cell ran without an error, on the smoke chain's finished run; the server is stopped
(``tools.jupyterlab``, which `make screenshots` uses too)."""

import nbformat
import pytest

from kvasir_utils import artefacts, profiles
from tools import jupyterlab

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("chain")]


def test_profiles_of_notebooks_run_by_hand(tmp_path):
    profiles.write_lab_session("smoke", ["eval.seed=3"], tmp_path)
    assert profiles.notebook_profile(None, ["a=1"], tmp_path) == ("smoke", ["eval.seed=3", "a=1"])
    assert profiles.notebook_profile(None, [], tmp_path / "elsewhere") == ("paper", [])  # no session: the paper's
    assert profiles.notebook_profile("smoke", ["a=1"], tmp_path) == ("smoke", ["a=1"])  # papermill's wins
    with pytest.raises(Exception, match="no-such-profile"):
        profiles.write_lab_session("no-such-profile", [], tmp_path)


def test_run_all_in_jupyterlab_works_on_the_smoke_run_without_editing_a_cell(driver, smoke_chain, tmp_path):
    folder = jupyterlab.lab_folder(tmp_path / "notebooks", "smoke", smoke_chain.overrides)
    stored = nbformat.read(folder / jupyterlab.NOTEBOOK, as_version=4)
    assert "PROFILE = None" in stored.cells[1].source
    shot = tmp_path / "jupyterlab.png"
    with jupyterlab.open_lab(folder, tmp_path) as url:
        ran = jupyterlab.run_all_and_save(driver, url, folder, screenshot=shot)
    errors = [o for cell in ran.cells for o in cell.get("outputs", []) if o["output_type"] == "error"]
    assert errors == [], errors
    assert all(cell.execution_count for cell in ran.cells if cell.cell_type == "code")
    shown = "".join(str(o.get("data", {})) for cell in ran.cells for o in cell.get("outputs", []))
    assert "smoke" in shown and (folder / artefacts.LAB_SESSION).exists()
    assert shot.read_bytes().startswith(b"\x89PNG")


def test_the_screenshot_command_says_what_to_run_when_the_profile_has_no_trained_model(tmp_path, capsys):
    from tests.helpers import tmp_overrides

    with pytest.raises(SystemExit, match="run `make smoke PROFILE=smoke`"):
        jupyterlab.main([str(tmp_path / "images"), "--profile", "smoke",
                         *[a for o in tmp_overrides(tmp_path) for a in ("--set", o)]])
    assert not (tmp_path / "images").exists()
