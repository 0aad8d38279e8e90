"""What can inflate a score without medicine in it, in numbers: guide-box rates per class,
near-duplicates across the split and the accuracy with and without them, the audit's headline and
its sentences.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from kvasir_utils.analysis import intervals

# The sign of each difference the audit reports, said here once; tables, notebooks and pages show
# these words from here. Masking the box at test time: negative when masking hurts (the model
# leaned on the box). A near-duplicate in training: positive when such images are easier.
MASKED_CHANGE = "masked - unmasked"
NEAR_DUPLICATE_GAP = "with - without a near-duplicate in training"
SIGNS = (f"change = accuracy {MASKED_CHANGE} (the guide box blacked out at test time, against as evaluated; "
         f"negative when masking hurts); gap = accuracy {NEAR_DUPLICATE_GAP} (positive when those images are easier)")


def masked_change(masked_accuracy, accuracy):
    """The change masking the box makes, ``MASKED_CHANGE`` (numbers, arrays or columns alike)."""
    return masked_accuracy - accuracy


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


def detector_table(detectors: dict) -> pd.DataFrame:
    """Per near-duplicate detector (``near_duplicates.json``): what counts as a pair, and how it did
    on the copies planted to calibrate it (found share; false alarms among other pairs of frames)."""
    rows = {name: {"pair_when": f"{record['unit']} {record['threshold']:.4g}",
                   "planted_copies_found": record["recall"],
                   "false_partners_a_frame": record.get("false_partners_per_image", np.nan),
                   "used": "yes" if record.get("used", True) else "no: " + record["why"]}
            for name, record in detectors.items()}
    return pd.DataFrame(rows).T.rename_axis("detector")


def detector_sentences(detectors: dict, counts: dict[str, int]) -> list[str]:
    """What each near-duplicate detector found and how far to trust it, in words (``counts`` as
    ``NearDuplicates.counts`` gives them)."""
    sentences = []
    for name, record in detectors.items():
        what = ("perceptual hashes within {threshold} bits" if name == "phash" else
                "pooled features of {model} (weights: {weights}) with cosine similarity at least {threshold:.4f}")
        found = f"It finds {record['recall']:.0%} of the video-like copies planted in this dataset to measure it"
        if name == "features":
            found += (f"; {record['cross_class_false_alarm_rate']:.3%} of the pairs of frames of different classes "
                      f"also pass its threshold, {record['false_partners_per_image']:.2f} false partners a frame")
        used = "" if record.get("used", True) else f" Not used for the pairs: {record['why']}."
        sentences.append(f"Detector {name}: {what.format(**record)}. {found}.{used}")
    sentences.append(f"Pairs found: {counts['total']} ({counts['phash alone']} by the hash alone, "
                     f"{counts['features alone']} by the features alone, {counts['both']} by both).")
    return sentences


def pairs_by_detector(split: pd.DataFrame, pairs: pd.DataFrame) -> pd.DataFrame:
    """Near-duplicate pairs found by each detector alone and by both, among the images of ``split``
    and with one frame on each side of it. ``pairs`` index rows of ``split`` (``i``, ``j``) and say
    which detector found each (``found_by``)."""
    side = split["split"].to_numpy()
    across = side[pairs["i"].to_numpy(int)] != side[pairs["j"].to_numpy(int)]
    found_by = pairs["found_by"].astype(str)
    names = ["phash", "features", "both"]
    table = pd.DataFrame({"pairs": [int((found_by == n).sum()) for n in names],
                          "across_the_split": [int(((found_by == n).to_numpy() & across).sum()) for n in names]},
                         index=["perceptual hash alone", "deep features alone", "both"])
    table.loc["either"] = table.sum()
    return table.rename_axis("found by")


def masked_table(masked: pd.DataFrame, classes: list[str]) -> pd.DataFrame:
    """Per class and over ``all``: images, accuracy as evaluated, ``masked_accuracy`` with the
    overlays masked at test time, and ``change`` (``masked_change``), from
    ``train.evaluation.masked_predictions``."""
    frame = masked.assign(accuracy=masked["true"] == masked["pred"],
                          masked_accuracy=masked["masked_pred"] == masked["true"])
    grouped = frame.groupby("label", sort=False)
    table = grouped[["accuracy", "masked_accuracy"]].mean().assign(images=grouped.size())
    table.loc["all"] = [*frame[["accuracy", "masked_accuracy"]].mean(), len(frame)]
    table = table.astype({"images": int}).reindex([*classes, "all"])
    return table.assign(change=masked_change(table["masked_accuracy"], table["accuracy"]))[
        ["images", "accuracy", "masked_accuracy", "change"]]


def accuracy_by_twin(predictions: pd.DataFrame, twinned_paths: set[str]) -> pd.DataFrame:
    """Validation accuracy of images with (``with_twin``) and without (``without_twin``) a
    near-duplicate in training."""
    twin = predictions["path"].isin(twinned_paths)
    correct = predictions["true"] == predictions["pred"]
    rows = {name: {"images": int(mask.sum()), "accuracy": float(correct[mask].mean()) if mask.any() else float("nan")}
            for name, mask in (("with_twin", twin), ("without_twin", ~twin))}
    return pd.DataFrame(rows).T.astype({"images": int})


def nearest_train_twins(split: pd.DataFrame, pairs: pd.DataFrame) -> pd.DataFrame:
    """For each row of ``split``: the closest training image that a validation row nearly duplicates
    (``twin``, "" if none) and the Hamming distance of their hashes in bits (``twin_distance``, NA if none)."""
    side, paths = split["split"].to_numpy(), split["path"].to_numpy()
    columns = ["i", "j", "distance"]
    both = pd.concat([pairs[columns], pairs.rename(columns={"i": "j", "j": "i"})[columns]])  # each way round
    crossing = both[(side[both["i"].to_numpy()] == "val") & (side[both["j"].to_numpy()] == "train")]
    closest = crossing.sort_values(["i", "distance"], kind="stable").drop_duplicates("i")
    twins = pd.DataFrame({"twin": "", "twin_distance": pd.array([pd.NA] * len(split), dtype="Int64")},
                         index=split.index)
    twins.iloc[closest["i"].to_numpy(), 0] = paths[closest["j"].to_numpy()]
    twins.iloc[closest["i"].to_numpy(), 1] = closest["distance"].to_numpy()
    return twins


def validation_images(split: pd.DataFrame, pairs: pd.DataFrame, has_box: pd.Series) -> pd.DataFrame:
    """Per validation image: ``path``, ``label``, ``has_box`` (the guide box), ``twin`` (the closest
    training image it nearly duplicates, "" if none) and ``twin_distance`` (their hashes' Hamming
    distance in bits): what the error browser shows beside each prediction."""
    frame = pd.concat([split.assign(has_box=has_box.to_numpy()), nearest_train_twins(split, pairs)], axis=1)
    return frame.loc[frame["split"] == "val", ["path", "label", "has_box", "twin", "twin_distance"]].reset_index(
        drop=True)


def audit_headline(records: dict[str, dict], masked: dict[str, pd.DataFrame], twinned: set[str],
                   samples: int, confidence: float, seed: int) -> pd.DataFrame:
    """One row per model: what the audit found, with bootstrap intervals over the validation images.
    ``masked`` holds each model's per-image predictions with and without the box masked
    (``train.evaluation.masked_predictions``); ``twinned`` the validation paths with a near-duplicate
    in training. ``masked_change`` and ``twin_gap`` take the signs of ``SIGNS``."""
    rows = {}
    for model, record in records.items():
        frame = masked[model]
        right, masked_right = frame["true"] == frame["pred"], frame["masked_pred"] == frame["true"]
        twin = frame["path"].isin(twinned)
        change = intervals.paired_difference_interval(masked_right, right, samples, confidence, seed)
        gap = intervals.group_gap_interval(right[twin], right[~twin], samples, confidence, seed)
        rows[model] = {
            "accuracy": record["accuracy"], "masked_accuracy": masked_right.mean(),
            "masked_change": masked_change(masked_right.mean(), right.mean()), "masked_change_ci_low": change[0],
            "masked_change_ci_high": change[1], "twin_share": twin.mean(), "twin_images": int(twin.sum()),
            "accuracy_with_twin": right[twin].mean() if twin.any() else np.nan,
            "accuracy_without_twin": right[~twin].mean() if (~twin).any() else np.nan,
            "twin_gap_ci_low": gap[0], "twin_gap_ci_high": gap[1], "ece": record["ece"], "brier": record["brier"],
        }
        rows[model]["twin_gap"] = rows[model]["accuracy_with_twin"] - rows[model]["accuracy_without_twin"]
    return pd.DataFrame(rows).T


def points(value: float, decimals: int = 1) -> str:
    """A difference of shares in points, with a true minus sign (as ``report.formats`` writes it)."""
    return f"{100 * value:+.{decimals}f} points".replace("-", "\u2212")


def box_effect(low: float, high: float) -> str:
    """What an interval of the guide-box change (masked - unmasked, ``SIGNS``) that excludes zero
    means, by its sign: lower when masked, the model leans on the box; higher, masking helps."""
    return "the model leans on the box" if high < 0 else "masking the box helps"


def gap_effect(low: float, high: float) -> str:
    """What an interval of the near-duplicate gap (with - without a twin) that excludes zero means, by its sign."""
    return "the image-level split flatters the score" if low > 0 else "images with a near-duplicate are harder"


def interval_words(low: float, high: float, effect: str, none: str) -> str:
    """What an interval of a difference says: ``effect`` when it excludes zero, else ``none``."""
    if np.isnan(low) or np.isnan(high):
        return "none: one of the groups is empty, too few images to tell"
    span = f"[{points(low)}, {points(high)}]"
    return f"{span}: {effect}" if low > 0 or high < 0 else f"{span}: {none}"


def audit_sentences(headline: pd.DataFrame, box_rates: pd.DataFrame, confidence: float = 0.95) -> list[str]:
    """The audit's findings in plain words, each difference with its interval, and last the signs
    they take (``SIGNS``); each model by ``headline``'s index (the pages pass display names)."""
    with_box = box_rates[box_rates["rate"] > 0]
    sentences = [
        f"The teal position-guide box appears in {len(with_box)} of {len(box_rates)} classes "
        f"(from {with_box['rate'].min():.1%} to {with_box['rate'].max():.1%} of their frames) and never in the others, "
        "so a network can learn 'box means lower-GI class' without looking at tissue."
        if len(with_box) else "No frame carries the position-guide box.",
    ]
    level = f"{confidence:.0%}"
    for model, row in headline.iterrows():
        change = row["masked_change"]
        leans = box_effect(row["masked_change_ci_low"], row["masked_change_ci_high"])
        sentences.append(
            f"{model}: masking the box at test time changes accuracy from {row['accuracy']:.1%} to "
            f"{row['masked_accuracy']:.1%}, a change of {points(change)} ({level} interval "
            + interval_words(row["masked_change_ci_low"], row["masked_change_ci_high"], leans,
                              "too few images to tell whether the model leans on the box") + ").")
        gap = row["twin_gap"]
        flatters = gap_effect(row["twin_gap_ci_low"], row["twin_gap_ci_high"])
        sentences.append(
            f"{model}: the {int(row['twin_images'])} validation images with a near-duplicate in training are "
            f"classified {row['accuracy_with_twin']:.1%} correctly against {row['accuracy_without_twin']:.1%} for the "
            f"others, a gap of {points(gap) if not np.isnan(gap) else 'nothing to compare'} ({level} interval "
            + interval_words(row["twin_gap_ci_low"], row["twin_gap_ci_high"], flatters,
                              "too few images to tell") + f"). Its ECE is {row['ece']:.3f} (0: perfectly calibrated).")
    share = headline["twin_share"].iloc[0] if len(headline) else float("nan")
    sentences.append(f"{share:.1%} of the validation images have a near-duplicate in training. Kvasir has no "
                     "patient ids; `split.group_near_duplicates=true` keeps such groups on one side of the split.")
    return [*sentences, f"Signs: {SIGNS}."]
