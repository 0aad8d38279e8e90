"""The data stage: download, safe extraction, dataset check, resized cache, split, Dataset.

Raw data is immutable: the archive and the extracted images are never modified; everything the
study trains on is derived from them into ``cache-<px>/`` and ``runs/<profile>/split.csv``.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import shutil
import stat
import time
import urllib.error
import urllib.request
import zipfile
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlparse

import pandas as pd
import torch
from PIL import Image
from tqdm import tqdm

from kvasir_utils import synthetic
from kvasir_utils.config import Config
from kvasir_utils.errors import KvasirError
from kvasir_utils.io import atomic_path, write_csv_atomic, write_json_atomic

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff"}
SPLIT_COLUMNS = ["path", "label", "split"]
_CHUNK = 1 << 20


class DownloadError(KvasirError):
    """One address failed; the caller may try the next one."""


# -- where things live --------------------------------------------------------------------
def _generated_name(cfg: Config) -> str:
    """Named by what generates it, so other data.synthetic settings make (and use) another archive."""
    spec = cfg.data.synthetic
    return f"kvasir-generated-{spec.images_per_class}x-seed{spec.seed}-large{spec.large_fraction:g}.zip"


def archive_path(cfg: Config) -> Path:
    """Where the zip is kept; a user without network copies the zip here by hand."""
    if cfg.generated_data:
        return cfg.dataset_dir / _generated_name(cfg)
    return cfg.dataset_dir / Path(urlparse(cfg.data.url).path).name


def images_dir(cfg: Config) -> Path:
    return cfg.dataset_dir / "images"


def cache_dir(cfg: Config) -> Path:
    return cfg.dataset_dir / f"cache-{cfg.cache.short_side}"


def generate_archive(cfg: Config) -> Path:
    """The smoke profile's source: a generated archive, made once, used as a local file."""
    spec = cfg.data.synthetic
    path = cfg.dataset_dir / "generated" / _generated_name(cfg)
    if not path.exists():
        synthetic.make_archive(path, cfg.data.classes, spec.images_per_class, spec.seed, spec.large_fraction)
    return path


def source_urls(cfg: Config) -> list[str]:
    if cfg.generated_data:
        return [str(generate_archive(cfg))]
    return [cfg.data.url, *cfg.data.mirrors]


# -- download -----------------------------------------------------------------------------
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
        digest = hashlib.sha256()
        with open(path, "rb") as handle:
            while chunk := handle.read(_CHUNK):
                digest.update(chunk)
        if digest.hexdigest().lower() != sha256.lower():
            raise DownloadError(f"{path.name} has SHA-256 {digest.hexdigest()}, expected {sha256}")


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
        resumed = have > 0 and response.status == 206
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


# -- extraction ---------------------------------------------------------------------------
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
            raise KvasirError(f"{archive} is damaged ({exc}); delete it and run again") from exc
    write_json_atomic(partial / stamp.name, marker)
    shutil.rmtree(dest, ignore_errors=True)
    os.replace(partial, dest)
    return dest


def find_class_root(extracted: Path, classes: list[str], max_depth: int = 3) -> Path:
    """The folder under ``extracted`` that holds the class folders; a missing class is an error."""
    candidates = [extracted]
    frontier = [extracted]
    for _ in range(max_depth):
        frontier = [d for parent in frontier for d in sorted(parent.iterdir()) if d.is_dir()]
        candidates += frontier
    best = max(candidates, key=lambda d: sum((d / c).is_dir() for c in classes))
    missing = [c for c in classes if not (best / c).is_dir()]
    if len(missing) == len(classes):
        found = sorted(d.name for d in extracted.iterdir())
        raise KvasirError(
            f"no class folder of {classes} found in {extracted} (it holds {found}); "
            "is this a Kvasir v2 archive?"
        )
    if missing:
        raise KvasirError(f"class folder(s) missing from the dataset at {best}: {', '.join(missing)}")
    return best


