"""Fixtures: a small generated archive, a tiny prepared dataset, a local HTTP server (helpers.py has
the functions they share with the tests)."""

from __future__ import annotations

import os

if os.environ.get("PYTEST_XDIST_WORKER"):
    # Two workers share the machine's cores: one compute thread each, for them and every process they
    # start (notebook kernels, sweep members); torch's default of one thread per core would make them
    # fight (its threads spin while they wait).
    os.environ.setdefault("OMP_NUM_THREADS", "1")

import http.server
import threading
from pathlib import Path

import pytest

from kvasir_utils.analysis import labels
from kvasir_utils.data import synthetic
from tests.helpers import RangeHandler, prepare_tiny_dataset


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
