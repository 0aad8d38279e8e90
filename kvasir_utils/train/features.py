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
from kvasir_utils.data.images import iter_cached, load_cached
from kvasir_utils.data.prepare import PreparedData, cache_dir, usable_paths
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


def find_near_duplicates(cfg: Config, paths: list[str]) -> duplicates.NearDuplicates:
    """The near-duplicate pairs among the cached images at ``paths`` by each detector of
    ``split.near_duplicates.detectors``, with the threshold each used and how it did on copies of
    ``calibration_copies`` of these images planted for the purpose (recall, false alarms)."""
    settings = cfg.split.near_duplicates
    root = cache_dir(cfg)
    rng = np.random.default_rng([cfg.split.seed, _CALIBRATION_STREAM])
    sample = np.sort(rng.choice(len(paths), min(settings.calibration_copies, len(paths)), replace=False))
    originals = load_cached(root, [paths[i] for i in sample])
    copies = planted_copies(originals, cfg.split.seed)
    hashes = duplicates.perceptual_hashes(iter_cached(root, paths))
    detectors = {"phash": {"threshold": settings.phash_bits, "unit": "bits of 64, at most",
                           "recall": duplicates.hash_recall(hashes[sample], duplicates.perceptual_hashes(copies),
                                                            settings.phash_bits)}}
    found = {"phash": duplicates.near_duplicate_pairs(hashes, settings.phash_bits)} \
        if "phash" in settings.detectors else {}
    features = None
    if "features" in settings.detectors:
        model, transform = feature_model(cfg)
        features = embed(model, transform, iter_cached(root, paths))
        calibration = duplicates.calibrate_threshold(features[sample], embed(model, transform, copies))
        threshold = calibration["threshold"] if settings.features_threshold is None else settings.features_threshold
        record = {**calibration, "threshold": threshold, "calibrated": settings.features_threshold is None,
                  "model": settings.features_model, "weights": cfg.train.weights or "random (train.weights: null)",
                  "unit": "cosine similarity, at least", "used": True}
        if calibration["false_alarm_rate"] > settings.max_false_alarms:
            random_weights = cfg.train.weights is None and settings.features_model not in cfg.train.weights_files
            record |= {"used": False, "why": (
                f"its false alarms ({calibration['false_alarm_rate']:.1%} of the pairs of other frames) are above "
                f"split.near_duplicates.max_false_alarms ({settings.max_false_alarms:.1%}), so its features do not "
                "tell a copy from another frame" + ("; with random weights they cannot: give the profile pretrained "
                                                   "weights (train.weights or train.weights_files)"
                                                   if random_weights else ""))}
            print(f"Near-duplicates: the features detector is not used: {record['why']}.")
        else:
            found["features"] = duplicates.similar_pairs(features, threshold)
        detectors["features"] = record
    if "phash" not in settings.detectors:
        detectors.pop("phash")
    pairs = duplicates.joined_pairs(found)
    return duplicates.NearDuplicates.of(paths, pairs, hashes, features, detectors)



def write_near_duplicates(cfg: Config, prepared: PreparedData) -> duplicates.NearDuplicates:
    """Notebook 01's step: the near-duplicate pairs of the usable images, written beside the split
    (``cfg.run.near_duplicates``) for the grouping, the audit and ``make splits``."""
    found = find_near_duplicates(cfg, usable_paths(cfg, prepared))
    found.write(*cfg.run.near_duplicates)
    return found
