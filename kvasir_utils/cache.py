"""The resized cache: every image decoded once and stored small, with a manifest of what it holds.

The cache folder is named by everything that changes its bytes (short side, JPEG quality; the
data stage adds the archive), so other settings make another cache instead of reusing a stale
one. The manifest records each source image's size, SHA-256 and any decode error;
``manifest_fingerprint`` is what checkpoints record as "the images this model was trained on".
"""

from __future__ import annotations

import hashlib
import io
import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd
from PIL import Image
from tqdm import tqdm

from kvasir_utils.errors import KvasirError
from kvasir_utils.io import atomic_path, sha256_text, write_csv_atomic

MANIFEST = "manifest.csv"
MANIFEST_COLUMNS = ["path", "label", "width", "height", "bytes", "mtime_ns", "source_sha256", "error"]
# What the fingerprint covers: the images' content and labels, not when they were unpacked.
CONTENT_COLUMNS = ["path", "label", "width", "height", "source_sha256", "error"]


def cached_name(path: str) -> str:
    return str(Path(path).with_suffix(".jpg"))


def resize_image(source: Path, target: Path, short_side: int, quality: int) -> tuple[int, int, str]:
    """Decode ``source`` once, store it with the given short side as JPEG; returns the original
    size and the source file's SHA-256."""
    payload = source.read_bytes()
    with Image.open(io.BytesIO(payload)) as image:
        width, height = image.size
        scale = min(1.0, short_side / min(width, height))
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        image.draft("RGB", size)  # JPEG: decode at a reduced scale straight away
        resized = image.convert("RGB").resize(size, Image.BICUBIC, reducing_gap=2.0)
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(target, ".jpg") as tmp:
        resized.save(tmp, format="JPEG", quality=quality)
    return width, height, hashlib.sha256(payload).hexdigest()


def _cache_one(job: tuple[str, str, int, int]) -> tuple[int | None, int | None, str, str]:
    source, target, short_side, quality = job
    try:
        return (*resize_image(Path(source), Path(target), short_side, quality), "")
    except Exception as exc:  # noqa: BLE001 - any decode failure is reported by path
        return None, None, "", f"{type(exc).__name__}: {exc}"


def _source_key(path: Path) -> tuple[int, int]:
    info = path.stat()
    return info.st_size, info.st_mtime_ns


def read_manifest(path: Path) -> pd.DataFrame:
    """The manifest as written (sizes are integers, empty for images that could not be read)."""
    manifest = pd.read_csv(path, keep_default_na=False, na_values={"width": [""], "height": [""]},
                           dtype={"path": str, "label": str, "error": str, "source_sha256": str})
    return manifest.astype({"width": "Int64", "height": "Int64"})


def build_cache(
    root: Path, images: pd.DataFrame, dest: Path, short_side: int, quality: int = 95,
    workers: int = 0, progress: bool = True,
) -> tuple[pd.DataFrame, int]:
    """Resize every image once into ``dest``; unchanged images are reused from an earlier run.

    Returns the manifest (one row per image: original size, file size and SHA-256, and the
    reason for every image that could not be decoded) and how many images were (re)made now.
    """
    manifest_path = dest / MANIFEST
    previous = {}
    if manifest_path.exists():
        old = read_manifest(manifest_path)
        if list(old.columns) == MANIFEST_COLUMNS:
            previous = {row["path"]: row for row in old.to_dict("records")}
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
        jobs = [(str(root / row["path"]), str(dest / cached_name(row["path"])), short_side, quality) for row in pending]
        with ProcessPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
            results = pool.map(_cache_one, jobs, chunksize=8)
            for row, (width, height, digest, error) in tqdm(
                zip(pending, results), total=len(jobs), desc=f"cache {short_side}px", unit="img",
                disable=not progress, mininterval=1,
            ):
                row.update(width=width, height=height, source_sha256=digest, error=error)
    manifest = pd.DataFrame(rows, columns=MANIFEST_COLUMNS).astype({"width": "Int64", "height": "Int64"})
    if pending or len(rows) != len(previous):
        write_csv_atomic(manifest, manifest_path)
    return manifest, len(pending)


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


def check_dataset(manifest: pd.DataFrame, classes: list[str], expected_per_class: int) -> DatasetCheck:
    """Images per class and resolutions; unreadable images and unusual counts are reported."""
    readable = manifest[manifest["error"] == ""]
    counts = readable.groupby("label").size().reindex(classes, fill_value=0).rename("images").reset_index()
    resolutions = (
        readable.assign(resolution=[f"{w}x{h}" for w, h in zip(readable["width"], readable["height"])])
        .groupby("resolution").size().sort_values(ascending=False).rename("images").reset_index()
    )
    warnings = [
        f"class {row.label!r} has {row.images} readable images, expected about {expected_per_class}"
        for row in counts.itertuples() if row.images != expected_per_class
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
