"""A generated HyperKvasir-shaped dataset, so the folder layout, the split file and cross-dataset
evaluation are tested offline.

HyperKvasir's labelled images (Borgli et al., 2020) as a folder tree, not a zip:
``labeled-images/{lower,upper}-gi-tract/<kind>/<class>/<uuid>.jpg`` plus ``image-labels.csv``;
its 23 classes with HyperKvasir's imbalance (``images_per_class`` is the largest class, the others
scaled from HyperKvasir's counts, at least ``MIN_IMAGES``); and its official 2-fold split file
``official_splits/2_fold_split.csv`` (``file-name;class-name;split-index``) with the file's own
class names (``polyp`` for the folder ``polyps``, ...) and ``MISSING_ROWS`` images left out, as a
real file may lag its dataset.

A class with a Kvasir v2 counterpart (in ``MAPPING_FILE``, the class mapping cross-evaluate scores
with) carries that class's cue from ``synthetic`` (so a model trained on the Kvasir-shaped archive
recognises it), and its first frame is a near-identical copy (shifted, re-encoded) of a frame of
the Kvasir-shaped archive made with the same ``images_per_class``, ``seed`` and
``large_fraction``: the frames the cross-dataset audit must find. ``plan`` says which frame is
what without drawing one.
"""

from __future__ import annotations

import io
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from kvasir_utils.config import CONFIG_DIR
from kvasir_utils.data import duplicates, synthetic
from kvasir_utils.datasets import HYPER_KVASIR, HYPER_KVASIR_CLASSES, KVASIR_V2_CLASSES
from kvasir_utils.errors import KvasirError
from kvasir_utils.profiles import read_yaml

# Bumped whenever the generator draws other images (the generated folder's name carries it).
GENERATOR_VERSION = 2
TOP = "labeled-images"
SPLIT_FILE = "official_splits/2_fold_split.csv"
CLASS_NAMES = HYPER_KVASIR_CLASSES  # the folders, in path order (as data.classes: [] finds them)
KVASIR_CLASSES = KVASIR_V2_CLASSES  # the Kvasir-shaped archive's classes, whose cues and frames the tree borrows
# Which Kvasir v2 class a HyperKvasir class counts as: the file cross-evaluate scores with, so the
# frames and cues planted here are the ones the mapping lets through.
MAPPING_FILE = CONFIG_DIR / "mappings" / "hyper-kvasir-to-kvasir-v2.yaml"
LARGEST = max(c.images for c in HYPER_KVASIR)
MIN_IMAGES = 4  # two per fold
MISSING_ROWS = 3  # images the split file does not list (from the three largest classes)
_STREAM = 100  # random streams of their own: no frame equals a Kvasir-shaped one by accident
SHIFT = (3, -2)
SHARED_JPEG_QUALITY = 80


def class_counts(images_per_class: int) -> dict[str, int]:
    """Images per class: HyperKvasir's counts scaled so the largest class has ``images_per_class``."""
    return {c.folder: max(MIN_IMAGES, round(images_per_class * c.images / LARGEST)) for c in HYPER_KVASIR}


def kvasir_counterparts() -> dict[str, str]:
    """HyperKvasir class folder -> the Kvasir v2 class it counts as, in path order, from ``MAPPING_FILE``."""
    if not MAPPING_FILE.is_file():
        raise KvasirError(f"class mapping {MAPPING_FILE} is missing: the HyperKvasir-shaped tree takes from it "
                          "which Kvasir v2 class each of its classes looks like; restore it (git checkout)")
    classes = read_yaml(MAPPING_FILE, "class mapping").get("classes")
    if not isinstance(classes, dict):
        raise KvasirError(f"class mapping {MAPPING_FILE} needs `classes:`, HyperKvasir class folder: Kvasir v2 class")
    if unknown := sorted(set(map(str, classes.values())) - set(KVASIR_CLASSES)):
        raise KvasirError(f"class mapping {MAPPING_FILE} maps to {', '.join(unknown)}, not Kvasir v2 classes: map "
                          f"each HyperKvasir class folder to one of {', '.join(KVASIR_CLASSES)}")
    return {name: classes[name] for name in CLASS_NAMES if name in classes}


