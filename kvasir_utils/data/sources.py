"""Getting the dataset: an archive over HTTP with resume or from a local file, with size and
SHA-256 checks and its record (where it came from, its size and SHA-256, computed once), or a
local folder used in place, recorded by a fingerprint of its images' content.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import shutil
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import unquote, urlparse

from tqdm import tqdm

from kvasir_utils.config import PROJECT_ROOT
from kvasir_utils.data import layout
from kvasir_utils.errors import KvasirError
from kvasir_utils.files import disk_full, is_disk_full, sha256_file, sha256_text, write_json_atomic

_CHUNK = 1 << 20


class DownloadError(KvasirError):
    """One address failed; the caller may try the next one."""


ARCHIVE_SUFFIXES = (".tar.gz", ".tar.bz2", ".tar.xz", ".tgz", ".tar", ".zip")


def _local_source(url: str) -> Path | None:
    """The local file or folder ``url`` names (a relative path is taken from the project, as
    ``paths.*`` are: notebooks run in ``notebooks/``), or None for a network address."""
    parsed = urlparse(url)
    if parsed.scheme == "file":
        return Path(unquote(parsed.path))
    if len(parsed.scheme) <= 1:  # a plain path (or a Windows drive letter)
        path = Path(url).expanduser()
        return path if path.is_absolute() else PROJECT_ROOT / path
    return None


def source_name(url: str) -> str:
    """The file or folder name an address ends in (``.../kvasir-dataset-v2.zip`` -> ``kvasir-dataset-v2.zip``)."""
    local = _local_source(url)
    return local.resolve().name if local is not None else Path(unquote(urlparse(url).path)).name


def archive_stem(name: str) -> str:
    """An archive's name without its archive suffixes (``x.tar.gz`` -> ``x``)."""
    for suffix in ARCHIVE_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def local_identity(url: str) -> dict | None:
    """What tells that the local file or folder ``url`` names has changed, without reading it: a
    file's size, modification time, inode and change time (as ``record_archive`` tells a changed
    archive: ``cp -p`` cannot fake the change time); a folder's images as the reader sees them
    (``layout.image_files``): their number, bytes, and the SHA-256 of their relative paths, sizes and
    modification times. None for a network address or a path that does not exist: nothing there to
    compare."""
    local = _local_source(url)
    if local is None:
        return None
    if local.is_file():
        info = local.stat()
        return {"file": str(local), "bytes": info.st_size, "modified_ns": info.st_mtime_ns, "inode": info.st_ino,
                "changed_ns": info.st_ctime_ns}
    if not local.is_dir():
        return None
    listing, total, images = hashlib.sha256(), 0, layout.image_files(local)
    for path in images:
        try:
            info = path.stat()
        except OSError:  # a dangling link: reading it fails later, and says so
            continue
        total += info.st_size
        listing.update(f"{path.relative_to(local).as_posix()}\0{info.st_size}\0{info.st_mtime_ns}\n".encode(
            errors="surrogateescape"))
    return {"folder": str(local), "images": len(images), "bytes": total,
            "listing_sha256": listing.hexdigest()}


def local_folder(url: str) -> Path | None:
    """The folder ``url`` names when it is a local folder (used in place), else None. A local path
    that does not exist and is not named as an archive is an error here, once, rather than a failed
    copy later."""
    local = _local_source(url)
    if local is None:
        return None
    if local.is_dir():
        return local.resolve()
    if not local.exists() and not local.name.lower().endswith(ARCHIVE_SUFFIXES):
        # an archive's path that is gone is fetch_archive's to report (a copy under data/ is used as is)
        raise KvasirError(f"data.url is {url}, and {local} does not exist (neither a folder nor an archive file). "
                          "Give the path of a folder of class folders, or of a .zip or .tar.gz archive, or an "
                          "http(s):// address")
    return None


def folder_record(folder: Path, manifest) -> dict:
    """A folder used in place, recorded as an archive is (name, source, bytes, SHA-256): ``sha256``
    is that of its images' list and content (each image's path and SHA-256, from the cache's
    manifest), so the same images give the same value wherever the folder is."""
    listing = manifest[["path", "source_sha256"]].sort_values("path").to_csv(index=False, header=False)
    return {"archive": f"{folder.name}/", "kind": "folder", "source": str(folder),
            "bytes": int(manifest["bytes"].sum()), "images": int(len(manifest)), "sha256": sha256_text(listing),
            "sha256_of": "the sorted list of (image path, SHA-256 of the image file), one CSV line each"}


