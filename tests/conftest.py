"""Shared fixtures: a small generated archive, a local HTTP server, settings pointed at tmp."""

from __future__ import annotations

import http.server
import threading
from pathlib import Path

import pytest

from kvasir_utils import labels, synthetic


@pytest.fixture(scope="session")
def small_archive(tmp_path_factory) -> Path:
    """A Kvasir-layout zip with 8 images per class (some large), made once per test session."""
    path = tmp_path_factory.mktemp("archive") / "kvasir-dataset-v2.zip"
    return synthetic.make_archive(path, labels.CLASSES, images_per_class=8, seed=1, large_fraction=0.25)


def tmp_overrides(root: Path) -> list[str]:
    """Point every path of a profile at ``root``."""
    return [f"paths.data={root / 'data'}", f"paths.runs={root / 'runs'}", f"paths.reports={root / 'reports'}"]


class _Handler(http.server.BaseHTTPRequestHandler):
    """Serves files from ``server.root`` with Range support (``server.ignore_range`` turns it off,
    as some servers do); ``server.cut_after`` bytes makes the next response stop early, as a
    dropped connection does."""

    def log_message(self, *args):
        pass

    def do_GET(self):
        path = self.server.root / self.path.lstrip("/")
        self.server.requests.append(dict(self.headers))
        if not path.is_file():
            self.send_error(404, "Not Found")
            return
        body = path.read_bytes()
        start = 0
        if "Range" in self.headers and not self.server.ignore_range:
            start = int(self.headers["Range"].removeprefix("bytes=").split("-")[0])
            if start >= len(body):
                self.send_error(416, "Range Not Satisfiable")
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        payload = body[start:]
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        if self.server.cut_after is not None:
            payload, self.server.cut_after = payload[: self.server.cut_after], None
        self.wfile.write(payload)


@pytest.fixture
def http_server(tmp_path):
    """A real HTTP server on 127.0.0.1 serving ``server.root``; yields the server."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
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


TINY = ["data.synthetic.images_per_class=16", "data.expected_per_class=16", "cache.short_side=40",
        "transforms.image_size=32", "train.batch_size=16", "runtime.precision=fp32", "split.val_fraction=0.25"]


def prepare_tiny_dataset(root: Path, extra: list[str] = ()):
    """The data stage (notebook 01's calls) on a tiny generated dataset under ``root``."""
    from kvasir_utils import config, data

    cfg = config.load_profile("smoke", tmp_overrides(root) + TINY + ["cache.workers=1", *extra])
    data.prepare_split(cfg, data.prepare_dataset(cfg, progress=False))
    return cfg


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    """A prepared tiny dataset; tests load it with ``tiny_config(root, ...)`` and their own runs folder."""
    root = tmp_path_factory.mktemp("tiny")
    prepare_tiny_dataset(root)
    return root


def tiny_config(root: Path, runs: Path, extra: list[str] = ()):
    from kvasir_utils import config

    return config.load_profile("smoke", tmp_overrides(root) + TINY + [f"paths.runs={runs}", *extra])