def scan_images(root: Path, classes: list[str]) -> pd.DataFrame:
    """Image files per class folder (``path`` relative to ``root``, ``label``); other files ignored."""
    rows = []
    for label in classes:
        for file in sorted((root / label).rglob("*")):
            if file.is_file() and file.suffix.lower() in IMAGE_SUFFIXES and not file.name.startswith("."):
                rows.append((file.relative_to(root).as_posix(), label))
    return pd.DataFrame(rows, columns=["path", "label"])


# -- resized cache ------------------------------------------------------------------------
def cached_name(path: str) -> str:
    return str(Path(path).with_suffix(".jpg"))


def resize_image(source: Path, target: Path, short_side: int, quality: int) -> tuple[int, int]:
    """Decode ``source`` once, store it with the given short side as JPEG; returns the original size."""
    with Image.open(source) as image:
        width, height = image.size
        scale = min(1.0, short_side / min(width, height))
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        image.draft("RGB", size)  # JPEG: decode at a reduced scale straight away
        resized = image.convert("RGB").resize(size, Image.BICUBIC, reducing_gap=2.0)
    target.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(target, ".jpg") as tmp:
        resized.save(tmp, format="JPEG", quality=quality)
    return width, height


def _cache_one(job: tuple[str, str, int, int]) -> tuple[int | None, int | None, str]:
    source, target, short_side, quality = job
    try:
        width, height = resize_image(Path(source), Path(target), short_side, quality)
        return width, height, ""
    except Exception as exc:  # noqa: BLE001 - any decode failure is reported by path
        return None, None, f"{type(exc).__name__}: {exc}"


def _source_key(path: Path) -> tuple[int, int]:
    info = path.stat()
    return info.st_size, info.st_mtime_ns


def build_cache(
    root: Path, images: pd.DataFrame, dest: Path, short_side: int, quality: int = 95,
    workers: int = 0, progress: bool = True,
) -> pd.DataFrame:
    """Resize every image once into ``dest``; unchanged images are reused from an earlier run.

    Returns the manifest (``path, label, width, height, error``): original size per image, and
    the reason for every image that could not be decoded.
    """
    manifest_path = dest / "manifest.csv"
    previous = {}
    if manifest_path.exists():
        old = pd.read_csv(manifest_path, keep_default_na=False)
        previous = {row.path: row for row in old.itertuples(index=False)}
    rows, pending = [], []
    for path, label in images.itertuples(index=False):
        key = _source_key(root / path)
        old = previous.get(path)
        if old is not None and (old.bytes, old.mtime_ns) == key and (old.error or (dest / cached_name(path)).exists()):
            rows.append(old._asdict())
            continue
        rows.append({"path": path, "label": label, "bytes": key[0], "mtime_ns": key[1]})
        pending.append(rows[-1])
    if pending:
        jobs = [(str(root / row["path"]), str(dest / cached_name(row["path"])), short_side, quality) for row in pending]
        with ProcessPoolExecutor(max_workers=workers or os.cpu_count() or 1) as pool:
            results = pool.map(_cache_one, jobs, chunksize=8)
            for row, (width, height, error) in tqdm(
                zip(pending, results), total=len(jobs), desc=f"cache {short_side}px", unit="img",
                disable=not progress, mininterval=1,
            ):
                row.update(width=width, height=height, error=error)
    manifest = pd.DataFrame(rows, columns=["path", "label", "width", "height", "bytes", "mtime_ns", "error"])
    manifest["error"] = manifest["error"].fillna("")
    write_csv_atomic(manifest, manifest_path)
    return manifest


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
        readable.assign(resolution=[f"{int(w)}x{int(h)}" for w, h in zip(readable["width"], readable["height"])])
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


