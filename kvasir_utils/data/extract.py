"""Unpacking an archive (zip, tar, tar.gz) safely: no entry outside the target folder, no links,
whole or not at all."""

from __future__ import annotations

import contextlib
import json
import stat
import tarfile
import zipfile
from pathlib import Path

from tqdm import tqdm

from kvasir_utils.data.sources import read_archive_record
from kvasir_utils.errors import KvasirError
from kvasir_utils.files import atomic_folder, disk_full, is_disk_full, write_json_atomic


def check_member(info: zipfile.ZipInfo) -> None:
    """Refuse zip entries that are links or would land outside the target folder."""
    name = info.filename.replace("\\", "/")
    parts = name.split("/")
    if name.startswith("/") or (len(parts[0]) == 2 and parts[0][1] == ":") or ".." in parts:
        raise KvasirError(f"refusing unsafe archive entry {info.filename!r}: "
                          "it would be written outside the target folder")
    if stat.S_ISLNK(info.external_attr >> 16):
        raise KvasirError(f"refusing archive entry {info.filename!r}: it is a symbolic link")


def check_tar_member(info: tarfile.TarInfo) -> None:
    """Refuse tar entries that are links, devices or would land outside the target folder."""
    parts = info.name.replace("\\", "/").split("/")
    if info.name.startswith("/") or ".." in parts:
        raise KvasirError(f"refusing unsafe archive entry {info.name!r}: it would be written outside the target folder")
    if not (info.isfile() or info.isdir()):
        raise KvasirError(f"refusing archive entry {info.name!r}: it is a link or a device, not a file")


STAMP = ".extracted.json"  # which archive the folder came from


@contextlib.contextmanager
def _stamped_folder(dest: Path, marker: dict):
    """``dest`` filled by the block and stamped with ``marker``, whole or not at all (``files.atomic_folder``):
    an interrupted or refused extraction leaves no half-extracted folder to look finished."""
    with atomic_folder(dest) as partial:
        yield partial
        write_json_atomic(partial / STAMP, marker)


def _extract_tar(archive: Path, dest: Path, marker: dict, progress: bool) -> None:
    with tarfile.open(archive) as tf:
        members = tf.getmembers()
        for info in members:
            check_tar_member(info)
        with _stamped_folder(dest, marker) as partial:
            try:
                for info in tqdm(members, desc="extract", unit="file", disable=not progress, mininterval=1):
                    # filter="data" from Python 3.11.4 on; before it, check_tar_member above is the guard
                    tf.extract(info, partial, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
            except (tarfile.TarError, OSError, EOFError) as exc:
                if is_disk_full(exc):
                    raise disk_full(dest, sum(info.size for info in members)) from None
                raise KvasirError(f"{archive} is damaged ({exc}); delete it and run again") from exc


def _extract_zip(archive: Path, dest: Path, marker: dict, progress: bool) -> None:
    try:
        zf = zipfile.ZipFile(archive)
    except zipfile.BadZipFile as exc:
        raise KvasirError(f"{archive} is not a readable zip archive ({exc}), nor a tar archive; delete it and "
                          "run again") from exc
    with zf:
        members = zf.infolist()
        for info in members:
            check_member(info)
        with _stamped_folder(dest, marker) as partial:
            try:
                for info in tqdm(members, desc="extract", unit="file", disable=not progress, mininterval=1):
                    zf.extract(info, partial)
            except (zipfile.BadZipFile, OSError, EOFError) as exc:
                if is_disk_full(exc):
                    raise disk_full(dest, sum(info.file_size for info in members)) from None
                raise KvasirError(f"{archive} is damaged ({exc}); delete it and run again") from exc


def extract_archive(archive: Path, dest: Path, progress: bool = True) -> Path:
    """Extract ``archive`` (zip, or tar with any compression) into ``dest`` safely; skipped when
    ``dest`` came from the same archive."""
    marker = {"archive": archive.name, "bytes": archive.stat().st_size}
    recorded = read_archive_record(archive)  # a replaced archive of the same size is extracted again
    if recorded and recorded.get("bytes") == marker["bytes"]:
        marker["sha256"] = recorded["sha256"]
    stamp = dest / STAMP
    before_hash = {"archive": archive.name, "bytes": marker["bytes"]}  # a stamp from before the hash was kept
    if stamp.exists() and json.loads(stamp.read_text()) in (marker, before_hash):
        return dest
    extract = _extract_tar if not zipfile.is_zipfile(archive) and tarfile.is_tarfile(archive) else _extract_zip
    extract(archive, dest, marker, progress)
    return dest
