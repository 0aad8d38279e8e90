"""Unpacking an archive safely: no entry outside the target folder, no links, whole or not at all."""

from __future__ import annotations

import json
import os
import shutil
import stat
import zipfile
from pathlib import Path

from tqdm import tqdm

from kvasir_utils.errors import KvasirError
from kvasir_utils.io import disk_full, is_disk_full, write_json_atomic


def check_member(info: zipfile.ZipInfo) -> None:
    """Refuse zip entries that are links or would land outside the target folder."""
    name = info.filename.replace("\\", "/")
    parts = name.split("/")
    if name.startswith("/") or (len(parts[0]) == 2 and parts[0][1] == ":") or ".." in parts:
        raise KvasirError(f"refusing unsafe archive entry {info.filename!r}: "
                          "it would be written outside the target folder")
    if stat.S_ISLNK(info.external_attr >> 16):
        raise KvasirError(f"refusing archive entry {info.filename!r}: it is a symbolic link")


def extract_archive(archive: Path, dest: Path, progress: bool = True) -> Path:
    """Extract ``archive`` into ``dest`` safely; skipped when ``dest`` came from the same archive."""
    marker = {"archive": archive.name, "bytes": archive.stat().st_size}
    stamp = dest / ".extracted.json"
    if stamp.exists() and json.loads(stamp.read_text()) == marker:
        return dest
    try:
        zf = zipfile.ZipFile(archive)
    except zipfile.BadZipFile as exc:
        raise KvasirError(f"{archive} is not a readable zip archive ({exc}); delete it and run again") from exc
    partial = dest.with_name(f".{dest.name}.partial")
    shutil.rmtree(partial, ignore_errors=True)
    with zf:
        members = zf.infolist()
        for info in members:
            check_member(info)
        try:
            for info in tqdm(members, desc="extract", unit="file", disable=not progress, mininterval=1):
                zf.extract(info, partial)
        except (zipfile.BadZipFile, OSError, EOFError) as exc:
            shutil.rmtree(partial, ignore_errors=True)
            if is_disk_full(exc):
                raise disk_full(dest, sum(info.file_size for info in members)) from None
            raise KvasirError(f"{archive} is damaged ({exc}); delete it and run again") from exc
        except BaseException:  # interrupted: no half-extracted folder is left to look finished
            shutil.rmtree(partial, ignore_errors=True)
            raise
    write_json_atomic(partial / stamp.name, marker)
    shutil.rmtree(dest, ignore_errors=True)
    os.replace(partial, dest)
    return dest
