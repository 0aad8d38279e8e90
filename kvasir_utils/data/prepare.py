"""The data stage (notebook 01): where the dataset's files live, and preparing them.

Raw data is immutable: the archive, the extracted images and a folder used in place are never
modified; everything the study trains on is derived from them into a resized cache and
``runs/<profile>/split.csv``. Every derived folder is named by what it is derived from (the
archive, or the folder and its place; the cache's short side and JPEG quality), so other settings
never reuse or overwrite it. Preparing the dataset holds a lock
on its folder: concurrent runs (two ``make`` runs, sweep members) wait for one another and reuse
what the first prepared.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from kvasir_utils.artefacts import SPLIT
from kvasir_utils.config import Config
from kvasir_utils.data import duplicates, overlays, synthetic, synthetic_hyperkvasir
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
from kvasir_utils.data.layout import READ_FORMATS, find_classes
from kvasir_utils.data.sources import (
    archive_stem,
    fetch_archive,
    folder_record,
    local_folder,
    read_archive_record,
    source_name,
)
from kvasir_utils.data.split import describe_change, make_split, write_split
from kvasir_utils.data.split_file import split_from_file
from kvasir_utils.errors import KvasirError
from kvasir_utils.files import folder_lock, sha256_file, sha256_text, write_json_atomic
from kvasir_utils.profiles import save_config


# -- where things live --------------------------------------------------------------------
def _generated_name(cfg: Config) -> str:
    """Named by what generates it, so other data.synthetic settings make (and use) another dataset."""
    spec = cfg.data.synthetic
    if spec.layout == "hyper-kvasir":  # its copied frames follow the mapping file: an edit makes another tree
        mapping = sha256_text(json.dumps(synthetic_hyperkvasir.kvasir_counterparts(), sort_keys=True))[:8]
        return (f"hyperkvasir-generated-v{synthetic_hyperkvasir.GENERATOR_VERSION}-{spec.images_per_class}x"
                f"-seed{spec.seed}-large{spec.large_fraction:g}-mapping{mapping}")
    return (f"kvasir-generated-v{synthetic.GENERATOR_VERSION}-{spec.images_per_class}x-seed{spec.seed}"
            f"-large{spec.large_fraction:g}.zip")


def source_folder(cfg: Config) -> Path | None:
    """The folder the images are read from in place (data.url a folder, or a generated folder tree);
    None when they come in an archive."""
    if cfg.generated_data:
        return generated_folder(cfg) if cfg.data.synthetic.layout == "hyper-kvasir" else None
    return local_folder(cfg.data.url)


def archive_path(cfg: Config) -> Path:
    """Where the archive is kept; a user without network copies it here by hand."""
    if cfg.generated_data:
        return cfg.dataset_dir / _generated_name(cfg)
    return cfg.dataset_dir / source_name(cfg.data.url)


def _source_stem(cfg: Config) -> str:
    """What the derived folders are named by: the archive, or the folder and where it is (two folders
    of one name are two datasets)."""
    if cfg.generated_data or local_folder(cfg.data.url) is None:
        return archive_stem(archive_path(cfg).name)
    folder = local_folder(cfg.data.url)
    return f"{folder.name}-{sha256_text(str(folder))[:8]}"


def images_dir(cfg: Config) -> Path:
    """The images: the folder used in place, or the extracted archive (one folder per archive)."""
    return source_folder(cfg) or cfg.dataset_dir / "images" / _source_stem(cfg)


def cache_dir(cfg: Config) -> Path:
    """The resized cache, named by everything that changes its bytes."""
    return cfg.dataset_dir / "cache" / f"{_source_stem(cfg)}-{cfg.cache.short_side}px-q{cfg.cache.quality}"


def generate_archive(cfg: Config) -> Path:
    """The smoke profile's source: a generated archive, made once, used as a local file."""
    spec = cfg.data.synthetic
    path = cfg.dataset_dir / "generated" / _generated_name(cfg)
    if not path.exists():
        synthetic.make_archive(path, cfg.data.classes, spec.images_per_class, spec.seed, spec.large_fraction)
    return path


def generated_folder(cfg: Config) -> Path:
    """Where the smoke-hyperkvasir profile's generated HyperKvasir-shaped folder tree lies (used in place)."""
    return cfg.dataset_dir / "generated" / _generated_name(cfg)


