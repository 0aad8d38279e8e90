"""The data stage (notebook 01): where the dataset's files live, and preparing them.

Raw data is immutable: the archive and the extracted images are never modified; everything the
study trains on is derived from them into a resized cache and ``runs/<profile>/split.csv``.
Every derived folder is named by what it is derived from (the archive; the cache's short side and
JPEG quality), so other settings never reuse or overwrite it. Preparing the dataset holds a lock
on its folder: concurrent runs (two ``make`` runs, sweep members) wait for one another and reuse
what the first prepared.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

import pandas as pd

from kvasir_utils.config import Config
from kvasir_utils.data import duplicates, overlays, synthetic
from kvasir_utils.data.cache import (
    MANIFEST,
    DatasetCheck,
    build_cache,
    check_dataset,
    manifest_fingerprint,
    read_manifest,
    usable_images,
)
from kvasir_utils.data.extract import extract_archive
from kvasir_utils.data.images import iter_cached
from kvasir_utils.data.layout import find_class_root, scan_images
from kvasir_utils.data.sources import fetch_archive, read_archive_record
from kvasir_utils.data.split import describe_change, make_split, write_split
from kvasir_utils.errors import KvasirError
from kvasir_utils.io import folder_lock, sha256_file, write_json_atomic
from kvasir_utils.profiles import save_config


# -- where things live --------------------------------------------------------------------
def _generated_name(cfg: Config) -> str:
    """Named by what generates it, so other data.synthetic settings make (and use) another archive."""
    spec = cfg.data.synthetic
    return (f"kvasir-generated-v{synthetic.GENERATOR_VERSION}-{spec.images_per_class}x-seed{spec.seed}"
            f"-large{spec.large_fraction:g}.zip")


def archive_path(cfg: Config) -> Path:
    """Where the zip is kept; a user without network copies the zip here by hand."""
    if cfg.generated_data:
        return cfg.dataset_dir / _generated_name(cfg)
    return cfg.dataset_dir / Path(urlparse(cfg.data.url).path).name


def images_dir(cfg: Config) -> Path:
    """The extracted archive (one folder per archive)."""
    return cfg.dataset_dir / "images" / archive_path(cfg).stem


def cache_dir(cfg: Config) -> Path:
    """The resized cache, named by everything that changes its bytes."""
    return cfg.dataset_dir / "cache" / f"{archive_path(cfg).stem}-{cfg.cache.short_side}px-q{cfg.cache.quality}"


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


# -- the stage ----------------------------------------------------------------------------
@dataclass
class PreparedData:
    archive: Path
    image_root: Path
    manifest: pd.DataFrame
    check: DatasetCheck
    newly_cached: int  # images decoded now; 0 when an earlier run (or a concurrent one) had done it


def prepare_dataset(cfg: Config, progress: bool = True) -> PreparedData:
    """Download (or generate), extract and cache the profile's dataset, then check it.

    Holds the dataset folder's lock throughout, so a concurrent run waits and then reuses the
    finished files instead of writing the same ones.
    """
    with folder_lock(cfg.dataset_dir, "preparing the dataset", wait=True):
        archive = fetch_archive(source_urls(cfg), archive_path(cfg), cfg.data.size, cfg.data.sha256,
                                offline=cfg.runtime.offline, progress=progress)
        image_root = find_class_root(extract_archive(archive, images_dir(cfg), progress), cfg.data.classes)
        manifest, newly_cached = build_cache(image_root, scan_images(image_root, cfg.data.classes), cache_dir(cfg),
                               cfg.cache.short_side, cfg.cache.quality, cfg.cache.workers, progress)
    check = check_dataset(manifest, cfg.data.classes, cfg.data.expected_per_class)
    return PreparedData(archive, image_root, manifest, check, newly_cached)


def archive_record(prepared: PreparedData) -> dict:
    """Where the archive came from, its size and SHA-256 (computed once, when it was first used)."""
    return read_archive_record(prepared.archive)


def prepare_split(cfg: Config, prepared: PreparedData) -> pd.DataFrame:
    """Notebook 01's split: the usable images (unreadable ones refused or left out, as
    ``data.on_unreadable`` says), kept in near-duplicate groups when ``split.group_near_duplicates``
    asks, split, and written as ``split.csv`` (never over a split that models were trained on), with
    the settings it belongs to saved beside it only once it is written."""
    usable = usable_images(prepared.manifest, cfg.data.on_unreadable)
    groups = near_duplicate_groups(cfg, usable) if cfg.split.group_near_duplicates else None
    run_split = make_split(usable, cfg.split.val_fraction, cfg.split.seed, groups)
    write_run_split(cfg, run_split)
    record = archive_record(prepared)
    write_json_atomic(cfg.dataset_record, {"archive": {k: record[k] for k in ("archive", "source", "bytes", "sha256")}})
    save_config(cfg, cfg.run_dir / "config.yaml")
    return run_split


def trained_checkpoints(cfg: Config) -> list[Path]:
    return sorted(cfg.run_dir.glob("*/stage*/checkpoint.pt"))


def write_run_split(cfg: Config, split: pd.DataFrame) -> Path:
    """Write ``runs/<profile>/split.csv``, refusing to replace a different split that the run's
    models were trained on (they would be evaluated on images they may have trained on)."""
    path = cfg.split_csv
    if path.exists() and trained_checkpoints(cfg):
        old = pd.read_csv(path)
        if not old.equals(split.reset_index(drop=True)):
            raise KvasirError(
                f"{cfg.run_dir} holds models trained on the split in {path.name}, and these settings give "
                f"another split ({describe_change(old, split)}). Nothing was changed. To train on the new "
                f"split, delete that folder (`make clean PROFILE={cfg.profile}`), or keep both runs by giving "
                f"this one its own folder: SET=\"... paths.runs=<another folder>\"."
            )
    return write_split(split, path)


def input_fingerprints(cfg: Config) -> dict[str, str]:
    """What a model is trained on: SHA-256 of ``split.csv`` and of the cache's content."""
    manifest_path = cache_dir(cfg) / MANIFEST
    for path in (cfg.split_csv, manifest_path):
        if not path.exists():
            raise KvasirError(f"{path} does not exist: run notebook 01 first (make data PROFILE={cfg.profile})")
    manifest = read_manifest(manifest_path)
    return {"split.csv": sha256_file(cfg.split_csv),
            "cache manifest": manifest_fingerprint(manifest, cfg.cache.short_side, cfg.cache.quality)}


def image_hashes(cfg: Config, paths):
    """Perceptual hashes of the cached images (one uint64 per path)."""
    return duplicates.perceptual_hashes(iter_cached(cache_dir(cfg), paths))


def near_duplicate_groups(cfg: Config, images: pd.DataFrame):
    """A group id per row of ``images``: frames joined by near-duplicate pairs share one."""
    pairs = duplicates.near_duplicate_pairs(image_hashes(cfg, images["path"]))
    return duplicates.duplicate_groups(len(images), pairs)


def guide_box_flags(cfg: Config, frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with a ``has_box`` column: whether each cached image carries the guide box."""
    return frame.assign(has_box=[overlays.has_guide_box(image) for image in iter_cached(cache_dir(cfg), frame["path"])])
