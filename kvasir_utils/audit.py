"""What can inflate a score without medicine in it: the guide-box shortcut, near-duplicate frames,
over-confident probabilities, and where the network looks (Grad-CAM).

Geometry is given as fractions of the frame (left, top, right, bottom), so one definition serves
720x576 colonoscopy frames, 1280x1024 gastroscopy frames and the resized cache alike.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np
import pandas as pd
from PIL import Image

from kvasir_utils.errors import KvasirError

# The teal position-guide box in the bottom-left of many colonoscopy frames, as reported for real
# Kvasir v2 frames (issue 9).
GUIDE_BOX = (0.05, 0.67, 0.34, 0.96)
GUIDE_BOX_RGB = (19, 164, 136)
# RGB distance within which a pixel counts as box teal: wide enough for JPEG noise, narrow enough
# that indigo dye (about 110 away) and pink tissue never count.
GUIDE_BOX_TOLERANCE = 45.0
# The drawing inside the box and JPEG edges take part of the region; a frame without a box never
# comes close to half of it teal.
GUIDE_BOX_MIN_FRACTION = 0.5
# Masks reach a little past the box: its placement varies by a few pixels and JPEG smears its edge.
MASK_MARGIN = 0.01
# Burnt-in examination text (date, patient fields) at the top left.
TEXT_REGION = (0.0, 0.0, 0.32, 0.22)
MASK_MODES = ("none", "guide_box", "guide_box_and_text")

# Hamming distance (of 64 phash bits) up to which two frames count as near-duplicates.
NEAR_DUPLICATE_DISTANCE = 8
_PAIR_BLOCK = 1024

CALIBRATION_BINS = 15


def region_pixels(size: tuple[int, int], region: tuple[float, float, float, float],
                  margin: float = 0.0) -> tuple[int, int, int, int]:
    """Pixel box (left, top, right, bottom) of a fractional ``region`` in a frame of ``size`` (width, height)."""
    width, height = size
    left, top, right, bottom = region
    return (max(0, round((left - margin) * width)), max(0, round((top - margin) * height)),
            min(width, round((right + margin) * width)), min(height, round((bottom + margin) * height)))


def teal_fraction(image: Image.Image) -> float:
    """Share of the guide-box region's pixels within ``GUIDE_BOX_TOLERANCE`` of the box colour."""
    crop = np.asarray(image.crop(region_pixels(image.size, GUIDE_BOX)).convert("RGB"), np.float32)
    if crop.size == 0:
        return 0.0
    distance = np.linalg.norm(crop - np.array(GUIDE_BOX_RGB, np.float32), axis=-1)
    return float((distance < GUIDE_BOX_TOLERANCE).mean())


def has_guide_box(image: Image.Image) -> bool:
    """Whether the frame carries the teal position-guide box in its bottom-left corner."""
    return teal_fraction(image) >= GUIDE_BOX_MIN_FRACTION


def mask_overlays(image: Image.Image, mode: str) -> Image.Image:
    """A copy of ``image`` with the overlays named by ``mode`` (one of ``MASK_MODES``) filled with black."""
    if mode not in MASK_MODES:
        raise KvasirError(f"Unknown overlay mask mode {mode!r}; use one of {', '.join(MASK_MODES)} "
                          "(setting transforms.mask_overlays).")
    masked = image.copy()
    if mode in ("guide_box", "guide_box_and_text"):
        masked.paste(0, region_pixels(image.size, GUIDE_BOX, MASK_MARGIN))
    if mode == "guide_box_and_text":
        masked.paste(0, region_pixels(image.size, TEXT_REGION, MASK_MARGIN))
    return masked


def guide_box_rates(frame: pd.DataFrame) -> pd.DataFrame:
    """Per class (``label``): images, images with the box (``has_box``) and their rate, in first-seen order."""
    grouped = frame.groupby("label", sort=False)["has_box"]
    rates = pd.DataFrame({"images": grouped.size(), "with_box": grouped.sum().astype(int)})
    return rates.assign(rate=rates["with_box"] / rates["images"]).reset_index()