def generate_folder(cfg: Config) -> Path:
    """Make the generated folder tree once (prepare_dataset calls this under the dataset's lock)."""
    spec, path = cfg.data.synthetic, generated_folder(cfg)
    if not path.exists():
        synthetic_hyperkvasir.make_tree(path, spec.images_per_class, spec.seed, spec.large_fraction)
    return path


def source_urls(cfg: Config) -> list[str]:
    if cfg.generated_data:
        return [str(generate_archive(cfg))]
    return [cfg.data.url, *cfg.data.mirrors]


def split_file(cfg: Config) -> Path:
    """The file a ``split.source: file`` split is read from: split.file, or the generated tree's own."""
    if cfg.split_file is not None:
        return cfg.split_file
    return generated_folder(cfg) / synthetic_hyperkvasir.SPLIT_FILE


# -- the stage ----------------------------------------------------------------------------
@dataclass
class PreparedData:
    archive: Path  # the archive, or the folder the images are read from in place
    image_root: Path
    manifest: pd.DataFrame
    check: DatasetCheck
    newly_cached: int  # images decoded now; 0 when an earlier run (or a concurrent one) had done it
    classes: list[str] = field(default_factory=list)  # the run's classes, in table order
    other_images: pd.DataFrame | None = None  # images of class folders the profile does not select
    in_place: bool = False  # the images are read from a folder, not extracted from an archive


def prepare_dataset(cfg: Config, progress: bool = True) -> PreparedData:
    """Download (or generate), extract and cache the profile's dataset, then check it; a folder
    given as data.url is read in place, never copied.

    Holds the dataset folder's lock throughout, so a concurrent run waits and then reuses the
    finished files instead of writing the same ones.
    """
    folder = source_folder(cfg)  # a local folder that does not exist is named before anything is written
    with folder_lock(cfg.dataset_dir, "preparing the dataset", wait=True):
        if folder is not None and cfg.generated_data:
            generate_folder(cfg)  # made here, under the lock: a concurrent run waits for it
        if folder is None:
            archive = fetch_archive(source_urls(cfg), archive_path(cfg), cfg.data.size, cfg.data.sha256,
                                    offline=cfg.runtime.offline, progress=progress)
            top = extract_archive(archive, images_dir(cfg), progress)
        else:
            archive = top = folder
        found = find_classes(top, cfg.data.classes, cfg.data.on_stray)
        manifest, newly_cached = build_cache(found.root, found.images, cache_dir(cfg), cfg.cache.short_side,
                                             cfg.cache.quality, cfg.cache.workers, progress)
    check = check_dataset(manifest, found.classes, cfg.data.expected_per_class)
    check.warnings += [f"{len(found.strays)} image(s) outside any class folder left out (data.on_stray=skip): "
                       f"{', '.join(found.strays[:5])}"] if found.strays else []
    check.warnings += [f"{len(found.unread)} file(s) in class folders are not images this study reads, left out: "
                       f"{', '.join(found.unread[:5])}; it reads {READ_FORMATS}: convert "
                       "them to one of those to use them"] if found.unread else []
    return PreparedData(archive, found.root, manifest, check, newly_cached, found.classes, found.other_images,
                        folder is not None)


def archive_record(prepared: PreparedData) -> dict:
    """Where the data came from: for an archive its name, source, size and SHA-256 (computed once,
    when it was first used); for a folder used in place the same keys, with the SHA-256 of its
    images' list and content (``kind``: folder)."""
    if prepared.in_place:
        return folder_record(prepared.archive, prepared.manifest)
    return {"kind": "archive", **read_archive_record(prepared.archive)}


