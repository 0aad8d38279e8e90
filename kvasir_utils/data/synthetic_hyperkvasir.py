"""A generated HyperKvasir-shaped dataset, so the folder layout, the split file and cross-dataset
evaluation are tested offline.

HyperKvasir's labelled images (Borgli et al., 2020) as a folder tree, not a zip:
``labeled-images/{lower,upper}-gi-tract/<kind>/<class>/<uuid>.jpg`` plus ``image-labels.csv``;
its 23 classes with HyperKvasir's imbalance (``images_per_class`` is the largest class, the others
scaled from HyperKvasir's counts, at least ``MIN_IMAGES``); and its official 2-fold split file
``official_splits/2_fold_split.csv`` (``file-name;class-name;split-index``) with the file's own
class names (``polyp`` for the folder ``polyps``, ...) and ``MISSING_ROWS`` images left out, as a
real file may lag its dataset.

A class with a Kvasir v2 counterpart carries that class's cue from ``synthetic`` (so a model trained
on the Kvasir-shaped archive recognises it), and its first frame is a near-identical copy (shifted,
re-encoded) of a frame of the Kvasir-shaped archive made with the same ``images_per_class``,
``seed`` and ``large_fraction``: the frames the cross-dataset audit must find. ``plan`` says
which frame is what without drawing one.
"""

from __future__ import annotations

import io
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from kvasir_utils.data import synthetic

# Bumped whenever the generator draws other images (the generated folder's name carries it).
GENERATOR_VERSION = 1
TOP = "labeled-images"
SPLIT_FILE = "official_splits/2_fold_split.csv"
# HyperKvasir's labelled classes: (tract, kind, folder, images in HyperKvasir, name in its split files).
CLASSES = [
    ("lower-gi-tract", "anatomical-landmarks", "cecum", 1009, "normal-cecum"),
    ("lower-gi-tract", "anatomical-landmarks", "ileum", 9, "ileum"),
    ("lower-gi-tract", "anatomical-landmarks", "retroflex-rectum", 391, "retroflex-rectum"),
    ("lower-gi-tract", "pathological-findings", "hemorrhoids", 6, "hemorroids"),
    ("lower-gi-tract", "pathological-findings", "polyps", 1028, "polyp"),
    ("lower-gi-tract", "pathological-findings", "ulcerative-colitis-0-1", 35, "ulcerative-colitis-grade-0-1"),
    ("lower-gi-tract", "pathological-findings", "ulcerative-colitis-grade-1", 201, "ulcerative-colitis-grade-1"),
    ("lower-gi-tract", "pathological-findings", "ulcerative-colitis-grade-1-2", 11, "ulcerative-colitis-grade-1-2"),
    ("lower-gi-tract", "pathological-findings", "ulcerative-colitis-grade-2", 443, "ulcerative-colitis-grade-2"),
    ("lower-gi-tract", "pathological-findings", "ulcerative-colitis-grade-2-3", 28, "ulcerative-colitis-grade-2-3"),
    ("lower-gi-tract", "pathological-findings", "ulcerative-colitis-grade-3", 133, "ulcerative-colitis-grade-3"),
    ("lower-gi-tract", "quality-of-mucosal-views", "bbps-0-1", 646, "bbps-0-1"),
    ("lower-gi-tract", "quality-of-mucosal-views", "bbps-2-3", 1148, "bbps-2-3"),
    ("lower-gi-tract", "quality-of-mucosal-views", "impacted-stool", 131, "impacted-stool"),
    ("lower-gi-tract", "therapeutic-interventions", "dyed-lifted-polyps", 1002, "dyed-lifted-polyps"),
    ("lower-gi-tract", "therapeutic-interventions", "dyed-resection-margins", 989, "dyed-resection-margins"),
    ("upper-gi-tract", "anatomical-landmarks", "pylorus", 999, "normal-pylorus"),
    ("upper-gi-tract", "anatomical-landmarks", "retroflex-stomach", 764, "retroflex-stomach"),
    ("upper-gi-tract", "anatomical-landmarks", "z-line", 932, "normal-z-line"),
    ("upper-gi-tract", "pathological-findings", "barretts", 41, "barretts"),
    ("upper-gi-tract", "pathological-findings", "barretts-short-segment", 53, "short-segment-barretts"),
    ("upper-gi-tract", "pathological-findings", "esophagitis-a", 403, "oesophagitis-a"),
    ("upper-gi-tract", "pathological-findings", "esophagitis-b-d", 260, "oesophagitis-b-d"),
]
CLASS_NAMES = [c[2] for c in CLASSES]  # the folders, in path order (as data.classes: [] finds them)
# The Kvasir v2 class each corresponds to (configs/mappings/hyperkvasir-to-kvasir-v2.yaml says the same).
KVASIR_COUNTERPART = {
    "cecum": "normal-cecum", "polyps": "polyps", "dyed-lifted-polyps": "dyed-lifted-polyps",
    "dyed-resection-margins": "dyed-resection-margins", "pylorus": "normal-pylorus", "z-line": "normal-z-line",
    "esophagitis-a": "esophagitis", "esophagitis-b-d": "esophagitis",
    **{c[2]: "ulcerative-colitis" for c in CLASSES if c[2].startswith("ulcerative-colitis")},
}
KVASIR_CLASSES = ["dyed-lifted-polyps", "dyed-resection-margins", "esophagitis", "normal-cecum",
                  "normal-pylorus", "normal-z-line", "polyps", "ulcerative-colitis"]  # the smoke archive's order