def perceptual_hashes(images: Iterable[Image.Image]) -> np.ndarray:
    """64-bit DCT perceptual hash (``imagehash.phash``) of each image, packed into one uint64."""
    import imagehash

    bits = [imagehash.phash(image.convert("RGB"), hash_size=8).hash.ravel() for image in images]
    return np.packbits(np.array(bits, bool).reshape(-1, 64), axis=1).view(">u8").ravel().astype(np.uint64)


def near_duplicate_pairs(hashes: np.ndarray, max_distance: int = NEAR_DUPLICATE_DISTANCE) -> pd.DataFrame:
    """Every pair ``i < j`` whose hashes differ in at most ``max_distance`` bits, with that distance.

    Compared a block of rows at a time (about 65 MB for 8,000 images), not a Python loop over pairs.
    """
    hashes = np.asarray(hashes, np.uint64)
    found = []
    for start in range(0, len(hashes), _PAIR_BLOCK):
        rows = hashes[start:start + _PAIR_BLOCK]
        distance = np.bitwise_count(rows[:, None] ^ hashes[None, :])
        i, j = np.nonzero(distance <= max_distance)
        i += start
        keep = j > i
        found.append(pd.DataFrame({"i": i[keep], "j": j[keep], "distance": distance[i[keep] - start, j[keep]]}))
    if not found:
        return pd.DataFrame({"i": [], "j": [], "distance": []}, dtype=int)
    return pd.concat(found, ignore_index=True).astype(int)


def duplicate_groups(n: int, pairs: pd.DataFrame) -> np.ndarray:
    """A group id per image: images joined by a chain of near-duplicate pairs share one."""
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    graph = coo_matrix((np.ones(len(pairs)), (pairs["i"].to_numpy(), pairs["j"].to_numpy())), shape=(n, n))
    return connected_components(graph, directed=False)[1]


def train_twins(split: pd.DataFrame, pairs: pd.DataFrame) -> pd.Series:
    """True for each validation row of ``split`` (``split`` column) with a near-duplicate in training.

    ``pairs`` index rows of ``split`` by position, as ``near_duplicate_pairs`` of its images gives them.
    """
    side = split["split"].to_numpy()
    i, j = pairs["i"].to_numpy(), pairs["j"].to_numpy()
    twinned = np.zeros(len(split), bool)
    twinned[i[(side[i] == "val") & (side[j] == "train")]] = True
    twinned[j[(side[j] == "val") & (side[i] == "train")]] = True
    return pd.Series(twinned, index=split.index, name="train_twin")


def twin_table(split: pd.DataFrame, pairs: pd.DataFrame) -> pd.DataFrame:
    """Per class: validation images, how many have a near-duplicate in training, and that rate."""
    val = split.assign(train_twin=train_twins(split, pairs))[lambda f: f["split"] == "val"]
    grouped = val.groupby("label", sort=False)["train_twin"]
    table = pd.DataFrame({"val_images": grouped.size(), "with_train_twin": grouped.sum().astype(int)})
    return table.assign(rate=table["with_train_twin"] / table["val_images"]).reset_index()


def _checked(y_true, probs) -> tuple[np.ndarray, np.ndarray]:
    y_true, probs = np.asarray(y_true, int), np.asarray(probs, float)
    if probs.ndim != 2 or len(y_true) != len(probs):
        raise KvasirError(f"Calibration needs one row of class probabilities per label; got {len(y_true)} labels "
                          f"and probabilities of shape {probs.shape}. Pass the same images' predictions.")
    return y_true, probs


