"""Near-duplicate frames, found by two detectors: 64-bit perceptual hashes (imagehash) within a few
bits of each other, and deep features (a pretrained backbone's pooled features, ``train.features``)
whose cosine similarity passes a threshold calibrated on copies of the dataset's own frames made the
way video frames differ (``video_copy``: shifted, rotated by a few degrees, cropped by 10-20%, colour
changed). The pairs of either detector join frames into groups.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageEnhance

from kvasir_utils.errors import KvasirError
from kvasir_utils.files import sha256_file, write_csv_atomic, write_json_atomic

_PAIR_BLOCK = 1024
DETECTORS = ("phash", "features")
# How consecutive video frames differ: what the generator plants and the features detector is calibrated on.
COPY_KINDS = ("shift", "rotate", "crop", "colour")
MAX_SHIFT = 0.02  # of the frame's width and height
ROTATION_DEGREES = (2.0, 6.0)
CROP_SHARE = (0.10, 0.20)  # of each side, zoomed back to the frame's size
COLOUR_CHANGE = 0.15  # the most a colour channel, brightness or saturation moves, as a share
# Calibration: the threshold is the similarity that this share of the planted copies reaches.
COPY_RECALL = 0.95


def perceptual_hashes(images: Iterable[Image.Image]) -> np.ndarray:
    """64-bit DCT perceptual hash (``imagehash.phash``) of each image, packed into one uint64."""
    import imagehash

    bits = [imagehash.phash(image.convert("RGB"), hash_size=8).hash.ravel() for image in images]
    return np.packbits(np.array(bits, bool).reshape(-1, 64), axis=1).view(">u8").ravel().astype(np.uint64)


def near_duplicate_pairs(hashes: np.ndarray, max_distance: int) -> pd.DataFrame:
    """Every pair ``i < j`` whose hashes differ in at most ``max_distance`` bits (a profile's
    ``split.near_duplicates.phash_bits``), with that distance.

    Compared a block of rows at a time (about 65 MB for 8,000 images), not a Python loop over pairs.
    """
    return _close_pairs(hashes, hashes, max_distance, within=True)


def cross_pairs(first: np.ndarray, second: np.ndarray, max_distance: int) -> pd.DataFrame:
    """Every pair (``i`` of ``first``, ``j`` of ``second``) within ``max_distance`` bits: frames of one
    dataset with a near-identical frame in another."""
    return _close_pairs(first, second, max_distance, within=False)


def _close_pairs(first: np.ndarray, second: np.ndarray, max_distance: int, within: bool) -> pd.DataFrame:
    first, second = np.asarray(first, np.uint64), np.asarray(second, np.uint64)
    found = []
    for start in range(0, len(first), _PAIR_BLOCK):
        rows = first[start:start + _PAIR_BLOCK]
        distance = np.bitwise_count(rows[:, None] ^ second[None, :])
        i, j = np.nonzero(distance <= max_distance)
        keep = j > i + start if within else np.ones(len(i), bool)
        found.append(pd.DataFrame({"i": i[keep] + start, "j": j[keep], "distance": distance[i[keep], j[keep]]}))
    if not found:
        return pd.DataFrame({"i": [], "j": [], "distance": []}, dtype=int)
    return pd.concat(found, ignore_index=True).astype(int)


def nearest(hashes: np.ndarray, reference: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For each hash, the index of the closest ``reference`` hash and its Hamming distance in bits
    (compared a block of rows at a time, as ``near_duplicate_pairs`` does)."""
    hashes, reference = np.asarray(hashes, np.uint64), np.asarray(reference, np.uint64)
    index, distance = np.zeros(len(hashes), int), np.full(len(hashes), 64, int)
    if len(reference):
        for start in range(0, len(hashes), _PAIR_BLOCK):
            block = np.bitwise_count(hashes[start:start + _PAIR_BLOCK, None] ^ reference[None, :])
            index[start:start + len(block)] = block.argmin(axis=1)
            distance[start:start + len(block)] = block.min(axis=1)
    return index, distance


