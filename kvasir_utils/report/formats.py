"""One number style for every page and table a reader sees: accuracies and other shares as
percentages with one decimal, differences of shares in points, F1, ROC-AUC, ECE and Brier with
three decimals, counts as integers, intervals in brackets, a true minus sign (U+2212) and "not
reported" where the paper gives nothing."""

from __future__ import annotations

import math
import re

import pandas as pd

# Which quantities are shares of images (shown as percentages); F1, AUC and calibration are scores.
SHARES = {"accuracy", "train_acc", "val_acc", "masked_accuracy", "accuracy_with_twin", "accuracy_without_twin",
          "twin_share", "rate", "accuracy_paper", "accuracy_ci_low", "accuracy_ci_high", "precision", "recall",
          "specificity", "box_share", "Precision", "Recall", "Specificity", "planted_copies_found", "false_alarms"}
# differences of shares
CHANGES = {"change", "masked_change", "twin_gap", "beats", "mean_difference", "difference_to_default"}
COUNTS = {"images", "n", "Support", "support", "with_box", "val_images", "with_train_twin", "epoch",
          "paired_n", "twin_images", "runs", "other_region",
          "epoch (both stages)", "epoch of the stage", "train", "val", "total", "parameters", "trainable", "pairs",
          "across_the_split"}
SECONDS = {"seconds", "train_seconds"}
P_VALUES = {"p_value", "paired_t_p", "sign_test_p"}
TEXT = {"default", "seeds", "mcnemar_p_per_seed", "status", "member", "reading"}
NOT_REPORTED = "not reported"
NOT_RECORDED = "not recorded"
MINUS = "\u2212"  # a true minus sign: a hyphen is a dash to a reader and to a screen reader


def signed(text: str) -> str:
    """``text`` with its hyphen-minus signs written as true minus signs (``-3.1`` -> ``−3.1``)."""
    return re.sub(r"(?<![\w-])-(?=\d)", MINUS, text)


def kind_of(name: str) -> str:
    """``percent``, ``points``, ``count``, ``rate``, ``p`` (a p-value), ``text`` or ``score`` for a
    column or metric name."""
    if name in SHARES or name.startswith("accuracy"):
        return "percent"
    if name in CHANGES:
        return "points"
    if name in COUNTS:
        return "count"
    if name in SECONDS or name.endswith("_per_s"):
        return "rate"
    if name in P_VALUES:
        return "p"
    if name in TEXT:
        return "text"
    return "score"


def number(value, kind: str = "score", missing: str = "") -> str:
    """One value in the house style (``missing`` where there is none)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return missing
    if isinstance(value, str):
        return value
    if kind == "text":
        return str(value)
    if kind == "percent":
        return signed(f"{100 * value:.1f}%")
    if kind == "points":
        return signed(f"{100 * value:+.1f} points")
    if kind == "fine points":
        return signed(f"{100 * value:+.2f} points")
    if kind == "signed score":
        return signed(f"{value:+.3f}")
    if kind == "count":
        return signed(f"{int(round(value)):,}")
    if kind == "rate":
        return signed(f"{value:,.1f}")
    if kind == "p":
        return signed(f"{value:.2g}")
    return signed(f"{value:.3f}")


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
        # (metric, paper | run | difference) columns take the metric's kind; a difference is signed, one of
        # shares in points
        name = str(column[0] if isinstance(column, tuple) else column)
        kind = kinds.get(name, kind_of(name))
        if isinstance(column, tuple) and column[-1] == "difference":
            kind = {"percent": "points", "score": "signed score"}.get(kind, kind)
        out[column] = [number(v, kind, missing) for v in frame[column]]
    return out


# What an empty value of a setting means, where "none" alone would not say
NONE_MEANS = {"train.weights": "none (random initialisation)", "data.url": "none (a local archive or folder)",
              "data.size": "none (not checked)", "data.sha256": "none (not checked)"}


def setting(value, name: str = "") -> str:
    """A setting's value for a reader: ``none`` (or what none means for setting ``name``) for None or
    empty, a list's items joined, YAML's ``true``/``false``, never a Python repr."""
    if value is None or value == "" or value == [] or value == {}:
        return NONE_MEANS.get(name, "none")
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list | tuple):
        return ", ".join(setting(v) for v in value)
    if isinstance(value, dict):
        return "; ".join(f"{k}: {setting(v)}" for k, v in value.items())
    return str(value)


MODEL_NAMES = {"resnet50": "ResNet50", "efficientnet_b0": "EfficientNet-B0", "resnet18": "ResNet18",
               "mobilenet_v3_small": "MobileNetV3-small",
               "timm:efficientnet_b3.ra2_in1k": "EfficientNet-B3",
               "timm:convnext_tiny.fb_in22k_ft_in1k": "ConvNeXt-Tiny",
               "timm:vit_small_patch14_dinov2.lvd142m": "DINOv2 ViT-S/14",
               "timm:vit_base_patch14_dinov2.lvd142m": "DINOv2 ViT-B/14"}


def counted(n: int, noun: str) -> str:
    """``1 epoch``, ``3 epochs``: a count with its noun in the number it takes."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def model_name(model: str) -> str:
    """A model's name as papers write it (``efficientnet_b0`` -> ``EfficientNet-B0``; the backbones
    profile's timm models by their short names); any other, as given."""
    return MODEL_NAMES.get(model, MODEL_NAMES.get(f"timm:{model.removeprefix('timm-')}", model))
