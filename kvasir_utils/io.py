"""Files: atomic writes, content hashes and locks, so a file is either complete or not there.

A file written here gets the mode any new file gets under the user's umask (0644 under umask
022), so results can be shared on a server or published, and it reaches the disk (fsync) before
it takes its final name.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import tempfile
import threading
import time
from pathlib import Path

from filelock import FileLock, Timeout

from kvasir_utils.errors import KvasirError

_CHUNK = 1 << 20
_UMASK_LOCK = threading.Lock()


def _umask() -> int:
    try:  # Linux says it without changing it (other threads may be creating files meanwhile)
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    except OSError:
        pass
    with _UMASK_LOCK:  # elsewhere the umask can only be read by setting it
        mask = os.umask(0o022)
        os.umask(mask)
    return mask


def new_file_mode() -> int:
    """The permissions ``open()`` would give a new file under the current umask."""
    return 0o666 & ~_umask()


def _fsync(path: Path, directory: bool = False) -> None:
    fd = os.open(path, os.O_RDONLY | (os.O_DIRECTORY if directory else 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: os.PathLike, suffix: str = ""):
    """Yield a temporary path beside ``path``; move it into place only if the block succeeds."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{suffix}", dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, new_file_mode())  # mkstemp makes 0600 files
        _fsync(Path(tmp))
        os.replace(tmp, path)
        with contextlib.suppress(OSError):  # not every file system syncs folders
            _fsync(path.parent, directory=True)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_text_atomic(path: os.PathLike, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_json_atomic(path: os.PathLike, data) -> Path:
    return write_text_atomic(path, json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def write_csv_atomic(frame, path: os.PathLike, **kwargs) -> Path:
    with atomic_path(path, ".csv") as tmp:
        frame.to_csv(tmp, index=False, **kwargs)
    return Path(path)


def sha256_file(path: os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_text(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


# -- locks --------------------------------------------------------------------------------
@contextlib.contextmanager
def folder_lock(folder: Path, purpose: str, wait: bool):
    """Hold ``<folder>/.lock`` (the ``filelock`` package) for the block.

    ``wait=True`` is for work others need too (preparing a dataset): a second process waits for
    the first, says so, and then finds the work done. ``wait=False`` is for a run writing into a
    folder of its own: a second run there is refused with the remedy.
    """
    folder.mkdir(parents=True, exist_ok=True)
    lock_path = folder / ".lock"
    lock = FileLock(lock_path)
    try:
        lock.acquire(timeout=0)
    except Timeout:
        holder = _holder(lock_path)
        if not wait:
            raise KvasirError(
                f"{folder} is in use by {holder}; two runs writing into one run folder would "
                f"overwrite each other's files. Wait for it to finish, or give this run its own folder "
                f"(SET=\"paths.runs=...\")."
            ) from None
        print(f"waiting for {holder}, which holds {folder} ...", flush=True)
        start = time.monotonic()
        lock.acquire()
        print(f"... waited {time.monotonic() - start:.0f} s", flush=True)
    try:
        since = time.strftime("%Y-%m-%d %H:%M:%S")
        lock_path.with_suffix(".holder").write_text(
            f"process {os.getpid()} on {socket.gethostname()} since {since} ({purpose})\n")
        yield
    finally:
        lock.release()


def _holder(lock_path: Path) -> str:
    try:
        return lock_path.with_suffix(".holder").read_text().strip()
    except OSError:
        return "another process"
