"""Files: atomic writes, content hashes and locks, so a file is either complete or not there.

A file written here gets the mode any new file gets under the user's umask (0644 under umask
022), so results can be shared on a server or published, and it reaches the disk (fsync) before
it takes its final name.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import shutil
import socket
import tempfile
import threading
import time
from pathlib import Path

from filelock import FileLock, Timeout

from kvasir_utils.errors import DiskFullError, KvasirError

_CHUNK = 1 << 20
_UMASK_LOCK = threading.Lock()


def is_utf8_name(name: str) -> bool:
    """Whether a file name read from the disk is valid UTF-8: Python keeps the bytes of one that is not
    as surrogate escapes, which no CSV, JSON or page can be written with."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def shown_name(name: str) -> str:
    """A file name as it can be written anywhere: its bytes that are not UTF-8 as ``\\xNN``."""
    return os.fsencode(name).decode("utf-8", "backslashreplace")


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


def format_bytes(count: float) -> str:
    for unit in ("bytes", "KB", "MB", "GB"):
        if count < 1000 or unit == "GB":
            return f"{count:,.0f} {unit}" if unit == "bytes" else f"{count:,.1f} {unit}"
        count /= 1000
    return ""


def free_bytes(folder: Path) -> int:
    """Free space for this user on the file system that holds ``folder`` (or its nearest existing parent)."""
    folder = Path(folder)
    while not folder.exists() and folder != folder.parent:
        folder = folder.parent
    return shutil.disk_usage(folder).free


def disk_full(path: Path, needed: int | None) -> DiskFullError:
    """The error for a write that found no space: where, how much is free, how much it needs, what to do."""
    path = Path(path)
    need = f"needs {format_bytes(needed)}" if needed else "needs more than that"
    return DiskFullError(
        f"no space left on the disk holding {path.parent} ({format_bytes(free_bytes(path.parent))} free): writing "
        f"{path.name} {need}. Nothing half-written was left behind. Free space there, or point the study at "
        f"a larger disk (SET=\"paths.runs=... paths.data=... paths.reports=...\"), and run the same command again: "
        f"it goes on from the last finished step."
    )


def is_disk_full(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EDQUOT)


@contextlib.contextmanager
def atomic_path(path: os.PathLike, suffix: str = "", size: int | None = None):
    """Yield a temporary path beside ``path``; move it into place only if the block succeeds.

    A full disk (during the block or the final sync) raises ``DiskFullError`` naming ``path`` and
    ``size`` (the bytes it needs, when known); the temporary file is removed either way."""
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
    except OSError as exc:
        if not is_disk_full(exc):
            raise
        raise disk_full(path, size) from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _owner_prefix(path: Path) -> str:
    """How a temporary folder beside ``path`` starts: its name, this machine and (next) the process."""
    return f".{path.name}.{socket.gethostname()}."


def _is_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)  # signal 0 only asks whether the process exists
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's
        return True
    return True


def _remove_abandoned(path: Path) -> None:
    """Remove the temporary folders an earlier write of ``path`` on this machine left behind when its
    process was killed outright (no ``finally`` ran): an interrupted extraction can leave gigabytes."""
    prefix = _owner_prefix(path)
    for leftover in path.parent.iterdir():
        pid = leftover.name[len(prefix):].partition(".")[0]
        if leftover.name.startswith(prefix) and pid.isdigit() and not _is_running(int(pid)):
            shutil.rmtree(leftover, ignore_errors=True)


@contextlib.contextmanager
def atomic_folder(path: os.PathLike):
    """Yield a temporary folder beside ``path`` to fill; it replaces ``path`` (and all it held) only
    if the block succeeds, so a folder of results is either the whole new one or the old one. The one
    way the study writes a folder: what a killed earlier write left beside ``path`` goes first."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _remove_abandoned(path)
    tmp = Path(tempfile.mkdtemp(prefix=f"{_owner_prefix(path)}{os.getpid()}.", suffix=".tmp", dir=path.parent))
    old = tmp.with_name(f"{tmp.name}.old")
    try:
        yield tmp
        os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700 folders
        if path.exists():
            os.replace(path, old)
        try:
            os.replace(tmp, path)
        except OSError:
            if old.exists() and not path.exists():
                os.replace(old, path)  # the old folder back: never neither
            raise
    finally:
        for leftover in (tmp, old):
            shutil.rmtree(leftover, ignore_errors=True)


def write_bytes_atomic(path: os.PathLike, payload: bytes) -> Path:
    """Write ``payload`` to ``path`` atomically; refused up front when the disk cannot hold it."""
    path = Path(path)
    if free_bytes(path.parent) < len(payload):
        raise disk_full(path, len(payload))
    with atomic_path(path, size=len(payload)) as tmp:
        tmp.write_bytes(payload)
    return path


def write_text_atomic(path: os.PathLike, text: str) -> Path:
    return write_bytes_atomic(path, text.encode())


def write_json_atomic(path: os.PathLike, data) -> Path:
    return write_text_atomic(path, json.dumps(data, indent=2, sort_keys=False, default=str) + "\n")


def write_csv_atomic(frame, path: os.PathLike, **kwargs) -> Path:
    return write_text_atomic(path, frame.to_csv(index=False, **kwargs))


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
