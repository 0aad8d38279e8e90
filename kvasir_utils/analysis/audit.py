"""What can inflate a score without medicine in it, in numbers: guide-box rates per class,
near-duplicates across the split and the accuracy with and without them, the audit's headline and
its sentences.
"""

from __future__ import annotations

import numpy as np
import pandas as pd


def guide_box_rates(frame: pd.DataFrame) -> pd.DataFrame:
    """Per class (``label``): images, images with the box (``has_box``) and their rate, in first-seen order."""
    grouped = frame.groupby("label", sort=False)["has_box"]
    rates = pd.DataFrame({"images": grouped.size(), "with_box": grouped.sum().astype(int)})
    return rates.assign(rate=rates["with_box"] / rates["images"]).reset_index()


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


def masked_table(masked: pd.DataFrame, classes: list[str]) -> pd.DataFrame:
    """Per class and over ``all``: images, accuracy as evaluated, ``masked_accuracy`` with the
    overlays masked at test time, and ``change`` = masked - unmasked (negative: the mask hurts),
    from ``train.evaluation.masked_predictions``."""
    frame = masked.assign(accuracy=masked["true"] == masked["pred"],
                          masked_accuracy=masked["masked_pred"] == masked["true"])
    grouped = frame.groupby("label", sort=False)
    table = grouped[["accuracy", "masked_accuracy"]].mean().assign(images=grouped.size())
    table.loc["all"] = [*frame[["accuracy", "masked_accuracy"]].mean(), len(frame)]
    table = table.astype({"images": int}).reindex([*classes, "all"])
    return table.assign(change=table["masked_accuracy"] - table["accuracy"])[
        ["images", "accuracy", "masked_accuracy", "change"]]


def accuracy_by_twin(predictions: pd.DataFrame, twinned_paths: set[str]) -> pd.DataFrame:
    """Validation accuracy of images with (``with_twin``) and without (``without_twin``) a
    near-duplicate in training."""
    twin = predictions["path"].isin(twinned_paths)
    correct = predictions["true"] == predictions["pred"]
    rows = {name: {"images": int(mask.sum()), "accuracy": float(correct[mask].mean()) if mask.any() else float("nan")}
            for name, mask in (("with_twin", twin), ("without_twin", ~twin))}
    return pd.DataFrame(rows).T.astype({"images": int})


def audit_headline(records: dict[str, dict], masked: dict[str, pd.DataFrame],
                   by_twin: dict[str, pd.DataFrame], twin_rate: float) -> pd.DataFrame:
    """One row per model: what the audit found, in numbers (the index page's Audit table).
    ``masked_change`` = accuracy with the box masked - as evaluated; ``twin_gap`` = accuracy on
    images with a near-duplicate in training - on the others."""
    rows = {}
    for model, record in records.items():
        table, twins = masked[model], by_twin[model]
        rows[model] = {
            "accuracy": record["accuracy"], "masked_accuracy": table.loc["all", "masked_accuracy"],
            "masked_change": table.loc["all", "change"], "twin_share": twin_rate,
            "accuracy_with_twin": twins.loc["with_twin", "accuracy"],
            "accuracy_without_twin": twins.loc["without_twin", "accuracy"],
            "twin_gap": twins.loc["with_twin", "accuracy"] - twins.loc["without_twin", "accuracy"],
            "ece": record["ece"], "brier": record["brier"],
        }
    return pd.DataFrame(rows).T


# -- the audit ----------------------------------------------------------------------------
def audit_sentences(headline: pd.DataFrame, box_rates: pd.DataFrame) -> list[str]:
    """The audit's numbers in plain words, for readers who are not statisticians."""
    with_box = box_rates[box_rates["rate"] > 0]
    sentences = [
        f"The teal position-guide box appears in {len(with_box)} of {len(box_rates)} classes "
        f"(from {with_box['rate'].min():.0%} to {with_box['rate'].max():.0%} of their frames) and never in the others, "
        "so a network can learn 'box means lower-GI class' without looking at tissue."
        if len(with_box) else "No frame carries the position-guide box.",
    ]
    for model, row in headline.iterrows():
        sentences.append(
            f"{model}: blacking out the box at test time changes accuracy from {row['accuracy']:.1%} to "
            f"{row['masked_accuracy']:.1%}; a large drop means the model leans on the box. "
            f"Validation images with a near-duplicate frame in training are classified "
            f"{row['accuracy_with_twin']:.1%} correctly against {row['accuracy_without_twin']:.1%} for the others; "
            f"a gap means the image-level split flatters the score. Its confidence is off by "
            f"{row['ece']:.3f} on average (ECE; 0 is perfectly calibrated).")
    share = headline["twin_share"].iloc[0] if len(headline) else float("nan")
    sentences.append(f"{share:.1%} of the validation images have a near-duplicate in training. Kvasir has no "
                     "patient ids; `split.group_near_duplicates=true` keeps such groups on one side of the split.")
    return sentences
