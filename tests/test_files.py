"""Writing a folder whole or not at all (``files.atomic_folder``), after a write that was killed outright."""

import os
import socket
import subprocess
import sys

from kvasir_utils.files import atomic_folder


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_a_killed_write_leaves_nothing_behind_for_the_next_one(tmp_path):
    dest = tmp_path / "images"
    host = socket.gethostname()
    killed = tmp_path / f".images.{host}.{_dead_pid()}.x1.tmp"  # what SIGKILL during a write leaves
    running = tmp_path / f".images.{host}.{os.getpid()}.x2.tmp"  # a write still going on here
    elsewhere = tmp_path / ".images.another-node.1.x3.tmp"  # its process is on another machine
    for folder in (killed, running, elsewhere):
        (folder / "part").mkdir(parents=True)
    with atomic_folder(dest) as work:
        (work / "new.txt").write_text("new")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["images", running.name, elsewhere.name])
    assert [p.name for p in dest.iterdir()] == ["new.txt"]
