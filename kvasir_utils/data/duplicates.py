"""Near-duplicate frames: 64-bit perceptual hashes (imagehash), the pairs within a few bits of each
other, and the groups that chains of pairs join.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pandas as pd
from PIL import Image

# Hamming distance (of 64 phash bits) up to which two frames count as near-duplicates.
NEAR_DUPLICATE_DISTANCE = 8
_PAIR_BLOCK = 1024


def perceptual_hashes(images: Iterable[Image.Image]) -> np.ndarray:
    """64-bit DCT perceptual hash (``imagehash.phash``) of each image, packed into one uint64."""
    import imagehash

    bits = [imagehash.phash(image.convert("RGB"), hash_size=8).hash.ravel() for image in images]
    return np.packbits(np.array(bits, bool).reshape(-1, 64), axis=1).view(">u8").ravel().astype(np.uint64)


def near_duplicate_pairs(hashes: np.ndarray, max_distance: int = NEAR_DUPLICATE_DISTANCE) -> pd.DataFrame:
    """Every pair ``i < j`` whose hashes differ in at most ``max_distance`` bits, with that distance.

    Compared a block of rows at a time (about 65 MB for 8,000 images), not a Python loop over pairs.
    """
    return _close_pairs(hashes, hashes, max_distance, within=True)


def cross_pairs(first: np.ndarray, second: np.ndarray, max_distance: int = NEAR_DUPLICATE_DISTANCE) -> pd.DataFrame:
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
