"""Where the classes are in a dataset's folder tree: every folder that holds images and no folder
with images below it is a class (named by the folder), at any depth; ``data.classes`` selects and
orders them, or, left empty, every one found is a class. Kvasir v2 is one level
(``kvasir-dataset-v2/<class>/``), HyperKvasir four (``labeled-images/<tract>/<kind>/<class>/``).

Image paths are given relative to the deepest folder that holds every class folder, so one
dataset's paths do not depend on where it was unpacked or which classes a profile selects.
"""

from __future__ import annotations

import difflib
import os
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from kvasir_utils.errors import KvasirError
from kvasir_utils.files import is_utf8_name, shown_name

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}
READ_FORMATS = ", ".join(sorted(IMAGE_SUFFIXES))  # as messages list them
# Folder names of a tree that is split already (Kaggle's train/<class>/ and val/<class>/)
SPLIT_FOLDER_NAMES = {"train", "training", "val", "valid", "validation", "test", "testing"}
SKIPPED_FOLDERS = {"__MACOSX"}  # macOS resource forks in zips: never data
SKIPPED_FILES = {"Thumbs.db", "desktop.ini"}  # Windows' own files in a folder: never data
EXAMPLES = 5


@dataclass
class ClassFolders:
    """A dataset's class folders and their images (``path`` relative to ``root``, ``label``)."""

    root: Path
    classes: list[str]  # the run's classes, in table order
    images: pd.DataFrame  # images of those classes
    other_images: pd.DataFrame  # images of class folders the profile does not select
    strays: list[str] = field(default_factory=list)  # images outside any class folder, left out
    ignored_files: list[str] = field(default_factory=list)  # files that are not images (CSV, text, ...)
    unread: list[str] = field(default_factory=list)  # of those, the ones inside a class folder (left out)


def is_image(name: str) -> bool:
    return Path(name).suffix.lower() in IMAGE_SUFFIXES and not name.startswith(".")