def duplicate_groups(n: int, pairs: pd.DataFrame) -> np.ndarray:
    """A group id per image: images joined by a chain of near-duplicate pairs share one."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    graph = coo_matrix((np.ones(len(pairs)), (pairs["i"].to_numpy(), pairs["j"].to_numpy())), shape=(n, n))
    return connected_components(graph, directed=False)[1]


def video_copy(image: Image.Image, kind: str, rng: np.random.Generator) -> Image.Image:
    """``image`` changed as the next frame of a video changes it: ``kind`` is one of ``COPY_KINDS``
    (shifted by up to 2% of its size; rotated by 2-6 degrees either way; 10-20% cropped off and
    zoomed back; colour channels, brightness and saturation moved by up to 15%). Same size, RGB."""
    image = image.convert("RGB")
    width, height = image.size
    if kind == "shift":
        dx, dy = (int(rng.integers(1, max(round(MAX_SHIFT * side), 1) + 1)) * int(rng.choice([-1, 1]))
                  for side in (width, height))
        return Image.fromarray(shift(np.asarray(image), dx, dy))
    if kind == "rotate":
        angle = rng.uniform(*ROTATION_DEGREES) * rng.choice([-1, 1])
        return image.rotate(angle, resample=Image.BILINEAR)
    if kind == "crop":
        share = rng.uniform(*CROP_SHARE)
        left, top = rng.uniform(0, share) * width, rng.uniform(0, share) * height
        box = (left, top, left + (1 - share) * width, top + (1 - share) * height)
        return image.resize((width, height), Image.BILINEAR, box=tuple(round(v) for v in box))
    if kind == "colour":
        gains = 1 + rng.uniform(-COLOUR_CHANGE, COLOUR_CHANGE, 3)
        pixels = np.clip(np.asarray(image, np.float32) * gains, 0, 255).astype(np.uint8)
        image = ImageEnhance.Brightness(Image.fromarray(pixels)).enhance(1 + rng.uniform(-COLOUR_CHANGE, COLOUR_CHANGE))
        return ImageEnhance.Color(image).enhance(1 + rng.uniform(-COLOUR_CHANGE, COLOUR_CHANGE))
    raise ValueError(f"unknown copy kind {kind!r}: one of {', '.join(COPY_KINDS)}")


def shift(pixels: np.ndarray, dx: int, dy: int) -> np.ndarray:
    """``pixels`` moved by (dx, dy), black where nothing moved in, as the scene moves between video frames."""
    height, width = pixels.shape[:2]
    moved = np.zeros_like(pixels)
    moved[max(dy, 0):height + min(dy, 0), max(dx, 0):width + min(dx, 0)] = \
        pixels[max(-dy, 0):height - max(dy, 0), max(-dx, 0):width - max(dx, 0)]
    return moved


def normalised(features: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length, so a dot product is the cosine similarity."""
    features = np.asarray(features, np.float32)
    return features / np.maximum(np.linalg.norm(features, axis=1, keepdims=True), 1e-12)


def _similarity_blocks(features: np.ndarray):
    """The cosine similarities of every row with every row, ``_PAIR_BLOCK`` rows at a time: (first row, block)."""
    unit = normalised(features)
    for start in range(0, len(unit), _PAIR_BLOCK):
        yield start, unit[start:start + _PAIR_BLOCK] @ unit.T


def similar_pairs(features: np.ndarray, threshold: float) -> pd.DataFrame:
    """Every pair ``i < j`` whose features' cosine similarity is at least ``threshold``, with it."""
    found = []
    for start, similarity in _similarity_blocks(features):
        i, j = np.nonzero(similarity >= threshold)
        keep = j > i + start
        found.append(pd.DataFrame({"i": i[keep] + start, "j": j[keep], "similarity": similarity[i[keep], j[keep]]}))
    if not found:
        return pd.DataFrame({"i": pd.Series(dtype=int), "j": pd.Series(dtype=int),
                             "similarity": pd.Series(dtype=float)})
    return pd.concat(found, ignore_index=True).astype({"i": int, "j": int})


def calibrate_threshold(originals: np.ndarray, copies: np.ndarray, recall: float = COPY_RECALL,
                        threshold: float | None = None) -> dict:
    """The cosine similarity that ``recall`` of the planted copies reach with their originals (row k
    of ``copies`` is a copy of row k of ``originals``), or the ``threshold`` given, and how it does
    there: the share of copies found, and the share of pairs of different originals at or above it
    (false alarms, counting any true duplicates among them)."""
    originals, copies = normalised(originals), normalised(copies)
    planted = np.sum(originals * copies, axis=1)
    if threshold is None:
        threshold = float(np.quantile(planted, 1 - recall, method="lower"))
    others = originals @ originals.T
    others = others[np.triu_indices(len(originals), k=1)]
    return {"threshold": threshold, "copies": len(planted), "recall": float(np.mean(planted >= threshold)),
            "false_alarm_rate": float(np.mean(others >= threshold)) if len(others) else 0.0,
            "copy_similarity_min": float(planted.min()),
            "other_similarity_max": float(others.max()) if len(others) else None}


def cross_class_rate(features: np.ndarray, labels: np.ndarray, threshold: float) -> float:
    """The share of pairs of frames of different classes whose features' cosine similarity reaches
    ``threshold``: false alarms for certain (a copy of a frame keeps its class), counted over every
    such pair, a block of rows at a time. 0 where there is no such pair."""
    labels, hits, pairs = np.asarray(labels), 0, 0
    for start, similarity in _similarity_blocks(features):
        similar = similarity >= threshold
        other = labels[start:start + len(similar), None] != labels[None, :]
        hits += int((similar & other).sum())
        pairs += int(other.sum())
    return hits / pairs if pairs else 0.0


def hash_recall(originals: np.ndarray, copies: np.ndarray, max_distance: int) -> float:
    """The share of planted copies whose perceptual hash is within ``max_distance`` bits of their original's."""
    distance = np.bitwise_count(np.asarray(originals, np.uint64) ^ np.asarray(copies, np.uint64))
    return float(np.mean(distance <= max_distance))


