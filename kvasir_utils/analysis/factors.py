"""Results broken down by the factors a model card names (Mitchell et al. 2019): per class, per
region of the GI tract, frames with the guide box as they are and masked, images with and without
a near-duplicate in training. Built from predictions.csv and the tables notebooks 04 and 07 write.
"""

from __future__ import annotations

import pandas as pd

# Where in the GI tract each class is seen is a fact of the datasets (Kvasir v2's classes, then HyperKvasir's).
from kvasir_utils.datasets import REGION_OF, REGIONS, display_name


def region_table(predictions: pd.DataFrame, classes: list[str]) -> pd.DataFrame:
    """Per region (classes outside ``REGIONS`` are left out): validation images, accuracy, and
    ``other_region``: how many were predicted as a class of the other region."""
    truth = predictions["label"].map(REGION_OF)
    predicted = predictions["pred"].map(lambda i: REGION_OF.get(classes[i]))
    correct = predictions["true"] == predictions["pred"]
    rows = {region: {"images": int((truth == region).sum()), "accuracy": float(correct[truth == region].mean()),
                     "other_region": int((predicted[truth == region] != region).sum())}
            for region in REGIONS if (truth == region).any()}
    return pd.DataFrame(rows, index=["images", "accuracy", "other_region"]).T.astype(
        {"images": int, "other_region": int}).rename_axis("region")


def _auc_column(roc_auc: pd.DataFrame) -> pd.Series:
    """This run's ROC-AUC from notebook 04's table (beside the paper's where the paper has one)."""
    return roc_auc["ROC-AUC run"] if "ROC-AUC run" in roc_auc else roc_auc["ROC-AUC"]


def class_factors(classes: list[str], table1: pd.DataFrame, roc_auc: pd.DataFrame, box_rates: pd.DataFrame,
                  masked: pd.DataFrame, twins: pd.DataFrame) -> pd.DataFrame:
    """Per class: validation images, accuracy (recall), F1, ROC-AUC, the share of the class's
    frames with the guide box, the accuracy with the box masked at test time and the change, and
    the share of its validation images with a near-duplicate in training."""
    shown = [display_name(c) for c in classes]
    return pd.DataFrame({
        "images": table1["Support"].reindex(shown).to_numpy().astype(int),
        "accuracy": table1["Recall"].reindex(shown).to_numpy(),
        "f1": table1["F1-Score"].reindex(shown).to_numpy(),
        "roc_auc": _auc_column(roc_auc).reindex(shown).to_numpy(),
        "box_share": box_rates.set_index("label")["rate"].reindex(classes).to_numpy(),
        "masked_accuracy": masked["masked_accuracy"].reindex(classes).to_numpy(),
        "masked_change": masked["change"].reindex(classes).to_numpy(),
        "twin_share": twins.set_index("label")["rate"].reindex(classes).to_numpy(),
    }, index=pd.Index(classes, name="class"))


def disaggregated_table(record: dict, regions: pd.DataFrame, masked: pd.DataFrame | None,
                        by_twin: pd.DataFrame | None) -> pd.DataFrame:
    """One row per (factor, group): validation images and accuracy; groups whose table is not
    made yet (``None``) are left out."""
    rows = [("all", "validation images", record["images"], record["accuracy"])]
    rows += [("region", region, row.images, row.accuracy) for region, row in regions.iterrows()]
    if masked is not None:
        everything = masked.loc["all"]
        rows += [("guide box", "frames as they are", everything["images"], everything["accuracy"]),
                 ("guide box", "box masked at test time", everything["images"], everything["masked_accuracy"])]
    if by_twin is not None:
        rows += [("near-duplicate in training", words, by_twin.loc[group, "images"], by_twin.loc[group, "accuracy"])
                 for group, words in (("with_twin", "with one"), ("without_twin", "without"))]
    table = pd.DataFrame(rows, columns=["factor", "group", "images", "accuracy"]).astype({"images": int})
    return table.set_index(["factor", "group"])
