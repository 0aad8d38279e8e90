"""The resized cache: every image decoded once and stored small, with a manifest of what it holds.

The cache folder is named by everything that changes its bytes (short side, JPEG quality; the
data stage adds the archive), so other settings make another cache instead of reusing a stale
one. The manifest records each source image's size, SHA-256 and any decode error;
``manifest_fingerprint`` is what checkpoints record as "the images this model was trained on".
"""

from __future__ import annotations

import hashlib
import io
import signal
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from PIL import Image
from tqdm import tqdm

from kvasir_utils.config import cached_name
from kvasir_utils.data.images import as_rgb
from kvasir_utils.errors import DiskFullError, KvasirError
from kvasir_utils.files import sha256_text, write_bytes_atomic, write_csv_atomic
from kvasir_utils.provenance import usable_cores

MANIFEST = "manifest.csv"
PROGRESS = ".manifest.partial.csv"  # an interrupted build's finished images
PROGRESS_SECONDS = 30
MANIFEST_COLUMNS = ["path", "label", "width", "height", "bytes", "mtime_ns", "source_sha256", "error"]
# What the fingerprint covers: the images' content and labels, not when they were unpacked.
CONTENT_COLUMNS = ["path", "label", "width", "height", "source_sha256", "error"]


def cache_copy(image: Image.Image, short_side: int, quality: int) -> bytes:
    """The JPEG bytes the cache stores for ``image``: RGB, short side ``short_side`` (never
    enlarged), bicubic, at JPEG ``quality``. An image opened from a JPEG file and not yet loaded is
    decoded at a reduced scale straight away (``draft``); the predictor calls this too, so a new
    image reaches the model exactly as a cached one does."""
    width, height = image.size
    scale = min(1.0, short_side / min(width, height))
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    image.draft("RGB", size)  # JPEG: decode at a reduced scale straight away
    resized = as_rgb(image).resize(size, Image.BICUBIC, reducing_gap=2.0)
    encoded = io.BytesIO()
    resized.save(encoded, format="JPEG", quality=quality)
    return encoded.getvalue()


def resize_image(source: Path, target: Path, short_side: int, quality: int) -> tuple[int, int, str]:
    """Decode ``source`` once, store it with the given short side as JPEG; returns the original
    size and the source file's SHA-256."""
    payload = source.read_bytes()
    with Image.open(io.BytesIO(payload)) as image:
        width, height = image.size
        encoded = cache_copy(image, short_side, quality)
    write_bytes_atomic(target, encoded)
    return width, height, hashlib.sha256(payload).hexdigest()


def _cache_one(job: tuple[str, str, int, int]) -> tuple[int | None, int | None, str, str]:
    source, target, short_side, quality = job
    try:
        return (*resize_image(Path(source), Path(target), short_side, quality), "")
    except DiskFullError:
        raise  # not a property of the image: the whole stage stops with the remedy
    except Exception as exc:  # noqa: BLE001 - any decode failure is reported by path
        return None, None, "", f"{type(exc).__name__}: {exc}"


def _cache_chunk(jobs: list[tuple[str, str, int, int]]) -> list[tuple[int | None, int | None, str, str]]:
    return [_cache_one(job) for job in jobs]


def _source_key(path: Path) -> tuple[int, int]:
    info = path.stat()
    return info.st_size, info.st_mtime_ns


def read_manifest(path: Path) -> pd.DataFrame:
    """The manifest as written (sizes are integers, empty for images that could not be read)."""
    manifest = pd.read_csv(path, keep_default_na=False, na_values={"width": [""], "height": [""]},
                           dtype={"path": str, "label": str, "error": str, "source_sha256": str})
    return manifest.astype({"width": "Int64", "height": "Int64"})


def _ignore_interrupts() -> None:
    """Cache workers leave Ctrl-C to the process that started them, which cancels what is not begun."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _read_progress(dest: Path) -> dict:
    """Rows of the manifest and of an interrupted build's progress file (``PROGRESS``), by path."""
    rows = {}
    for name in (MANIFEST, PROGRESS):
        if (dest / name).exists():
            found = read_manifest(dest / name)
            if list(found.columns) == MANIFEST_COLUMNS:
                rows |= {row["path"]: row for row in found.to_dict("records")}
    return rows


def _save_progress(rows: list[dict], dest: Path) -> None:
    """What is cached so far, for a rerun to reuse; never the manifest, which means "complete"."""
    done = [row for row in rows if "error" in row]
    write_csv_atomic(pd.DataFrame(done, columns=MANIFEST_COLUMNS), dest / PROGRESS)