LARGEST = max(c[3] for c in CLASSES)
MIN_IMAGES = 4  # two per fold
MISSING_ROWS = 3  # images the split file does not list (from the three largest classes)
_STREAM = 100  # random streams of their own: no frame equals a Kvasir-shaped one by accident
SHIFT = (3, -2)
SHARED_JPEG_QUALITY = 80


def class_counts(images_per_class: int) -> dict[str, int]:
    """Images per class: HyperKvasir's counts scaled so the largest class has ``images_per_class``."""
    return {c[2]: max(MIN_IMAGES, round(images_per_class * c[3] / LARGEST)) for c in CLASSES}


def _extra_cue(rank: int):
    """Cues for classes without a Kvasir counterpart: Kvasir's colours with the shapes Kvasir does not give them."""
    shapes = ("disc", "ring", "stripes")
    color, shape = synthetic.CUES[rank % len(synthetic.CUES)]
    return color, shapes[(shapes.index(shape) + 1 + rank // len(synthetic.CUES)) % len(shapes)]


def _cue(name: str, extras: list[str]):
    counterpart = KVASIR_COUNTERPART.get(name)
    return KVASIR_CLASSES.index(counterpart) if counterpart else _extra_cue(extras.index(name))


def _shared_sources(images_per_class: int, seed: int) -> dict[str, str]:
    """Per class with a counterpart, the Kvasir-shaped frame it copies (``<class>/<uuid>.jpg``): the
    j-th original frame of the counterpart for the j-th class that maps to it."""
    traps = synthetic.planted_traps(KVASIR_CLASSES, images_per_class, seed)
    originals = traps[traps["duplicate_of"].isna()].groupby("label")["path"].apply(list)
    taken: dict[str, int] = {}
    shared = {}
    for name, counterpart in KVASIR_COUNTERPART.items():
        j = taken[counterpart] = taken.get(counterpart, -1) + 1
        if j < len(originals[counterpart]):
            shared[name] = originals[counterpart][j]
    return shared


def plan(images_per_class: int, seed: int = 0) -> pd.DataFrame:
    """One row per generated image, in path order: ``path`` (relative to ``labeled-images``),
    ``label`` (its folder), ``file_class`` (the split file's name), ``fold`` (0 or 1), ``listed``
    (whether the split file has its row) and ``shared_with`` (the Kvasir-shaped frame it copies)."""
    shared = _shared_sources(images_per_class, seed)
    rows = []
    for index, (tract, kind, name, _, file_class) in enumerate(CLASSES):
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
        moved = synthetic.shift(np.asarray(image.convert("RGB")), *SHIFT)
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
    table = plan(images_per_class, seed)
    kvasir = _kvasir_payloads(table["shared_with"].dropna().tolist(), images_per_class, seed, large_fraction)
    extras = [c for c in CLASS_NAMES if c not in KVASIR_COUNTERPART]
    for index, (_, _, name, _, _) in enumerate(CLASSES):
        rows = table[table["label"] == name]
        own = rows[rows["shared_with"].isna()]
        frames = synthetic.class_frames(seed, _STREAM + index, name, len(rows), large_fraction, _cue(name, extras),
                                        caption="HYPERKVASIR SYNTH")
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
