"""The second near-duplicate detector: a pretrained backbone's pooled features (the model named by
``split.near_duplicates.features_model``, its head removed), compared by cosine similarity. Its
threshold is calibrated on the dataset itself: copies of some of its own frames are made the way
video frames differ (``duplicates.video_copy``), and the threshold is the similarity that 95% of
them reach with their originals. With the perceptual hash, it finds the near-duplicate pairs of a
dataset (``find_near_duplicates``), which notebook 01 writes beside the split and the audit reads.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import torch
from PIL import Image
from torch import nn

from kvasir_utils.config import Config
from kvasir_utils.data import duplicates
from kvasir_utils.data.cache import usable_images
from kvasir_utils.data.images import iter_cached, load_cached
from kvasir_utils.data.prepare import PreparedData, cache_dir
from kvasir_utils.train import models, presets

BATCH = 64
_CALIBRATION_STREAM = 7


def feature_model(cfg: Config) -> tuple[nn.Module, object]:
    """The features detector's backbone (its head an identity, so it returns pooled features) in
    eval mode, and the transform that turns a PIL image into its input. It takes the profile's
    pretrained weights (``train.weights``, or the model's ``train.weights_files`` entry): random
    weights where the profile has none, which the calibration then measures."""
    name = cfg.split.near_duplicates.features_model
    transforms = models.for_model(cfg, name).transforms
    with torch.random.fork_rng():
        torch.manual_seed(cfg.split.seed)  # random weights (where there are no pretrained ones) drawn alike each time
        model = models.build_model(name, 1, cfg.train.weights, cfg.runtime.offline, image_size=transforms.image_size,
                                   weights_file=cfg.train.weights_files.get(name))
    head = models.head_name(model)
    parent_name, _, child = head.rpartition(".")
    setattr(model.get_submodule(parent_name) if parent_name else model, child, nn.Identity())
    return model.eval(), presets.eval_preset(transforms.model_copy(update={"mask_overlays": "none"}))


@torch.inference_mode()
def embed(model: nn.Module, transform, images: Iterable[Image.Image]) -> np.ndarray:
    """Pooled features of each image, one row each (float32), a batch at a time."""
    rows, batch = [], []
    for image in images:
        batch.append(transform(image.convert("RGB")))
        if len(batch) == BATCH:
            rows.append(model(torch.stack(batch)).float().numpy())
            batch = []
    if batch:
        rows.append(model(torch.stack(batch)).float().numpy())
    return np.concatenate(rows) if rows else np.zeros((0, 0), np.float32)


def planted_copies(images: list[Image.Image], seed: int) -> list[Image.Image]:
    """One video-like copy of each image, the kinds of ``duplicates.COPY_KINDS`` in turn."""
    rng = np.random.default_rng([seed, _CALIBRATION_STREAM])
    kinds = duplicates.COPY_KINDS
    return [duplicates.video_copy(image, kinds[k % len(kinds)], rng) for k, image in enumerate(images)]


def find_near_duplicates(cfg: Config, paths: list[str], labels: list[str]) -> duplicates.NearDuplicates:
    """The near-duplicate pairs among the cached images at ``paths`` (of classes ``labels``) by each
    detector of ``split.near_duplicates.detectors``, with the threshold each used and how it did on
    copies of ``calibration_copies`` of these images planted for the purpose. The features detector is
    left out (and says why) where it would give each image more than ``max_false_partners`` false
    partners, measured on every pair of frames of different classes (a copy keeps its class)."""
    settings = cfg.split.near_duplicates
    root = cache_dir(cfg)
    rng = np.random.default_rng(_CALIBRATION_STREAM)  # the same frames whatever the split's seed
    sample = np.sort(rng.choice(len(paths), min(settings.calibration_copies, len(paths)), replace=False))
    originals = load_cached(root, [paths[i] for i in sample])
    copies = planted_copies(originals, _CALIBRATION_STREAM)
    hashes = duplicates.perceptual_hashes(iter_cached(root, paths))
    detectors = {"phash": {"threshold": settings.phash_bits, "unit": "bits of 64, at most", "used": True,
                           "recall": duplicates.hash_recall(hashes[sample], duplicates.perceptual_hashes(copies),
                                                            settings.phash_bits)}}
    found = {"phash": duplicates.near_duplicate_pairs(hashes, settings.phash_bits)} \
        if "phash" in settings.detectors else {}
    features = None
    if "features" in settings.detectors:
        model, transform = feature_model(cfg)
        features = embed(model, transform, iter_cached(root, paths))
        calibration = duplicates.calibrate_threshold(features[sample], embed(model, transform, copies),
                                                     threshold=settings.features_threshold)
        cross = duplicates.cross_class_rate(features, np.asarray(labels), calibration["threshold"])
        record = {**calibration, "calibrated": settings.features_threshold is None,
                  "cross_class_false_alarm_rate": cross, "false_partners_per_image": cross * (len(paths) - 1),
                  "model": settings.features_model, "weights": cfg.train.weights or "random (train.weights: null)",
                  "unit": "cosine similarity, at least", "used": True}
        if record["false_partners_per_image"] > settings.max_false_partners:
            random_weights = cfg.train.weights is None and settings.features_model not in cfg.train.weights_files
            record |= {"used": False, "why": (
                f"at its threshold each frame would have {record['false_partners_per_image']:.2f} false partners "
                f"(pairs with frames of other classes), above split.near_duplicates.max_false_partners "
                f"({settings.max_false_partners:g}): its features do not tell a copy from another frame"
                + ("; with random weights they cannot: give the profile pretrained weights (train.weights or "
                   "train.weights_files)" if random_weights else "; raise the threshold (features_threshold)"))}
            print(f"Near-duplicates: the features detector is not used: {record['why']}.")
        else:
            found["features"] = duplicates.similar_pairs(features, calibration["threshold"])
        detectors["features"] = record
    if "phash" not in settings.detectors:
        detectors.pop("phash")
    pairs = duplicates.joined_pairs(found)
    return duplicates.NearDuplicates.of(paths, pairs, hashes, features, detectors)


def near_duplicates_of(cfg: Config, prepared: PreparedData) -> duplicates.NearDuplicates:
    """Notebook 01's step: the near-duplicate pairs of the usable images (``prepare_split`` writes
    them beside the split, once the split is written)."""
    usable = usable_images(prepared.manifest, cfg.data.on_unreadable)
    return find_near_duplicates(cfg, usable["path"].tolist(), usable["label"].tolist())