def _extra_cue(rank: int):
    """Cues for classes without a Kvasir counterpart: Kvasir's colours with the shapes Kvasir does not give them."""
    shapes = ("disc", "ring", "stripes")
    color, shape = synthetic.CUES[rank % len(synthetic.CUES)]
    return color, shapes[(shapes.index(shape) + 1 + rank // len(synthetic.CUES)) % len(shapes)]


def _cue(name: str, counterparts: dict[str, str]):
    """The cue of the Kvasir v2 class ``name`` counts as; else one of the cues no Kvasir v2 class has."""
    if name in counterparts:
        return KVASIR_CLASSES.index(counterparts[name])
    return _extra_cue([c for c in CLASS_NAMES if c not in counterparts].index(name))


def _shared_sources(images_per_class: int, seed: int, counterparts: dict[str, str]) -> dict[str, str]:
    """Per class with a counterpart, the Kvasir-shaped frame it copies (``<class>/<uuid>.jpg``): the
    j-th original frame of the counterpart for the j-th class that maps to it."""
    traps = synthetic.planted_traps(KVASIR_CLASSES, images_per_class, seed)
    originals = traps[traps["duplicate_of"].isna()].groupby("label")["path"].apply(list)
    taken: dict[str, int] = {}
    shared = {}
    for name, counterpart in counterparts.items():
        j = taken[counterpart] = taken.get(counterpart, -1) + 1
        if j < len(originals[counterpart]):
            shared[name] = originals[counterpart][j]
    return shared


def plan(images_per_class: int, seed: int = 0) -> pd.DataFrame:
    """One row per generated image, in path order: ``path`` (relative to ``labeled-images``),
    ``label`` (its folder), ``file_class`` (the split file's name), ``fold`` (0 or 1), ``listed``
    (whether the split file has its row) and ``shared_with`` (the Kvasir-shaped frame it copies)."""
    return _plan(images_per_class, seed, kvasir_counterparts())


def _plan(images_per_class: int, seed: int, counterparts: dict[str, str]) -> pd.DataFrame:
    shared = _shared_sources(images_per_class, seed, counterparts)
    rows = []
    for index, (tract, kind, name, _, file_class) in enumerate(HYPER_KVASIR):
        own = synthetic.class_plan(seed, _STREAM + index, name, class_counts(images_per_class)[name])["path"].tolist()
        rng = np.random.default_rng([seed, _STREAM + index, 2])
        names = own[: len(own) - (name in shared)] + \
            ([f"{name}/{uuid.UUID(bytes=rng.bytes(16), version=4)}.jpg"] if name in shared else [])
        folds = rng.permutation(len(names)) % 2
        for i, path in enumerate(names):
            rows.append({"path": f"{tract}/{kind}/{path}", "label": name, "file_class": file_class,
                         "fold": int(folds[i]), "listed": True,
                         "shared_with": shared[name] if name in shared and i == len(names) - 1 else None})
    table = pd.DataFrame(rows)
    counts = class_counts(images_per_class)
    largest = sorted(CLASS_NAMES, key=lambda name: -counts[name])[:MISSING_ROWS]
    firsts = table.groupby("label").head(1)
    table.loc[firsts.index[firsts["label"].isin(largest)], "listed"] = False
    return table


def _shared_copy(payload: bytes) -> bytes:
    """A frame as another dataset would hold it: moved by a few pixels and encoded again."""
    with Image.open(io.BytesIO(payload)) as image:
        moved = duplicates.shift(np.asarray(image.convert("RGB")), *SHIFT)
    return synthetic.jpeg_bytes(Image.fromarray(moved), SHARED_JPEG_QUALITY)


def _kvasir_payloads(paths: list[str], images_per_class: int, seed: int, large_fraction: float) -> dict[str, bytes]:
    """The Kvasir-shaped archive's frames at ``paths``, drawn class by class only as far as needed."""
    found = {}
    for index, name in enumerate(KVASIR_CLASSES):
        wanted = {p for p in paths if p.startswith(f"{name}/")}
        for path, payload in synthetic.class_frames(seed, index, name, images_per_class, large_fraction, index):
            if not wanted - set(found):
                break
            if path in wanted:
                found[path] = payload
    return found


def _files(images_per_class: int, seed: int, large_fraction: float):
    counterparts = kvasir_counterparts()
    table = _plan(images_per_class, seed, counterparts)
    kvasir = _kvasir_payloads(table["shared_with"].dropna().tolist(), images_per_class, seed, large_fraction)
    for index, name in enumerate(CLASS_NAMES):
        rows = table[table["label"] == name]
        own = rows[rows["shared_with"].isna()]
        frames = synthetic.class_frames(seed, _STREAM + index, name, len(rows), large_fraction,
                                        _cue(name, counterparts), caption="HYPERKVASIR SYNTH")
        for path, (_, payload) in zip(own["path"], frames):
            yield f"{TOP}/{path}", payload
        for path, source in zip(rows["path"], rows["shared_with"]):
            if pd.notna(source):
                yield f"{TOP}/{path}", _shared_copy(kvasir[source])
    yield f"{TOP}/image-labels.csv", table[["path", "label"]].to_csv(index=False).encode()
    listed = table[table["listed"]].assign(file_name=lambda f: f["path"].str.rsplit("/", n=1).str[-1])
    split = listed[["file_name", "file_class", "fold"]].set_axis(["file-name", "class-name", "split-index"], axis=1)
    yield SPLIT_FILE, split.to_csv(sep=";", index=False).encode()


def make_tree(path: Path, images_per_class: int, seed: int = 0, large_fraction: float = 0.1) -> Path:
    """Write the HyperKvasir-shaped folder ``path`` (``labeled-images/`` and ``official_splits/``),
    whole or not at all; the same arguments give the same bytes."""
    return synthetic.write_tree(path, _files(images_per_class, seed, large_fraction))
