"""The stratified train/validation split (one split, or one fold of k), as the manifest every
later step reads (split.csv); a split from a file is ``split_file``'s."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd

from kvasir_utils.errors import KvasirError
from kvasir_utils.files import write_csv_atomic

SPLIT_COLUMNS = ["path", "label", "split"]


def fold_count(val_fraction: float, why: str) -> int:
    """k for a validation share of 1/k; another share is an error that says ``why`` k folds are needed."""
    folds_count = round(1 / val_fraction)
    if folds_count < 2 or abs(1 / folds_count - val_fraction) > 1e-9:
        raise KvasirError(f"{why} needs split.val_fraction = 1/k (0.5, 0.25, 0.2, 0.1, ...), got {val_fraction}: "
                          "the split takes one of k folds as validation")
    return folds_count


def make_split(images: pd.DataFrame, val_fraction: float, seed: int, groups=None, fold: int | None = None
               ) -> pd.DataFrame:
    """Stratified train/val split; the same images and seed give the same split.

    ``fold`` (``split.validation_fold``) makes fold ``fold`` of k = 1 / val_fraction stratified
    folds validation (k-fold cross-validation, one run per fold); None is the paper's single split.
    ``groups`` (one id per row of ``images``, e.g. near-duplicate groups) keeps every group on one
    side: scikit-learn's StratifiedGroupKFold with k = round(1 / val_fraction) folds, the first
    fold (or fold ``fold``) being validation, so the validation share is 1/k (0.2 for the paper's 80/20)."""
    from sklearn.model_selection import StratifiedGroupKFold, StratifiedKFold, train_test_split

    order = images["path"].to_numpy().argsort(kind="stable")
    ordered = images.iloc[order].reset_index(drop=True)
    too_small = ordered.groupby("label").size()
    too_small = too_small[too_small < 2]
    if len(too_small):
        raise KvasirError(f"class(es) with fewer than 2 images cannot be split: {', '.join(too_small.index)}")
    if groups is None and fold is None:
        _, val_index = train_test_split(
            ordered.index, test_size=val_fraction, random_state=seed, stratify=ordered["label"]
        )
    else:
        why = "split.group_near_duplicates" if groups is not None else "split.validation_fold"
        folds_count = fold_count(val_fraction, why)
        if (fold or 0) >= folds_count:
            raise KvasirError(f"split.validation_fold is {fold}, and split.val_fraction {val_fraction} makes "
                              f"{folds_count} folds: choose 0 to {folds_count - 1}")
        if groups is None:
            folds = StratifiedKFold(n_splits=folds_count, shuffle=True, random_state=seed).split(
                ordered.index, ordered["label"])
        else:
            folds = StratifiedGroupKFold(n_splits=folds_count, shuffle=True, random_state=seed).split(
                ordered.index, ordered["label"], groups=np.asarray(groups)[order])
        _, val_index = list(folds)[fold or 0]
    split = ordered.assign(split="train")
    split.loc[val_index, "split"] = "val"
    _check_sides(split, val_fraction, grouped=groups is not None)
    return split[SPLIT_COLUMNS]


def _check_sides(split: pd.DataFrame, val_fraction: float, grouped: bool) -> None:
    """Every class on both sides, and the validation share near the one asked for (a group of
    near-duplicates can be a whole class, which no split can divide; so can a class with fewer
    images than folds)."""
    sides = split.groupby("label")["split"].agg(lambda s: set(s))
    lopsided = [label for label, found in sides.items() if found != {"train", "val"}]
    share = (split["split"] == "val").mean()
    if lopsided or abs(share - val_fraction) > 0.05:
        found = (f"the split is lopsided (validation share {share:.2f} for {val_fraction}; classes without images "
                 f"on both sides: {', '.join(lopsided) or 'none'})")
        if grouped:
            raise KvasirError(f"{found}: near-duplicate groups this large cannot be divided. Set "
                              "split.group_near_duplicates=false, or check the near-duplicate threshold on your images")
        counts = split["label"].value_counts()
        raise KvasirError(f"{found}: a class needs about {round(1 / val_fraction)} images or more to have some on "
                          f"each side (smallest here: {counts.idxmin()} with {counts.min()}). Add images to the "
                          "small classes, leave them out of data.classes, or raise split.val_fraction (fewer folds)")


def write_split(split: pd.DataFrame, path: Path) -> Path:
    return write_csv_atomic(split[SPLIT_COLUMNS], path)


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


def describe_change(old: pd.DataFrame, new: pd.DataFrame) -> str:
    """How two splits differ, in words (for the message that refuses to replace one)."""
    old_sides, new_sides = old.set_index("path")["split"], new.set_index("path")["split"]
    added, removed = new_sides.index.difference(old_sides.index), old_sides.index.difference(new_sides.index)
    common = old_sides.index.intersection(new_sides.index)
    moved = int((old_sides[common] != new_sides[common]).sum())
    parts = [f"{len(added)} image(s) added"] if len(added) else []
    parts += [f"{len(removed)} removed"] if len(removed) else []
    parts += [f"{moved} moved between train and val"] if moved else []
    return ", ".join(parts) or "the same images on the same sides, in another form"