def build_cache(
    root: Path, images: pd.DataFrame, dest: Path, short_side: int, quality: int = 95,
    workers: int = 0, progress: bool = True,
) -> tuple[pd.DataFrame, int]:
    """Resize every image once into ``dest``; unchanged images are reused from an earlier run.

    Returns the manifest (one row per image: original size, file size and SHA-256, and the
    reason for every image that could not be decoded) and how many images were (re)made now.
    An interrupted build (Ctrl-C, a kill) keeps every image it finished: each cached file is
    written whole or not at all, and what was done is saved in ``PROGRESS`` (at the interrupt,
    and every ``PROGRESS_SECONDS``), which the next build reuses.
    """
    previous = _read_progress(dest)
    rows, pending = [], []
    for path, label in images.itertuples(index=False):
        key = _source_key(root / path)
        old = previous.get(path)
        if (old is not None and (old["bytes"], old["mtime_ns"]) == key and old["label"] == label
                and (old["error"] or (dest / cached_name(path)).exists())):
            rows.append(old)
            continue
        rows.append({"path": path, "label": label, "bytes": key[0], "mtime_ns": key[1]})
        pending.append(rows[-1])
    if pending:
        _cache_pending(root, pending, dest, short_side, quality, workers, progress, rows)
    manifest = pd.DataFrame(rows, columns=MANIFEST_COLUMNS).astype({"width": "Int64", "height": "Int64"})
    if pending or len(rows) != len(previous) or not (dest / MANIFEST).exists():
        write_csv_atomic(manifest, dest / MANIFEST)
    (dest / PROGRESS).unlink(missing_ok=True)
    return manifest, len(pending)


def _cache_pending(root: Path, pending: list[dict], dest: Path, short_side: int, quality: int, workers: int,
                   progress: bool, rows: list[dict]) -> None:
    """Decode and resize ``pending`` in worker processes, filling in each row as it finishes."""
    chunks = [pending[i:i + 8] for i in range(0, len(pending), 8)]
    pool = ProcessPoolExecutor(max_workers=workers or usable_cores(), initializer=_ignore_interrupts)
    saved = time.monotonic()
    try:
        futures = {pool.submit(_cache_chunk, [(str(root / r["path"]), str(dest / cached_name(r["path"])),
                                               short_side, quality) for r in chunk]): chunk for chunk in chunks}
        with tqdm(total=len(pending), desc=f"cache {short_side}px", unit="img", disable=not progress,
                  mininterval=1) as bar:
            for future in as_completed(futures):
                for row, (width, height, digest, error) in zip(futures[future], future.result()):
                    row.update(width=width, height=height, source_sha256=digest, error=error)
                bar.update(len(futures[future]))
                if time.monotonic() - saved > PROGRESS_SECONDS:
                    _save_progress(rows, dest)
                    saved = time.monotonic()
    except BaseException:
        pool.shutdown(wait=True, cancel_futures=True)  # finish what workers hold, start nothing new
        _save_progress(rows, dest)
        raise
    finally:
        pool.shutdown(wait=True)


def manifest_fingerprint(manifest: pd.DataFrame, short_side: int, quality: int) -> str:
    """SHA-256 of what the cache holds: every image's content, label and size, and how it was
    resized (not file times, so unpacking the same archive again changes nothing)."""
    content = manifest[CONTENT_COLUMNS].sort_values("path").to_csv(index=False)
    return sha256_text(f"short_side={short_side} quality={quality}\n{content}")


# -- dataset check ------------------------------------------------------------------------
@dataclass
class DatasetCheck:
    counts: pd.DataFrame
    resolutions: pd.DataFrame
    unreadable: pd.DataFrame
    warnings: list[str] = field(default_factory=list)


def check_dataset(manifest: pd.DataFrame, classes: list[str], expected_per_class: int | None) -> DatasetCheck:
    """Images per class and resolutions; unreadable images and unusual counts (when a count is
    expected: None for an imbalanced dataset) are reported."""
    readable = manifest[manifest["error"] == ""]
    counts = readable.groupby("label").size().reindex(classes, fill_value=0).rename("images").reset_index()
    resolutions = (
        readable.assign(resolution=[f"{w}x{h}" for w, h in zip(readable["width"], readable["height"])])
        .groupby("resolution").size().sort_values(ascending=False).rename("images").reset_index()
    )
    warnings = [
        f"class {row.label!r} has {row.images} readable images, expected about {expected_per_class}"
        for row in counts.itertuples() if expected_per_class is not None and row.images != expected_per_class
    ]
    empty = counts.loc[counts["images"] == 0, "label"].tolist()
    if empty:
        raise KvasirError(f"class folder(s) with no readable image: {', '.join(empty)}")
    return DatasetCheck(counts, resolutions, manifest.loc[manifest["error"] != "", ["path", "error"]], warnings)


def usable_images(manifest: pd.DataFrame, on_unreadable: str) -> pd.DataFrame:
    """The readable images; unreadable ones are an error unless data.on_unreadable is 'skip'."""
    bad = manifest[manifest["error"] != ""]
    if len(bad) and on_unreadable == "error":
        listing = "\n".join(f"  {row.path}: {row.error}" for row in bad.head(20).itertuples())
        more = f"\n  ... and {len(bad) - 20} more" if len(bad) > 20 else ""
        raise KvasirError(
            f"{len(bad)} image(s) could not be read:\n{listing}{more}\n"
            "Replace or delete them, or set data.on_unreadable=skip to leave them out of the split."
        )
    return manifest.loc[manifest["error"] == "", ["path", "label"]].reset_index(drop=True)