def verify_archive(path: Path, size: int | None, sha256: str | None) -> None:
    """Raise DownloadError unless ``path`` has the expected size and SHA-256 (when given)."""
    actual = path.stat().st_size
    if size is not None and actual != size:
        raise DownloadError(f"{path.name} is {actual:,} bytes, expected {size:,}")
    if sha256:
        digest = sha256_file(path)
        if digest != sha256.lower():
            raise DownloadError(f"{path.name} has SHA-256 {digest}, expected {sha256}")


# -- the archive's record: where it came from, its size and SHA-256, computed once ---------
HAND_PLACED = "placed by hand"


def archive_record_path(archive: Path) -> Path:
    return archive.with_name(archive.name + ".json")


def read_archive_record(archive: Path) -> dict | None:
    try:
        return json.loads(archive_record_path(archive).read_text())
    except (OSError, json.JSONDecodeError):
        return None


def _source_identity(path: Path) -> list[int]:
    """What tells that a local file the archive was copied from changed since: its size and time."""
    info = path.stat()
    return [info.st_size, info.st_mtime_ns]


def record_archive(archive: Path, source: str, copied_from: list[int] | None = None) -> dict:
    """Write ``<archive>.json`` (source, size, SHA-256, and for a copied local file that file's
    ``_source_identity`` when copied) the first time the archive is used, and again only if the file
    changed since (its size, times or inode); otherwise read it back. Hashing a 2.5 GB archive takes
    a while, so it is done once, not every run."""
    info = archive.stat()
    identity = [info.st_size, info.st_mtime_ns, info.st_ino, info.st_ctime_ns]  # ctime: `cp -p` cannot fake it
    recorded = read_archive_record(archive)
    if recorded and recorded.get("identity") == identity:
        return recorded
    if recorded:
        print(f"note: {archive.name} changed since it was recorded ({recorded['sha256'][:12]}...); hashing it again")
    record = {"archive": archive.name, "source": source, "bytes": info.st_size, "identity": identity,
              "sha256": sha256_file(archive), "recorded": time.strftime("%Y-%m-%d %H:%M:%S")}
    if copied_from is not None:
        record["copied_from"] = copied_from
    write_json_atomic(archive_record_path(archive), record)
    return record


def changed_local_source(recorded: dict | None, urls: list[str]) -> Path | None:
    """The local file that an archive (its ``recorded`` record) was copied from, if it is still one
    of ``urls`` and changed since the copy, so that a file replaced at the same path is copied again,
    not silently ignored."""
    if not recorded or recorded["source"] not in urls:
        return None
    local = _local_source(recorded["source"])
    if local is None or not local.is_file():
        return None
    now, copied = _source_identity(local), recorded.get("copied_from")
    if copied is None:  # a record from before the source's identity was kept: its size against the copy's
        return local if now[0] != recorded["bytes"] else None
    return local if now != copied else None


def _copy_local(source: Path, part: Path) -> None:
    if not source.is_file():
        raise DownloadError(f"local file {source} does not exist")
    try:
        shutil.copyfile(source, part)
    except OSError as exc:
        part.unlink(missing_ok=True)
        if is_disk_full(exc):
            raise disk_full(part, source.stat().st_size) from None
        raise


def _http_attempt(url: str, part: Path, timeout: float, progress: bool) -> None:
    have = part.stat().st_size if part.exists() else 0
    headers = {"User-Agent": "kvasir-study/1.0"}
    if have:
        headers["Range"] = f"bytes={have}-"
    request = urllib.request.Request(url, headers=headers)
    with urllib.request.urlopen(request, timeout=timeout) as response:
        resumed = have > 0 and response.status == 206  # a server that ignores Range sends it all (200)
        start = have if resumed else 0
        length = response.headers.get("Content-Length")
        expected = start + int(length) if length is not None else None
        with open(part, "ab" if resumed else "wb") as handle, tqdm(
            total=expected, initial=start, unit="B", unit_scale=True, unit_divisor=1024,
            desc=f"download {part.name.removesuffix('.part')}", disable=not progress, mininterval=1,
        ) as bar:
            while chunk := response.read(_CHUNK):
                handle.write(chunk)
                bar.update(len(chunk))
    received = part.stat().st_size
    if expected is not None and received < expected:
        raise http.client.IncompleteRead(b"", expected - received)


