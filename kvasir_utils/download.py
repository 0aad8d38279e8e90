"""Getting the dataset archive: HTTP with resume, local files, size and SHA-256 checks."""

from __future__ import annotations

import http.client
import os
import shutil
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import unquote, urlparse

from tqdm import tqdm

from kvasir_utils.errors import KvasirError
from kvasir_utils.io import sha256_file

_CHUNK = 1 << 20


class DownloadError(KvasirError):
    """One address failed; the caller may try the next one."""


def _local_source(url: str) -> Path | None:
    parsed = urlparse(url)
    if parsed.scheme == "file":
        return Path(unquote(parsed.path))
    if len(parsed.scheme) <= 1:  # a plain path (or a Windows drive letter)
        return Path(url).expanduser()
    return None


def verify_archive(path: Path, size: int | None, sha256: str | None) -> None:
    """Raise DownloadError unless ``path`` has the expected size and SHA-256 (when given)."""
    actual = path.stat().st_size
    if size is not None and actual != size:
        raise DownloadError(f"{path.name} is {actual:,} bytes, expected {size:,}")
    if sha256:
        digest = sha256_file(path)
        if digest != sha256.lower():
            raise DownloadError(f"{path.name} has SHA-256 {digest}, expected {sha256}")


def _copy_local(source: Path, part: Path) -> None:
    if not source.is_file():
        raise DownloadError(f"local file {source} does not exist")
    shutil.copyfile(source, part)


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
            last_error = exc
    reason = getattr(last_error, "reason", last_error)
    raise DownloadError(
        f"{reason} (after {retries + 1} attempts; the partial file {part} is kept and the next run resumes it)"
    )


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
    if dest.exists():
        try:
            verify_archive(dest, size, sha256)
        except DownloadError as exc:
            raise KvasirError(
                f"the archive already at {dest} does not match the profile: {exc}. "
                f"Delete it (or fix data.size / data.sha256) and run again."
            ) from exc
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    failures = []
    for url in urls:
        try:
            local = _local_source(url)
            if local is not None:
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
            return dest
        except DownloadError as exc:
            failures.append(f"  {url}: {exc}")
    raise KvasirError(
        "could not get the dataset archive:\n" + "\n".join(failures) + "\n"
        f"Without network, download it elsewhere and copy it to {dest} (it is then used as is). "
        f"`make smoke` runs the whole study offline on generated data."
    )
