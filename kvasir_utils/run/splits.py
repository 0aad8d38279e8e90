"""``make splits``: a dataset's random and near-duplicate-grouped train/validation splits as files
others can use (file name, class, side), with a README that says how they were made and the
SHA-256 of each, under ``reports/<profile>/splits/``.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from kvasir_utils.config import Config
from kvasir_utils.data import prepare
from kvasir_utils.data.split import make_split
from kvasir_utils.errors import KvasirError
from kvasir_utils.files import atomic_folder, sha256_file, write_text_atomic
from kvasir_utils.train import features

SPLIT_FILES = {"random": "random.csv", "grouped": "grouped.csv"}
COLUMNS = ["file", "class", "side"]


def split_file_table(split: pd.DataFrame) -> pd.DataFrame:
    """A split as others read it: the image's file name, its class and its side (train or val)."""
    return pd.DataFrame({"file": split["path"].map(lambda p: Path(p).name), "class": split["label"],
                         "side": split["split"]})[COLUMNS]


def write_splits(cfg: Config) -> Path:
    """Prepare the dataset (notebook 01's data step), find its near-duplicates, and write both
    splits and their README, the folder whole or not at all. Returns the README."""
    if cfg.split.source != "stratified" or cfg.split.validation_fold is not None:
        raise KvasirError(f"make splits makes one stratified split, random and grouped; profile {cfg.profile} reads "
                          "its split from a file or asks for one fold of k (split.source, split.validation_fold): "
                          "run it with split.source=stratified and split.validation_fold=null")
    prepared = prepare.prepare_dataset(cfg)
    found = features.near_duplicates_of(cfg, prepared)
    usable = prepare.usable_images(prepared.manifest, cfg.data.on_unreadable)
    paths = usable["path"].tolist()
    if not any(record.get("used", True) for record in found.detectors.values()):
        raise KvasirError("no near-duplicate detector could be used, so there is no grouped split to write: "
                          + "; ".join(f"{n}: {r.get('why', '')}" for n, r in found.detectors.items()))
    splits = {"random": make_split(usable, cfg.split.val_fraction, cfg.split.seed),
              "grouped": make_split(usable, cfg.split.val_fraction, cfg.split.seed, found.groups(paths))}
    folder = cfg.report.splits
    with atomic_folder(folder) as partial:
        found.write(partial / "near_duplicates.csv", partial / "near_duplicates.json")
        for name, split in splits.items():
            split_file_table(split).to_csv(partial / SPLIT_FILES[name], index=False)
        hashes = {name: sha256_file(partial / SPLIT_FILES[name]) for name in splits}
        across = {name: len(found.across(split)) for name, split in splits.items()}
        write_text_atomic(partial / "README.md", readme(cfg, prepare.archive_record(prepared), found, hashes, across))
    return folder / "README.md"


def readme(cfg: Config, archive: dict, found, hashes: dict[str, str], across: dict[str, int]) -> str:
    """How the split files were made, in words and numbers, with each file's SHA-256."""
    detectors = "; ".join(
        f"{name}: {record['unit']} {record['threshold']:.4g}, found {record['recall']:.0%} of planted video-like copies"
        + ("" if record.get("used", True) else f", not used ({record['why']})")
        for name, record in found.detectors.items())
    rows = "\n".join(f"| `{SPLIT_FILES[name]}` | {what} | {across[name]} | `{hashes[name]}` |" for name, what in (
        ("random", "stratified by class, image by image (the paper's protocol)"),
        ("grouped", "stratified by class, every group of near-duplicate frames on one side")))
    return f"""# Train/validation splits of {cfg.data.name}

Made by `make splits PROFILE={cfg.profile_argument}` from the dataset archive `{archive.get('archive', cfg.data.name)}`
(SHA-256 `{archive.get('sha256', 'not recorded')}`), with a validation share of {cfg.split.val_fraction:g} and
seed {cfg.split.seed}: the random split by scikit-learn's `train_test_split` stratified by class, the grouped one
by its `StratifiedGroupKFold` with k = {round(1 / cfg.split.val_fraction)} folds, the first fold validation.
Each file has one row per image: `file` (the image's file name), `class` (its class folder) and
`side` (`train` or `val`). `near_duplicates.csv` lists the pairs the detectors found
(`near_duplicates.json`: each detector's threshold and how it did on planted copies).

Near-duplicate frames were found by {detectors}. Two frames joined by a chain of pairs form a group.

| file | how | near-duplicate pairs across the split | SHA-256 |
|---|---|---|---|
{rows}
"""
