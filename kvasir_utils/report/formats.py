"""One number style for every page and table a reader sees: accuracies and other shares as
percentages with one decimal, differences of shares in points, F1, ROC-AUC, ECE and Brier with
three decimals, intervals in brackets, and "not reported" where the paper gives nothing."""

from __future__ import annotations

import math

import pandas as pd

# Which quantities are shares of images (shown as percentages); F1, AUC and calibration are scores.
SHARES = {"accuracy", "train_acc", "val_acc", "masked_accuracy", "accuracy_with_twin", "accuracy_without_twin",
          "twin_share", "rate", "accuracy_paper", "accuracy_ci_low", "accuracy_ci_high", "precision", "recall",
          "specificity",
          "Precision", "Recall", "Specificity"}
CHANGES = {"change", "masked_change", "twin_gap", "beats", "mean_difference"}  # differences of shares
COUNTS = {"images", "n", "Support", "support", "with_box", "val_images", "with_train_twin", "epoch",
          "epoch (both stages)", "epoch of the stage", "train", "val", "total", "parameters", "trainable"}
SECONDS = {"seconds", "train_seconds"}
NOT_REPORTED = "not reported"


def kind_of(name: str) -> str:
    """``percent``, ``points``, ``count`` or ``score`` for a column or metric name."""
    if name in SHARES or name.startswith("accuracy"):
        return "percent"
    if name in CHANGES:
        return "points"
    if name in COUNTS:
        return "count"
    if name in SECONDS or name.endswith("_per_s"):
        return "rate"
    return "score"


def number(value, kind: str = "score", missing: str = "") -> str:
    """One value in the house style (``missing`` where there is none)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return missing
    if isinstance(value, str):
        return value
    if kind == "percent":
        return f"{100 * value:.1f}%"
    if kind == "points":
        return f"{100 * value:+.1f} points"
    if kind == "count":
        return f"{int(value):,}"
    if kind == "rate":
        return f"{value:,.1f}"
    if kind == "text":
        return str(value)
    return f"{value:.3f}"


def interval(low, high, kind: str = "score") -> str:
    """``[low, high]`` in the house style; empty when there is no interval."""
    if any(v is None or (isinstance(v, float) and math.isnan(v)) for v in (low, high)):
        return ""
    return f"[{number(low, kind)}, {number(high, kind)}]"


def formatted(frame: pd.DataFrame, kinds: dict[str, str] | None = None, missing: str = "") -> pd.DataFrame:
    """A copy of ``frame`` with every number written in the house style, by column (``kinds``
    overrides the column's own kind)."""
    kinds = kinds or {}
    out = frame.copy().astype(object)
    for column in frame.columns:
        # (metric, paper | run | difference) columns take the metric's kind; a difference of shares is in points
        name = str(column[0] if isinstance(column, tuple) else column)
        kind = kinds.get(name, kind_of(name))
        if isinstance(column, tuple) and column[-1] == "difference" and kind == "percent":
            kind = "points"
        out[column] = [number(v, kind, missing) for v in frame[column]]
    return out


MODEL_NAMES = {"resnet50": "ResNet50", "efficientnet_b0": "EfficientNet-B0", "resnet18": "ResNet18",
               "mobilenet_v3_small": "MobileNetV3-small"}


def model_name(model: str) -> str:
    """A torchvision model's name as the paper writes it (``efficientnet_b0`` -> ``EfficientNet-B0``)."""
    return MODEL_NAMES.get(model, model)
