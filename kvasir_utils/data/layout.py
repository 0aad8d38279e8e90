"""Where the classes are in an extracted dataset: the folder that holds the class folders, and their images."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from kvasir_utils.errors import KvasirError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff"}


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
