"""The environment is locked: one list of exact versions, installed by make setup and by conda; and the
tests refuse a disk that cannot hold their runs."""

import getpass
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from kvasir_utils.config import PROJECT_ROOT
from kvasir_utils.files import free_bytes
from tests.helpers import DISK_NEEDED


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~ \[;]", requirement, maxsplit=1)[0].strip().lower().replace("_", "-")


def _lock() -> dict[str, str]:
    pins = {}
    for line in (PROJECT_ROOT / "requirements.lock").read_text().splitlines():
        if line and not line.startswith((" ", "#")):
            name, _, version = line.partition("==")
            assert version, f"requirements.lock: {line!r} is not an exact pin"
            pins[_name(name)] = version.split(";")[0].strip()
    return pins


def test_the_lock_pins_every_dependency_of_the_project_and_the_constraints():
    # a dependency added to pyproject.toml without `make lock` would install unpinned
    project = tomllib.loads((PROJECT_ROOT / "pyproject.toml").read_text())["project"]
    wanted = {_name(r) for r in project["dependencies"] + project["optional-dependencies"]["dev"]}
    pins = _lock()
    assert wanted <= set(pins), wanted - set(pins)
    for line in (PROJECT_ROOT / "constraints.txt").read_text().splitlines():
        if "==" in line and not line.startswith("#"):
            name, version = line.split("==")
            assert pins[_name(name)] == version.strip(), line  # the lock was made under the constraints


def test_environment_yml_installs_the_same_pins():
    env = yaml.safe_load((PROJECT_ROOT / "environment.yml").read_text())
    pip = [block["pip"] for block in env["dependencies"] if isinstance(block, dict)]
    assert pip == [["-r requirements.lock"]]
    assert "python=3.11" in env["dependencies"]


def _collect_under(tmpdir: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")} | {"TMPDIR": str(tmpdir)}
    command = [sys.executable, "-m", "pytest", "-n", "0", "-p", "no:cacheprovider", "--co", "-q", __file__]
    return subprocess.run(command, cwd=PROJECT_ROOT, env=env, capture_output=True, text=True, timeout=120)


def _leave_a_session(tmpdir: Path, number: int, size: int, pid: int) -> Path:
    """A numbered folder as a pytest session leaves it, locked by process ``pid``."""
    folder = tmpdir / f"pytest-of-{getpass.getuser()}" / f"pytest-{number}"
    folder.mkdir(parents=True)
    (folder / "checkpoint.pt").write_bytes(bytes(size))
    (folder / ".lock").write_text(str(pid))
    return folder


def test_the_tests_refuse_to_start_on_a_disk_too_small_for_them_and_say_what_to_do(small_disk):
    # a full disk minutes in fails dozens of tests alike (CI did); the suite says so before it starts
    mount, grow = small_disk
    running = _leave_a_session(mount, 7, 4_000_000, os.getpid())  # a session still running: kept, named
    run = _collect_under(mount)
    said = run.stdout + run.stderr
    assert run.returncode == pytest.ExitCode.USAGE_ERROR, said
    assert f"free on the disk holding {mount}" in said and "TMPDIR=/larger/disk make test" in said
    assert f"sessions still running hold {running} (4.0 MB)" in said
    assert sorted(path for path in mount.rglob("*") if path.is_file()) == [running / ".lock",
                                                                           running / "checkpoint.pt"]

    # the folders of sessions that ended, or were killed, go first; where that makes room, the tests run
    grow("2600m")  # 2.73 GB: above DISK_NEEDED, and below it with the 300 MB a killed session left
    gone = subprocess.Popen(["true"])
    gone.wait()
    killed = _leave_a_session(mount, 6, 300_000_000, gone.pid)
    assert free_bytes(mount) < DISK_NEEDED < shutil.disk_usage(mount).total
    run = _collect_under(mount)
    assert run.returncode == pytest.ExitCode.OK, run.stdout + run.stderr
    assert not killed.exists() and running.exists()


def _kernel_imports(folder: Path, kernel_env: dict | None) -> str:
    """Where a notebook's kernel, started the way the study starts it, finds ``kvasir_utils``."""
    import nbformat
    import papermill

    from kvasir_utils.run import signals

    notebook = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(
        "import kvasir_utils; print(kvasir_utils.__file__)")])
    notebook.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(notebook, folder / "which.ipynb")
    stopper = signals.KernelStopper()
    with stopper:
        executed = papermill.execute_notebook(
            str(folder / "which.ipynb"), str(folder / "which-out.ipynb"), kernel_name="python3", cwd=str(folder),
            progress_bar=False, kernel_manager_class=stopper.kernel_manager_class(kernel_env),
            shutdown_kernel="immediate")
    return executed.cells[0].outputs[0]["text"].strip()


def test_a_notebooks_kernel_imports_the_checkout_that_runs_it(tmp_path, monkeypatch):
    # a second clone run with the first one's environment (VENV=...): the kernel starts in notebooks/,
    # where `import kvasir_utils` finds whatever the environment points at (here another checkout on
    # PYTHONPATH, as an editable install would), so it ran the other checkout's code into its folders
    from kvasir_utils.run import notebooks

    other = tmp_path / "other-checkout"
    (other / "kvasir_utils").mkdir(parents=True)
    (other / "kvasir_utils" / "__init__.py").write_text("")
    monkeypatch.setenv("PYTHONPATH", str(other))
    env = notebooks.checkout_environment()
    assert env["PYTHONPATH"].split(os.pathsep) == [str(PROJECT_ROOT), str(other)]
    assert notebooks.checkout_environment({"PYTHONPATH": str(PROJECT_ROOT)})["PYTHONPATH"] == str(PROJECT_ROOT)
    assert _kernel_imports(tmp_path, None) == str(other / "kvasir_utils" / "__init__.py")  # without it
    assert _kernel_imports(tmp_path, env) == str(PROJECT_ROOT / "kvasir_utils" / "__init__.py")


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="no CPU affinity on this platform")
def test_worker_pools_count_the_cores_this_process_may_use_not_the_machines():
    # as under taskset, a scheduler's cpuset or a container's CPU set: one core of the machine's
    code = ("import os; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})\n"
            "from kvasir_utils import provenance; from kvasir_utils.data import cache, synthetic\n"
            "from kvasir_utils.train import hardware; from kvasir_utils.bench import gpucheck\n"
            "e = provenance.environment(); print(provenance.usable_cores(), e['usable_cores'], e['cpu_count'],"
            " all(m.usable_cores is provenance.usable_cores for m in (cache, synthetic, hardware, gpucheck)))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=PROJECT_ROOT, check=True)
    assert done.stdout.split() == ["1", "1", str(os.cpu_count()), "True"]
    # and no pool anywhere else sizes itself by the machine's count
    package = PROJECT_ROOT / "kvasir_utils"
    assert [p for p in package.rglob("*.py") if "cpu_count()" in p.read_text() and p.name != "provenance.py"] == []