def download_http(url: str, part: Path, retries: int = 4, timeout: float = 60.0, progress: bool = True) -> None:
    """Download ``url`` into ``part``, resuming with an HTTP Range request after each cut."""
    last_error: Exception | None = None
    for attempt in range(retries + 1):
        if attempt:
            time.sleep(min(0.25 * 2**attempt, 10))
        try:
            _http_attempt(url, part, timeout, progress)
            return
        except urllib.error.HTTPError as exc:
            if exc.code == 416 and part.exists():  # our partial file is not a prefix of theirs
                part.unlink()
                last_error = exc
                continue
            raise DownloadError(f"the server answered HTTP {exc.code} {exc.reason}") from exc
        except (urllib.error.URLError, OSError, http.client.HTTPException) as exc:
            if is_disk_full(exc):  # retrying cannot help; the partial file is kept for the rerun
                expected = _remaining(url, part)
                raise disk_full(part, expected) from None
            last_error = exc
    reason = getattr(last_error, "reason", last_error)
    raise DownloadError(
        f"{reason} (after {retries + 1} attempts; the partial file {part} is kept and the next run resumes it)"
    )


def _remaining(url: str, part: Path) -> int | None:
    """Bytes still to come for ``part`` (None when the server does not say)."""
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=30) as response:
            total = response.headers.get("Content-Length")
    except (urllib.error.URLError, OSError, http.client.HTTPException):
        return None
    return None if total is None else max(0, int(total) - part.stat().st_size)


def fetch_archive(
    urls: list[str], dest: Path, size: int | None = None, sha256: str | None = None,
    offline: bool = False, retries: int = 4, progress: bool = True,
) -> Path:
    """Make ``dest`` hold the verified archive: use it if present, else download or copy it.

    Each address is tried in turn. The download goes to ``<dest>.part`` and is renamed into
    place only when complete and verified, so an interrupted run never leaves a finished-looking
    archive; a cut download resumes where it stopped.
    """
    dest = Path(dest)
    recorded = read_archive_record(dest) if dest.exists() else None
    changed = changed_local_source(recorded, urls)
    if changed is not None:  # the copy is replaced only once the new one is whole and verified
        print(f"note: {changed} changed since it was copied to {dest}: copying it again")
    elif dest.exists():
        try:
            verify_archive(dest, size, sha256)
        except DownloadError as exc:
            raise KvasirError(
                f"the archive already at {dest} does not match the profile: {exc}. "
                f"Delete it (or fix data.size / data.sha256) and run again."
            ) from exc
        if recorded and recorded["source"] != HAND_PLACED and recorded["source"] not in urls:
            raise KvasirError(
                f"the archive at {dest} was fetched from {recorded['source']}, but this profile asks for "
                f"{urls[0]}. Nothing was changed. Delete {dest} to fetch the new one, or keep both by giving this "
                f"run another data folder (SET=\"... paths.data=<another folder>\")."
            )
        record_archive(dest, HAND_PLACED if recorded is None else recorded["source"],
                       None if recorded is None else recorded.get("copied_from"))
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    failures = []
    for url in urls:
        try:
            local, copied_from = _local_source(url), None
            if local is not None:
                copied_from = _source_identity(local) if local.is_file() else None  # before the copy
                _copy_local(local, part)
            elif offline:
                raise DownloadError("not fetched: runtime.offline is true")
            else:
                download_http(url, part, retries=retries, progress=progress)
            try:
                verify_archive(part, size, sha256)
            except DownloadError:
                part.unlink()
                raise
            os.replace(part, dest)
            record_archive(dest, url, copied_from)
            return dest
        except DownloadError as exc:
            failures.append(f"  {url}: {exc}")
    raise KvasirError(
        "could not get the dataset archive:\n" + "\n".join(failures) + "\n"
        f"Without network, download it elsewhere and copy it to {dest} (it is then used as is). "
        f"`make smoke` runs the whole study offline on generated data."
    )
