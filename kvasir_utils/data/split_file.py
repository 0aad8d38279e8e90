"""A split read from a file (``split.source: file``): one row per image with its file name, its
class name and its fold index (HyperKvasir's ``official_splits/2_fold_split.csv``:
``file-name;class-name;split-index``). Rows are matched to images on the file name alone: the
file's class names may differ from the folders' (``polyp`` for ``polyps``), so they are compared,
not joined on. Rows without an image and images without a row are named with counts and examples,
and refused unless ``split.on_unmatched`` is ``skip``.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd

from kvasir_utils.errors import KvasirError
from kvasir_utils.files import sha256_file

COLUMNS = ["file", "file_class", "fold"]
EXAMPLES = 5


@dataclass
class SplitFileReport:
    """How a split file met the dataset: what notebook 01 shows and ``dataset.json`` keeps."""

    file: str
    sha256: str
    rows: int
    matched: int
    validation_fold: int
    folds: dict[int, int]  # rows per fold
    rows_without_image: int = 0
    images_without_row: int = 0
    rows_of_other_classes: int = 0  # images the profile leaves out (other class folders, unreadable)
    examples: dict[str, list[str]] = field(default_factory=dict)
    class_names: dict[str, list[str]] = field(default_factory=dict)  # the file's class name -> folder classes

    def lines(self) -> list[str]:
        """The report in words, one line each."""
        lines = [f"split file {self.file}: {self.rows:,} rows, folds {self.folds}; {self.matched:,} images matched; "
                 f"validation: fold {self.validation_fold}"]
        for key, count in (("rows_without_image", self.rows_without_image),
                           ("images_without_row", self.images_without_row)):
            if count:
                lines.append(f"{count} {key.replace('_', ' ')} (left out), e.g. {', '.join(self.examples[key])}")
        if self.rows_of_other_classes:
            lines.append(f"{self.rows_of_other_classes} rows name images of classes this run leaves out")
        renamed = {name: found for name, found in self.class_names.items() if found != [name]}
        if renamed:
            lines.append("class names in the file -> folders: " + ", ".join(
                f"{name} -> {'/'.join(found)}" for name, found in renamed.items()))
        return lines

    def to_dict(self) -> dict:
        return asdict(self)


def read_split_file(path: Path, delimiter: str) -> pd.DataFrame:
    """The split file as (``file``, ``file_class``, ``fold``): a header row, then those three columns."""
    if not path.is_file():
        raise KvasirError(f"the split file {path} does not exist: set split.file to the CSV that lists each image's "
                          "fold (relative to the project), or split.source=stratified")
    table = pd.read_csv(path, sep=delimiter, dtype=str, keep_default_na=False)
    if table.shape[1] < 3:
        raise KvasirError(f"the split file {path} has {table.shape[1]} column(s) when read with split.delimiter "
                          f"{delimiter!r}; expected file name, class name and fold index (HyperKvasir's files need "
                          'split.delimiter: ";" in the profile, or SET="split.delimiter=;" on the make line)')
    table = table.iloc[:, :3].set_axis(COLUMNS, axis=1)
    table["file"] = table["file"].str.strip().str.rsplit("/", n=1).str[-1]
    folds = pd.to_numeric(table["fold"].str.strip(), errors="coerce")
    if folds.isna().any() or (folds % 1 != 0).any():
        bad = table.loc[folds.isna() | (folds % 1 != 0), "fold"].head(EXAMPLES).tolist()
        raise KvasirError(f"the split file {path} has fold indices that are not whole numbers ({bad}): its third "
                          "column must be the fold index")
    repeated = table.loc[table["file"].duplicated(), "file"]
    if len(repeated):
        raise KvasirError(f"the split file {path} lists {len(repeated)} file name(s) twice, e.g. "
                          f"{', '.join(repeated.head(EXAMPLES))}: each image belongs to one fold")
    return table.assign(fold=folds.astype(int))


def _by_name(images: pd.DataFrame) -> pd.Series:
    names = images["path"].str.rsplit("/", n=1).str[-1]
    repeated = names[names.duplicated(keep=False)]
    if len(repeated):
        paths = images.loc[repeated.index, "path"].head(EXAMPLES).tolist()
        raise KvasirError(f"{repeated.nunique()} file name(s) occur in more than one folder of the dataset (e.g. "
                          f"{', '.join(paths)}), so a split file, which names files alone, cannot say which is meant")
    return names


def split_from_file(images: pd.DataFrame, path: Path, delimiter: str, validation_fold: int, on_unmatched: str,
                    elsewhere: set[str] = frozenset()) -> tuple[pd.DataFrame, SplitFileReport]:
    """``images`` (``path``, ``label``) with ``split`` = val for the rows of ``validation_fold``, train
    for the other folds. ``elsewhere`` are file names of images the run leaves out on purpose (class
    folders not selected, unreadable images skipped): their rows are counted, not refused."""
    table = read_split_file(path, delimiter)
    folds = table["fold"].value_counts().sort_index()
    if validation_fold not in folds.index:
        raise KvasirError(f"split.validation_fold is {validation_fold}, and the split file {path} has folds "
                          f"{', '.join(map(str, folds.index))}: choose one of them")
    names = _by_name(images)
    fold_of = table.set_index("file")["fold"]
    listed = names.isin(fold_of.index)
    other = table["file"].isin(elsewhere)
    missing = table.loc[~table["file"].isin(names) & ~other, "file"]
    unlisted = images.loc[~listed, "path"]
    report = SplitFileReport(
        file=str(path), sha256=sha256_file(path), rows=len(table), matched=int(listed.sum()),
        validation_fold=validation_fold, folds={int(k): int(v) for k, v in folds.items()},
        rows_without_image=len(missing), images_without_row=len(unlisted), rows_of_other_classes=int(other.sum()),
        examples={"rows_without_image": missing.head(EXAMPLES).tolist(),
                  "images_without_row": unlisted.head(EXAMPLES).tolist()},
        class_names=_class_names(table, images.assign(file=names)))
    if (len(missing) or len(unlisted)) and on_unmatched == "error":
        raise KvasirError(
            f"the split file {path} does not match the dataset: {_unmatched(missing, 'row(s) name no image in it')}"
            f"{'; ' if len(missing) and len(unlisted) else ''}{_unmatched(unlisted, 'image(s) have no row')}. "
            "Check that split.file belongs to this dataset (and data.classes), or set split.on_unmatched=skip to "
            "leave them out of the split")
    split = images[listed].assign(split=lambda f: ["val" if fold_of[n] == validation_fold else "train"
                                                   for n in names[listed]])
    return split.reset_index(drop=True), report


def _unmatched(items: pd.Series, what: str) -> str:
    return f"{len(items)} {what} (e.g. {', '.join(items.head(EXAMPLES))})" if len(items) else ""


def _class_names(table: pd.DataFrame, images: pd.DataFrame) -> dict[str, list[str]]:
    """Each class name of the file -> the folder classes of the images its rows name (one, when they agree)."""
    joined = table.merge(images[["file", "label"]], on="file")
    return {name: sorted(set(group["label"])) for name, group in joined.groupby("file_class", sort=True)}
