"""Fixtures: a small generated archive, a tiny prepared dataset, a local HTTP server, the smoke
study's chain and a headless chromium (helpers.py has the functions they share with the tests)."""

from __future__ import annotations

import os

if os.environ.get("PYTEST_XDIST_WORKER"):
    # Two workers share the machine's cores: one compute thread each, for them and every process they
    # start (notebook kernels, sweep members); torch's default of one thread per core would make them
    # fight (its threads spin while they wait).
    os.environ.setdefault("OMP_NUM_THREADS", "1")

import contextlib
import http.server
import subprocess
import threading
import time
from pathlib import Path

import psutil
import pytest
from _pytest.pathlib import LOCK_TIMEOUT, cleanup_numbered_dir

from kvasir_utils.analysis import labels
from kvasir_utils.data import synthetic
from kvasir_utils.files import format_bytes, free_bytes
from tests.helpers import DISK_NEEDED, SMOKE_CHAIN, RangeHandler, prepare_tiny_dataset, tmp_overrides


@pytest.fixture(scope="session")
def small_archive(tmp_path_factory) -> Path:
    """A Kvasir-layout zip with 8 images per class (some large), made once per test session."""
    path = tmp_path_factory.mktemp("archive") / "kvasir-dataset-v2.zip"
    return synthetic.make_archive(path, labels.CLASSES, images_per_class=8, seed=1, large_fraction=0.25)


@pytest.fixture
def http_server(tmp_path):
    """A real HTTP server on 127.0.0.1 serving ``server.root``; yields the server."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), RangeHandler)
    server.root = tmp_path / "served"
    server.root.mkdir()
    server.cut_after = None
    server.ignore_range = False
    server.requests = []
    server.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """A prepared tiny dataset; tests load it with ``tiny_config(root, ...)`` and their own runs folder."""
    root = tmp_path_factory.mktemp("tiny")
    prepare_tiny_dataset(root)
    return root


# The smoke profile as `make smoke` runs it, at the sizes of helpers.SMOKE_CHAIN (which says why they
# suffice), into tmp: notebooks 01-05 and 07 (06 is a sweep's) and the report.


@pytest.fixture(scope="session")
def smoke_chain(tmp_path_factory):
    """``make smoke`` by its notebooks, once per test worker: tests that use it are marked
    ``pytest.mark.xdist_group("chain")`` so they all run on the worker that made it."""
    from kvasir_utils import profiles
    from kvasir_utils.run import cli, notebooks

    root = tmp_path_factory.mktemp("chain")
    overrides = tmp_overrides(root) + SMOKE_CHAIN
    cfg = profiles.load_profile("smoke", overrides)
    notebooks.run_notebook("01_download_and_split", "smoke", overrides)
    for model in cfg.train.models:
        for name in ("02_train", "03_finetune", "04_evaluate"):
            notebooks.run_notebook(name, "smoke", overrides, model)
    notebooks.run_notebook("05_compare", "smoke", overrides)
    notebooks.run_notebook("07_audit", "smoke", overrides)
    assert cli.main(["report", "--profile", "smoke", *[a for o in overrides for a in ("--set", o)]]) == 0
    return cfg


@pytest.fixture(scope="module")
def driver():
    """A headless chromium for one test module (``tools.chromium.open_browser``)."""
    from tools import chromium

    with chromium.open_browser() as opened:
        yield opened


# The groups that take longest, handed out first (seconds on 2 cores from `pytest --durations`: an
# AMD EPYC with bf16 before issue 24; in brackets, the slowest CPU here, an AMD EPYC without AVX-512
# training in fp32, emulated as docs/development.md says, nothing else running, at 35ae454). xdist
# gives each worker one group, and a second at once to a worker whose first has two tests or fewer
# (the sweep is one test: its worker also takes the Ctrl-C tests); the short tests fill the gaps
# after them. The chain and the cluster stay the longest by far: each worker starts with one. In
# xdist's own order (by number of tests) the sweep started last and ran alone for 3 minutes.
LONGEST_FIRST = ("chain",  # 230 s (211 s, 333 s with its tests): notebooks 01-05, 07 and the report, then
                 # the tests that read them
                 "cluster",  # 210 s (166 s): a sweep on a two-node Ray cluster, run twice (mostly kernels starting)
                 "leakage",  # the smoke-leakage sweep (make test-long): 12 short runs (mostly kernels starting)
                 "interrupts",  # 130 s (142 s): `make evaluate` stopped at each step, then finished
                 "hyper")  # 40 s (55 s): the HyperKvasir-shaped study


def _group(item) -> str | None:
    marker = item.get_closest_marker("xdist_group")
    return (marker.args[0] if marker.args else marker.kwargs.get("name")) if marker else None


def _longest_first(item) -> int:
    group = _group(item)
    return LONGEST_FIRST.index(group) if group in LONGEST_FIRST else len(LONGEST_FIRST)


@pytest.fixture
def small_disk(tmp_path):
    """A 12 MB tmpfs, and a function that grows it; needs root (CI and these machines run as root)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mount = tmp_path / "small-disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=12m", "tmpfs", str(mount)], check=True)
    try:
        yield mount, lambda size: subprocess.run(["mount", "-o", f"remount,size={size}", str(mount)], check=True)
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def _unlock_killed_sessions(root: Path, current: Path) -> None:
    """A session that was killed (a CI timeout, kill -9) leaves its lock, and pytest keeps a locked
    folder for three days: a lock whose process is gone is dropped, so its folder can go."""
    for lock in root.glob("pytest-*/.lock"):  # pytest's lock holds its session's process id
        if lock.parent != current:
            with contextlib.suppress(ValueError, OSError):
                if not psutil.pid_exists(int(lock.read_text())):
                    lock.unlink()