def reliability_table(y_true, probs, bins: int = CALIBRATION_BINS) -> pd.DataFrame:
    """Per equal-width bin of top-1 confidence (right-closed): count, mean confidence, accuracy."""
    y_true, probs = _checked(y_true, probs)
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == y_true
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.searchsorted(edges[1:-1], confidence, side="left")
    count = np.bincount(which, minlength=bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_confidence = np.bincount(which, confidence, bins) / count
        accuracy = np.bincount(which, correct, bins) / count
    return pd.DataFrame({"lower": edges[:-1], "upper": edges[1:], "count": count,
                         "confidence": mean_confidence, "accuracy": accuracy})


def expected_calibration_error(y_true, probs, bins: int = CALIBRATION_BINS) -> float:
    """ECE: the gap between accuracy and mean top-1 confidence per bin, weighted by the bin's share of images."""
    table = reliability_table(y_true, probs, bins).query("count > 0")
    weights = table["count"] / table["count"].sum()
    return float((weights * (table["accuracy"] - table["confidence"]).abs()).sum())


def brier_score(y_true, probs) -> float:
    """Multi-class Brier score (Brier 1950): mean over images of the sum over classes of (p - one-hot)^2.

    Ranges 0 (certain and right) to 2 (certain and wrong); some libraries report it divided by the
    number of classes, or for the top class only.
    """
    y_true, probs = _checked(y_true, probs)
    onehot = np.eye(probs.shape[1])[y_true]
    return float(((probs - onehot) ** 2).sum(axis=1).mean())


def cam_target_layer(model, input_size: int = 224):
    """The module whose output Grad-CAM should explain: the last one to hand on a spatial feature map.

    Found by one forward pass on a blank image, so it works for any torchvision CNN classifier. Hooks
    fire when a module finishes, so a block that contains the last convolution (resnet ``layer4``,
    efficientnet ``features``) comes after its parts and is the one chosen; pooled 1x1 maps are not
    spatial and are skipped.
    """
    import torch

    spatial = []

    def record(module, _inputs, output):
        if isinstance(output, torch.Tensor) and output.ndim == 4 and min(output.shape[2:]) > 1:
            spatial.append(module)

    hooks = [m.register_forward_hook(record) for m in model.modules() if m is not model]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            parameter = next(model.parameters())
            model(torch.zeros(1, 3, input_size, input_size, device=parameter.device, dtype=parameter.dtype))
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    if not spatial:
        raise KvasirError(f"{type(model).__name__} has no module with a spatial feature map for Grad-CAM; "
                          "it needs a convolutional classifier (resnet, efficientnet, densenet, ...).")
    return spatial[-1]


def gradcam_overlays(model, images: list[Image.Image], tensors, targets: list[int]) -> list[np.ndarray]:
    """Grad-CAM heat maps for class ``targets`` laid over ``images`` (uint8 RGB, each image's own size).

    ``tensors`` are the same images as the model sees them (normalised batch); the model is put in
    eval mode.
    """
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.image import show_cam_on_image
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    layer = cam_target_layer(model, input_size=min(tensors.shape[-2:]))
    with GradCAM(model=model, target_layers=[layer]) as cam:
        maps = cam(input_tensor=tensors, targets=[ClassifierOutputTarget(int(t)) for t in targets])
    overlays = []
    for image, heat in zip(images, maps, strict=True):
        heat = np.asarray(Image.fromarray(heat.astype(np.float32)).resize(image.size, Image.BILINEAR))
        rgb = np.asarray(image.convert("RGB"), np.float32) / 255
        overlays.append(show_cam_on_image(rgb, np.clip(heat, 0, 1), use_rgb=True))
    return overlays


def accuracy_by_twin(predictions: pd.DataFrame, twinned_paths: set[str]) -> pd.DataFrame:
    """Validation accuracy of images with and without a near-duplicate in training."""
    twin = predictions["path"].isin(twinned_paths)
    correct = predictions["true"] == predictions["pred"]
    rows = [{"validation images": label, "images": int(mask.sum()),
             "accuracy": float(correct[mask].mean()) if mask.any() else float("nan")}
            for label, mask in (("with a near-duplicate in training", twin), ("without", ~twin))]
    return pd.DataFrame(rows).set_index("validation images")


def audit_headline(records: dict[str, dict], masked: dict[str, pd.DataFrame],
                   by_twin: dict[str, pd.DataFrame], twin_rate: float) -> pd.DataFrame:
    """One row per model: what the audit found, in numbers (the index page's Audit table)."""
    rows = {}
    for model, record in records.items():
        table = masked[model]
        rows[model] = {
            "accuracy": record["accuracy"],
            "accuracy, guide box masked at test time": table.loc["all"].iloc[1],
            "drop with the box masked": -table.loc["all", "difference"],
            "validation images with a train near-duplicate": twin_rate,
            "accuracy on those": by_twin[model].iloc[0]["accuracy"],
            "accuracy on the others": by_twin[model].iloc[1]["accuracy"],
            "ECE": record["ece"], "Brier": record["brier"],
        }
    return pd.DataFrame(rows).T