def joined_pairs(by_detector: dict[str, pd.DataFrame]) -> pd.DataFrame:
    """The union of each detector's pairs (``i < j``), one row per pair with a column per detector
    saying whether it found the pair, and ``found_by`` (``phash``, ``features`` or ``both``)."""
    frames = [pairs[["i", "j"]].assign(**{name: True}) for name, pairs in by_detector.items()]
    if not frames:
        return pd.DataFrame({"i": pd.Series(dtype=int), "j": pd.Series(dtype=int), "found_by": pd.Series(dtype=str)})
    joined = frames[0]
    for frame in frames[1:]:
        joined = joined.merge(frame, on=["i", "j"], how="outer")
    names = list(by_detector)
    joined[names] = joined[names].fillna(False).astype(bool)
    joined["found_by"] = ["both" if len(names) > 1 and all(row) else names[row.index(True)]
                          for row in joined[names].itertuples(index=False)]
    return joined.sort_values(["i", "j"], ignore_index=True)


PAIR_COLUMNS = ["path_a", "path_b", "found_by", "phash_distance", "similarity"]


@dataclass
class NearDuplicates:
    """A dataset's near-duplicate pairs (``path_a``, ``path_b``, ``found_by``: ``phash``,
    ``features`` or ``both``; each pair's hash distance and feature similarity, whichever detector
    found it) and, per detector, the threshold it used and how it did on planted copies."""

    pairs: pd.DataFrame
    detectors: dict

    @classmethod
    def of(cls, paths: list[str], pairs: pd.DataFrame, hashes: np.ndarray, features: np.ndarray | None,
           detectors: dict) -> NearDuplicates:
        """From ``joined_pairs``' index pairs over ``paths``, measured by both detectors."""
        i, j = pairs["i"].to_numpy(int), pairs["j"].to_numpy(int)
        paths = np.asarray(paths, object)
        distance = np.bitwise_count(np.asarray(hashes, np.uint64)[i] ^ np.asarray(hashes, np.uint64)[j])
        unit = normalised(features) if features is not None else None
        similarity = np.sum(unit[i] * unit[j], axis=1) if unit is not None else np.full(len(i), np.nan)
        table = pd.DataFrame({"path_a": paths[i], "path_b": paths[j], "found_by": pairs["found_by"].to_numpy(),
                              "phash_distance": distance.astype(int), "similarity": similarity.round(4)})
        return cls(table[PAIR_COLUMNS], detectors)

    def write(self, pairs_path: Path, record_path: Path) -> None:
        """The pairs, then the record naming the pairs file's SHA-256 (``read`` checks it, so a pairs
        file from another run never passes for this one's)."""
        write_csv_atomic(self.pairs, pairs_path)
        write_json_atomic(record_path, {"pairs_sha256": sha256_file(pairs_path), "detectors": self.detectors})

    @classmethod
    def read(cls, pairs_path: Path, record_path: Path) -> NearDuplicates:
        for path in (pairs_path, record_path):
            if not Path(path).exists():
                raise KvasirError(f"{path} does not exist: notebook 01 finds the near-duplicates "
                                  "(make data PROFILE=...)")
        record = json.loads(Path(record_path).read_text())
        if record.get("pairs_sha256") != sha256_file(pairs_path):
            raise KvasirError(f"{pairs_path} is not the file {Path(record_path).name} describes (written by another "
                              "run, or cut short): rerun notebook 01 (make data PROFILE=...)")
        pairs = pd.read_csv(pairs_path, dtype={"path_a": str, "path_b": str, "found_by": str})
        return cls(pairs, record["detectors"])

    def index_pairs(self, paths: list[str]) -> pd.DataFrame:
        """The pairs among ``paths`` as positions in it (``i``, ``j``, as ``near_duplicate_pairs`` gives
        them, with their hashes' Hamming ``distance``) and the detector that found each (``found_by``)."""
        index = {path: k for k, path in enumerate(paths)}
        known = self.pairs[self.pairs["path_a"].isin(index) & self.pairs["path_b"].isin(index)]
        return pd.DataFrame({"i": known["path_a"].map(index).astype(int), "j": known["path_b"].map(index).astype(int),
                             "distance": known["phash_distance"].astype(int),
                             "found_by": known["found_by"]}).reset_index(drop=True)

    def groups(self, paths: list[str]) -> np.ndarray:
        """A group id per path: frames joined by a chain of pairs (of any detector) share one."""
        return duplicate_groups(len(paths), self.index_pairs(paths))

    def across(self, split: pd.DataFrame) -> pd.DataFrame:
        """The pairs with one frame on each side of ``split`` (a ``path``/``split`` table)."""
        side = split.set_index("path")["split"]
        a, b = self.pairs["path_a"].map(side), self.pairs["path_b"].map(side)
        return self.pairs[a.notna() & b.notna() & (a != b)]

    def counts(self, pairs: pd.DataFrame | None = None) -> dict[str, int]:
        """How many pairs each detector found alone and both together (of ``pairs``, default all)."""
        found = (self.pairs if pairs is None else pairs)["found_by"].value_counts()
        return {f"{name} alone": int(found.get(name, 0)) for name in DETECTORS} | {"both": int(found.get("both", 0)),
                                                                                  "total": int(found.sum())}