# -- split --------------------------------------------------------------------------------
def make_split(images: pd.DataFrame, val_fraction: float, seed: int) -> pd.DataFrame:
    """Stratified train/val split; the same images and seed give the same split."""
    from sklearn.model_selection import train_test_split

    ordered = images.sort_values("path").reset_index(drop=True)
    too_small = ordered.groupby("label").size()
    too_small = too_small[too_small < 2]
    if len(too_small):
        raise KvasirError(f"class(es) with fewer than 2 images cannot be split: {', '.join(too_small.index)}")
    _, val_index = train_test_split(
        ordered.index, test_size=val_fraction, random_state=seed, stratify=ordered["label"]
    )
    split = ordered.assign(split="train")
    split.loc[val_index, "split"] = "val"
    return split[SPLIT_COLUMNS]


def write_split(split: pd.DataFrame, path: Path) -> Path:
    return write_csv_atomic(split, path)


def read_split(path: Path, classes: list[str]) -> pd.DataFrame:
    if not path.exists():
        raise KvasirError(f"{path} does not exist: run notebook 01 first (make data PROFILE=...)")
    split = pd.read_csv(path)
    unknown = sorted(set(split["label"]) - set(classes))
    if list(split.columns) != SPLIT_COLUMNS or unknown:
        raise KvasirError(f"{path} does not match the profile (labels {unknown}); rerun notebook 01")
    return split


def split_counts(split: pd.DataFrame, classes: list[str]) -> pd.DataFrame:
    """Images per class in train and val, plus totals: the notebook's class count table."""
    table = split.pivot_table(index="label", columns="split", aggfunc="size", fill_value=0)
    table = table.reindex(index=classes, columns=["train", "val"], fill_value=0)
    table["total"] = table.sum(axis=1)
    table.loc["total"] = table.sum()
    return table


def cached_images_per_class(cache_root: Path, split: pd.DataFrame, per_class: int, seed: int = 0):
    """A few cached images of each class (for the sample grid): list of (label, PIL image)."""
    picked = split.groupby("label", sort=False).sample(frac=1, random_state=seed).groupby("label").head(per_class)
    return list(zip(picked["label"], load_cached(cache_root, picked["path"])))


def load_cached(cache_root: Path, paths) -> list:
    """Cached images (PIL, RGB) for split-relative ``paths``, for display."""
    return [read_image(Path(cache_root) / cached_name(p)) for p in paths]


def read_image(path: Path) -> Image.Image:
    """An image file, decoded, as RGB (the presets' PIL operations are the fastest on CPU)."""
    with Image.open(path) as image:
        return image.convert("RGB")


# -- Dataset ------------------------------------------------------------------------------
class KvasirDataset(torch.utils.data.Dataset):
    """Images of one split part, read from the resized cache, transformed by a preset."""

    def __init__(self, cache_root: Path, frame: pd.DataFrame, classes: list[str], transform=None):
        self.cache_root = Path(cache_root)
        self.paths = [cached_name(p) for p in frame["path"]]
        index = {name: i for i, name in enumerate(classes)}
        self.targets = [index[label] for label in frame["label"]]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        image = read_image(self.cache_root / self.paths[i])
        if self.transform is not None:
            image = self.transform(image)
        return image, self.targets[i]


def split_datasets(cfg: Config, split: pd.DataFrame, train_transform, eval_transform) -> dict[str, KvasirDataset]:
    """``{"train": ..., "val": ...}`` over the resized cache, in the profile's class order."""
    root = cache_dir(cfg)
    return {
        "train": KvasirDataset(root, split[split["split"] == "train"], cfg.data.classes, train_transform),
        "val": KvasirDataset(root, split[split["split"] == "val"], cfg.data.classes, eval_transform),
    }


def make_loader(dataset, batch_size: int, shuffle: bool, workers: int, pin_memory: bool, seed: int = 0):
    """A DataLoader whose shuffle order depends only on ``seed`` (so a resumed epoch matches)."""
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, shuffle=shuffle, num_workers=workers,
        pin_memory=pin_memory, persistent_workers=False, drop_last=False,
        generator=torch.Generator().manual_seed(seed),
    )