def walk_folders(top: Path):
    """``os.walk`` of ``top`` that follows a linked folder to a folder outside the tree, each real
    folder once; a link to a folder inside the tree (a second name for it, or a way back up) is not
    followed, so every folder is read under its own name. Hidden folders and macOS resource forks are
    left out; subfolders in sorted order."""
    inside, seen = os.path.realpath(top), set()
    for folder, subfolders, files in os.walk(top, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:
            subfolders[:] = []
            continue
        seen.add(real)
        subfolders[:] = [d for d in sorted(subfolders) if not d.startswith(".") and d not in SKIPPED_FOLDERS
                         and not _links_inside(os.path.join(folder, d), inside)]
        yield folder, subfolders, files


def _links_inside(path: str, top_real: str) -> bool:
    return os.path.islink(path) and os.path.commonpath([os.path.realpath(path), top_real]) == top_real


def _walk(top: Path):
    """(folder, subfolders, image names, other file names) under ``top`` (``walk_folders``), in
    sorted order, without hidden files and Windows' own."""
    for folder, subfolders, files in walk_folders(top):
        names = sorted(f for f in files if not f.startswith(".") and f not in SKIPPED_FILES)
        yield Path(folder), subfolders, [f for f in names if is_image(f)], [f for f in names if not is_image(f)]


def image_files(top: Path) -> list[Path]:
    """Every image the class-folder reader sees under ``top`` (linked folders followed, hidden files
    and Windows' own left out), in sorted order."""
    return [folder / name for folder, _, images, _ in _walk(top) for name in images]


def _tree(top: Path) -> tuple[dict[Path, list[str]], list[Path], list[str]]:
    """Folders holding images directly ({folder: names}), folders with neither images nor
    subfolders, and files that are not images (relative to ``top``)."""
    holding, empty, others = {}, [], []
    for folder, subfolders, images, other in _walk(top):
        if images:
            holding[folder] = images
        elif not subfolders:
            empty.append(folder)
        others += [(folder / name).relative_to(top).as_posix() for name in other]
    return holding, empty, others


def _examples(items: list[str]) -> str:
    more = f" and {len(items) - EXAMPLES} more" if len(items) > EXAMPLES else ""
    return ", ".join(items[:EXAMPLES]) + more


def find_classes(top: Path, classes: list[str], on_stray: str = "error") -> ClassFolders:
    """The class folders under ``top`` (a folder used in place, or an extracted archive), the
    images of the ``classes`` selected (every class found when empty), and what lies beside them.

    Errors name the folder and the remedy: no image at all, a class named twice, a class the
    profile names that is missing (with the nearest names found) or holds no image, and images
    outside any class folder unless ``on_stray`` is ``skip``."""
    if not top.is_dir():
        raise KvasirError(f"the dataset folder {top} does not exist: check data.url")
    holding, empty, ignored = _tree(top)
    above = {parent for folder in holding for parent in folder.relative_to(top).parents}
    leaves = [f for f in holding if f.relative_to(top) not in above]
    if not leaves:
        raise KvasirError(f"no image ({READ_FORMATS}) found anywhere under {top}: "
                          "data.url must be a folder (or archive) of class folders that hold the images")
    root = Path(os.path.commonpath(leaves)) if len(leaves) > 1 else leaves[0].parent
    _check_unique_names(leaves, top)
    by_name = {leaf.name: leaf for leaf in leaves}
    strays = [(f / name).relative_to(top).as_posix() for f in holding if f not in leaves for name in holding[f]]
    empty = [f for f in empty if f.is_relative_to(root) and f != root]
    selected = _select(classes, by_name, empty, top, ignored)
    _check_strays(strays, top, on_stray)
    rows = [((leaf / name).relative_to(root).as_posix(), leaf.name) for leaf in leaves for name in holding[leaf]]
    _check_names([path for path, _ in rows], top)
    found = pd.DataFrame(rows, columns=["path", "label"])
    chosen = found["label"].isin(selected)
    order = found.loc[chosen, "label"].map({name: i for i, name in enumerate(selected)})
    images = found[chosen].iloc[order.to_numpy().argsort(kind="stable")].reset_index(drop=True)
    unread = _files_in(list(by_name.values()), ignored, top)
    return ClassFolders(root, selected, images, found[~chosen].reset_index(drop=True), strays, ignored, unread)


def _check_names(paths: list[str], top: Path) -> None:
    """Every image's name goes into the split and the tables: one that is not UTF-8 cannot."""
    bad = [shown_name(p) for p in paths if not is_utf8_name(p)]
    if bad:
        raise KvasirError(f"{len(bad)} image file name(s) under {shown_name(str(top))} are not valid UTF-8: "
                          f"{_examples(bad)}; the study writes every image's name into its split and tables, so "
                          "rename them to UTF-8 (e.g. convmv -f latin1 -t utf8 -r --notest <folder>) and run again")


def _check_unique_names(leaves: list[Path], top: Path) -> None:
    seen: dict[str, Path] = {}
    for leaf in leaves:
        if leaf.name in seen:
            pair = [seen[leaf.name].relative_to(top), leaf.relative_to(top)]
            said = f"two class folders are named {leaf.name!r}: {pair[0]} and {pair[1]} (a class is named by its " \
                   "folder)"
            if splits := _split_folders(*pair):
                raise KvasirError(f"{said}. The tree looks split already ({splits[0]}/ and {splits[1]}/): merge each "
                                  "class's folders into one and let the study split it, or keep the split by "
                                  "giving it as a file (split.source: file, docs/your-data.md)")
            raise KvasirError(f"{said}: rename one")
        seen[leaf.name] = leaf


def _split_folders(first: Path, second: Path) -> tuple[str, str] | None:
    """The two folder names where ``first`` and ``second`` part, if they are two sides of a split
    (``kvasir/train/polyps`` and ``kvasir/val/polyps``: train and val)."""
    at = next((i for i, (a, b) in enumerate(zip(first.parts, second.parts, strict=False)) if a != b), None)
    if at is None:
        return None
    sides = first.parts[at], second.parts[at]
    split = sides[0].lower() != sides[1].lower() and all(side.lower() in SPLIT_FOLDER_NAMES for side in sides)
    return sides if split else None


def _files_in(folders: list[Path], names: list[str], top: Path) -> list[str]:
    """Those of ``names`` (relative to ``top``) that lie directly in one of ``folders``."""
    return [name for name in names if top / Path(name).parent in folders]


def _unread_there(folders: list[Path], ignored: list[str], top: Path) -> str:
    """What an imageless folder holds that the study does not read (a folder of GIFs), if anything."""
    there = _files_in(folders, ignored, top)
    return (f" ({len(there)} file(s) there are not images this study reads: {_examples(there)}; it reads "
            f"{READ_FORMATS})") if there else ""


def _select(classes: list[str], by_name: dict[str, Path], empty: list[Path], top: Path,
            ignored: list[str] = ()) -> list[str]:
    """The profile's classes, checked against the class folders found; all of them when none are named."""
    empty_names = {f.name: f for f in empty}
    if not classes:
        if empty:
            names = _examples([f.relative_to(top).as_posix() for f in empty])
            raise KvasirError(f"folder(s) without any image in {top}: {names}{_unread_there(empty, ignored, top)}. "
                              "An empty class folder would be a class without images: add its images, delete it, "
                              "or list the classes in data.classes")
        if len(by_name) < 2:
            raise KvasirError(f"only one class folder ({', '.join(by_name)}) found in {top}: a classifier needs at "
                              "least two; data.url must be the folder that holds the class folders")
        return list(by_name)
    hollow = [c for c in classes if c not in by_name and c in empty_names]
    if hollow:
        raise KvasirError(f"class folder(s) named in data.classes hold no image: "
                          f"{', '.join(empty_names[c].relative_to(top).as_posix() for c in hollow)}"
                          f"{_unread_there([empty_names[c] for c in hollow], ignored, top)}. Add their "
                          "images, or remove them from data.classes")
    missing = [c for c in classes if c not in by_name]
    if len(missing) == len(classes):
        raise KvasirError(f"no class folder of {classes} found in {top} (it holds the class folders "
                          f"{_examples(list(by_name))}): is data.url the dataset this profile describes?")
    if missing:
        hints = [f"{c} (did you mean {', '.join(near)}?)" if (near := difflib.get_close_matches(c, by_name, 2, 0.6))
                 else c for c in missing]
        raise KvasirError(f"class folder(s) missing from the dataset at {top}: {'; '.join(hints)}. Name the "
                          "classes as their folders are named in data.classes, or [] for every folder found")
    return list(classes)


def _check_strays(strays: list[str], top: Path, on_stray: str) -> None:
    if strays and on_stray == "error":
        raise KvasirError(f"{len(strays)} image(s) in {top} lie outside any class folder (in a folder that also holds "
                          f"class folders): {_examples(strays)}. Move each into its class folder or delete it, or set "
                          "data.on_stray=skip to leave them out")