def _size(folder: Path) -> int:
    return sum(path.lstat().st_size for path in folder.rglob("*"))


def pytest_sessionstart(session):
    """Refuse to start, naming the disk and the remedy, where the suite's runs cannot fit: otherwise
    dozens of tests fail alike on a full disk, minutes in. Short of space, the folders earlier
    sessions left go first (pytest's retention would remove them as a later session ends); those of
    sessions still running stay and are named."""
    if hasattr(session.config, "workerinput"):  # a pytest-xdist worker: its controller checked
        return
    # pytest's own (private) API, as pytest-xdist uses it to hand each worker its folder; the lock
    # pins pytest below 9
    basetemp = session.config._tmp_path_factory.getbasetemp()
    root = basetemp.parent
    numbered = session.config.option.basetemp is None  # pytest's numbered folders, not one the user named
    if numbered and free_bytes(basetemp) < DISK_NEEDED:
        _unlock_killed_sessions(root, basetemp)
        cleanup_numbered_dir(root, "pytest-", keep=1, consider_lock_dead_if_created_before=time.time() - LOCK_TIMEOUT)
    free = free_bytes(basetemp)
    if free < DISK_NEEDED:
        others = [f"{path} ({format_bytes(_size(path))})" for path in sorted(root.glob("pytest-*"))
                  if path.is_dir() and not path.is_symlink() and path != basetemp] if numbered else []
        held = f"; sessions still running hold {', '.join(others)}" if others else ""
        pytest.exit(f"the tests need about {format_bytes(DISK_NEEDED)} free on the disk holding {basetemp}, and "
                    f"{format_bytes(free)} is free there{held}: free space there, or run them on a larger disk "
                    f"(TMPDIR=/larger/disk make test)", returncode=pytest.ExitCode.USAGE_ERROR)


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config, items):
    """The long groups first (see LONGEST_FIRST; addopts turns xdist's reordering off), then the rest
    in file order. Tests that share a session fixture must run on one worker: under ``--dist
    loadgroup`` pytest-xdist marks them by adding ``@group`` to their node ids. A pytest that ignores
    that (9.x with xdist 3.8 does) would split them silently and build each fixture on both workers."""
    items.sort(key=_longest_first)  # stable: the same order on every worker
    if getattr(config.option, "loadgroup", False):
        lost = [item.nodeid for item in items if item.get_closest_marker("xdist_group") and "@" not in item.nodeid]
        if lost:
            raise pytest.UsageError(f"xdist_group has no effect with this pytest ({lost[0]} has no @group): "
                                    "install the pytest version requirements.lock pins (make setup)")