def prepare_split(cfg: Config, prepared: PreparedData, near_duplicates: duplicates.NearDuplicates | None = None
                  ) -> pd.DataFrame:
    """Notebook 01's split: the usable images (unreadable ones refused or left out, as
    ``data.on_unreadable`` says), split as ``split.source`` says (stratified, in near-duplicate
    groups when ``split.group_near_duplicates`` asks, one fold of k when ``split.validation_fold``
    is set; or read from ``split.file``), and written as ``split.csv`` (never over a split that
    models were trained on), with the settings it belongs to saved beside it only once it is written.
    Grouping needs ``near_duplicates`` (``train.features.find_near_duplicates`` of the usable
    images); the split's record in ``dataset.json`` says which detectors and thresholds made it."""
    usable = usable_images(prepared.manifest, cfg.data.on_unreadable)
    report = None
    grouped_by = None
    if cfg.split.source == "file":
        unreadable = prepared.manifest[prepared.manifest["error"] != ""]
        left_out = {*_file_names(prepared.other_images), *_file_names(unreadable)}
        run_split, report = split_from_file(usable, split_file(cfg), cfg.split.delimiter, cfg.split.validation_fold,
                                            cfg.split.on_unmatched, left_out)
        for line in report.lines():
            print(line)
    else:
        groups = None
        if cfg.split.group_near_duplicates:
            if near_duplicates is None:
                raise KvasirError("split.group_near_duplicates needs the near-duplicate pairs: pass "
                                  "train.features.near_duplicates_of(cfg, prepared) to prepare_split, "
                                  "as notebook 01 does")
            grouped_by = {name: {"threshold": record["threshold"], "unit": record["unit"]}
                          for name, record in near_duplicates.detectors.items() if record.get("used", True)}
            if not grouped_by:
                left_out = "; ".join(f"{n}: {r.get('why', '')}" for n, r in near_duplicates.detectors.items())
                raise KvasirError(f"split.group_near_duplicates is true, but no near-duplicate detector could be used "
                                  f"({left_out}). Add phash to split.near_duplicates.detectors, give the features "
                                  "model pretrained weights, or set split.near_duplicates.features_threshold")
            groups = near_duplicates.groups(usable["path"].tolist())
        run_split = make_split(usable, cfg.split.val_fraction, cfg.split.seed, groups, cfg.split.validation_fold)
    write_run_split(cfg, run_split)
    if near_duplicates is not None:  # beside the split they describe, only once it is written
        near_duplicates.write(*cfg.run.near_duplicates)
    record = archive_record(prepared)
    keys = ("kind", "archive", "source", "bytes", "sha256", "images")
    write_json_atomic(cfg.run.dataset_record, {"archive": {k: record[k] for k in keys if k in record},
                                               "classes": prepared.classes,
                                               "split_file": report.to_dict() if report else None,
                                               "grouped_by_near_duplicates": grouped_by})
    save_config(cfg, cfg.run.settings)
    return run_split


def _file_names(frame: pd.DataFrame | None) -> list[str]:
    return [] if frame is None else frame["path"].str.rsplit("/", n=1).str[-1].tolist()


def trained_checkpoints(cfg: Config) -> list[Path]:
    return cfg.run.checkpoints()


def write_run_split(cfg: Config, split: pd.DataFrame) -> Path:
    """Write ``runs/<profile>/split.csv``, refusing to replace a different split that the run's
    models were trained on (they would be evaluated on images they may have trained on)."""
    path = cfg.run.split
    if path.exists() and trained_checkpoints(cfg):
        old = pd.read_csv(path)
        if not old.equals(split.reset_index(drop=True)):
            raise KvasirError(
                f"{cfg.run_dir} holds models trained on the split in {path.name}, and these settings give "
                f"another split ({describe_change(old, split)}). Nothing was changed. To train on the new "
                f"split, delete that folder (`make clean PROFILE={cfg.profile_argument}`), or keep both runs by giving "
                f"this one its own folder: SET=\"... paths.runs=<another folder>\"."
            )
    return write_split(split, path)


def input_fingerprints(cfg: Config) -> dict[str, str]:
    """What a model is trained on: SHA-256 of ``split.csv`` and of the cache's content."""
    manifest_path = cache_dir(cfg) / MANIFEST
    for path in (cfg.run.split, manifest_path):
        if not path.exists():
            raise KvasirError(f"{path} does not exist: run notebook 01 first "
                              f"(make data PROFILE={cfg.profile_argument})")
    manifest = read_manifest(manifest_path)
    return {SPLIT: sha256_file(cfg.run.split),
            "cache manifest": manifest_fingerprint(manifest, cfg.cache.short_side, cfg.cache.quality)}


def image_hashes(cfg: Config, paths):
    """Perceptual hashes of the cached images (one uint64 per path)."""
    return duplicates.perceptual_hashes(iter_cached(cache_dir(cfg), paths))


def guide_box_flags(cfg: Config, frame: pd.DataFrame) -> pd.DataFrame:
    """``frame`` with a ``has_box`` column: whether each cached image carries the guide box."""
    return frame.assign(has_box=[overlays.has_guide_box(image) for image in iter_cached(cache_dir(cfg), frame["path"])])
