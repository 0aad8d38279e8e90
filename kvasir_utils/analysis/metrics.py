"""Table 1, Table 2, ROC-AUC, calibration, and McNemar's test on one run's predictions (their
bootstrap intervals live in ``intervals``); macro and micro precision, recall, F1 and MCC (what
HyperKvasir's paper reports), and classes with too few images for a stable number flagged.
Every table is sized by the classes it is given.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from kvasir_utils.analysis.labels import abbreviations, display_name
from kvasir_utils.errors import KvasirError

# scikit-learn is imported in the functions that use it, not with the module
# (docs/architecture.md: the direction of imports).

TABLE1_COLUMNS = ["Precision", "Recall", "F1-Score", "Specificity", "Support"]
MACRO_AVG, WEIGHTED_AVG = "Macro Avg", "Weighted Avg"  # Table 1's last rows (and ROC-AUC's macro), as the paper's
AVERAGE_ROWS = (MACRO_AVG, WEIGHTED_AVG)


def specificity(cm: np.ndarray) -> np.ndarray:
    """Per class TN / (TN + FP) from a confusion matrix (rows true, columns predicted)."""
    fp = cm.sum(axis=0) - np.diag(cm)
    tn = cm.sum() - cm.sum(axis=1) - fp
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(tn + fp > 0, tn / (tn + fp), 0.0)


def classification_table(y_true, y_pred, class_names: list[str]) -> pd.DataFrame:
    """The paper's Table 1: per class precision, recall, F1, specificity, support, then
    ``Macro Avg`` and ``Weighted Avg`` (``AVERAGE_ROWS``; weighted specificity left empty, as in the paper)."""
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    labels = np.arange(len(class_names))
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, zero_division=0
    )
    spec = specificity(confusion_matrix(y_true, y_pred, labels=labels))
    table = pd.DataFrame(
        {"Precision": precision, "Recall": recall, "F1-Score": f1, "Specificity": spec, "Support": support},
        index=[display_name(c) for c in class_names],
    )
    weights = support / support.sum()
    macro = table[TABLE1_COLUMNS[:4]].mean()
    weighted = table[TABLE1_COLUMNS[:3]].mul(weights, axis=0).sum()
    table.loc[MACRO_AVG] = [*macro, support.sum()]
    table.loc[WEIGHTED_AVG] = [*weighted, np.nan, support.sum()]
    table["Support"] = table["Support"].astype(int)
    return table


def confusion_table(y_true, y_pred, class_names: list[str]) -> pd.DataFrame:
    """The paper's Table 2: counts, rows true and columns predicted, labelled DLP, DRM, ...
    (``labels.abbreviations`` of the classes)."""
    from sklearn.metrics import confusion_matrix

    labels = np.arange(len(class_names))
    names = list(abbreviations(class_names).values())
    return pd.DataFrame(confusion_matrix(y_true, y_pred, labels=labels), index=names, columns=names)


SMALL_SUPPORT_NOTE = "fewer than {} images"


def flag_small_support(table: pd.DataFrame, min_support: int) -> pd.DataFrame:
    """A per-class table (Table 1, with ``Support``) with a ``Note`` column that flags each class with
    fewer than ``min_support`` images (``eval.min_support``): its numbers move by a large step with
    each image, so they are not to be read to two decimals. Average rows are not flagged."""
    averages = table.index.isin(AVERAGE_ROWS)
    small = (table["Support"] < min_support) & ~averages
    return table.assign(Note=np.where(small, SMALL_SUPPORT_NOTE.format(min_support), ""))


def small_classes(y_true, class_names: list[str], min_support: int) -> list[str]:
    """The classes with fewer than ``min_support`` of the images ``y_true`` labels."""
    support = np.bincount(np.asarray(y_true, int), minlength=len(class_names))
    return [name for name, count in zip(class_names, support) if count < min_support]


def _one_vs_rest_mcc(tp, fp, fn, tn) -> np.ndarray:
    tp, fp, fn, tn = (np.asarray(v, float) for v in (tp, fp, fn, tn))
    with np.errstate(invalid="ignore", divide="ignore"):
        denom = np.sqrt((tp + fp) * (tp + fn) * (tn + fp) * (tn + fn))
        return np.where(denom > 0, (tp * tn - fp * fn) / denom, 0.0)


def macro_micro_table(y_true, y_pred, class_names: list[str]) -> pd.DataFrame:
    """Macro and micro averaged precision, recall, F1 and MCC (rows ``Macro``, ``Micro``), as
    HyperKvasir's paper reports them. Macro: the mean over classes of each class's one-vs-rest
    number; micro: the number of the pooled one-vs-rest decisions (for one label an image, micro
    precision, recall and F1 all equal accuracy). ``mcc`` in ``summary`` is the multi-class MCC."""
    from sklearn.metrics import confusion_matrix, precision_recall_fscore_support

    labels = np.arange(len(class_names))
    cm = confusion_matrix(y_true, y_pred, labels=labels)
    tp = np.diag(cm)
    fp, fn = cm.sum(axis=0) - tp, cm.sum(axis=1) - tp
    tn = cm.sum() - tp - fp - fn
    rows = {}
    for average in ("macro", "micro"):
        precision, recall, f1, _ = precision_recall_fscore_support(y_true, y_pred, labels=labels, average=average,
                                                                   zero_division=0)
        mcc = _one_vs_rest_mcc(tp, fp, fn, tn).mean() if average == "macro" else \
            float(_one_vs_rest_mcc(tp.sum(), fp.sum(), fn.sum(), tn.sum()))
        rows[average.capitalize()] = {"Precision": precision, "Recall": recall, "F1-Score": f1, "MCC": mcc}
    return pd.DataFrame(rows).T.astype(float)


def accuracy(y_true, y_pred) -> float:
    return float(np.mean(np.asarray(y_true) == np.asarray(y_pred)))


def roc_auc_table(y_true, probs: np.ndarray, class_names: list[str]) -> pd.Series:
    """One-vs-rest ROC-AUC per class from predicted probabilities, and their macro average."""
    from sklearn.metrics import roc_auc_score

    y_true = np.asarray(y_true)
    values = {}
    for i, name in enumerate(class_names):
        positives = y_true == i
        values[display_name(name)] = roc_auc_score(positives, probs[:, i]) if 0 < positives.sum() < len(y_true) \
            else np.nan
    auc = pd.Series(values, name="ROC-AUC")
    auc[MACRO_AVG] = auc.mean()
    return auc


def summary(y_true, probs: np.ndarray, class_names: list[str]) -> dict:
    """The headline numbers, as written to metrics.json."""
    from sklearn.metrics import f1_score, matthews_corrcoef

    y_pred = probs.argmax(1)
    auc = roc_auc_table(y_true, probs, class_names)
    averages = macro_micro_table(y_true, y_pred, class_names)
    return {
        "accuracy": accuracy(y_true, y_pred),
        "macro_precision": float(averages.loc["Macro", "Precision"]),
        "macro_recall": float(averages.loc["Macro", "Recall"]),
        "micro_f1": float(averages.loc["Micro", "F1-Score"]),
        "mcc": float(matthews_corrcoef(y_true, y_pred)),
        "macro_mcc": float(averages.loc["Macro", "MCC"]),
        "micro_mcc": float(averages.loc["Micro", "MCC"]),
        "macro_f1": float(f1_score(y_true, y_pred, average="macro", labels=range(len(class_names)), zero_division=0)),
        "weighted_f1": float(f1_score(y_true, y_pred, average="weighted", labels=range(len(class_names)),
                                      zero_division=0)),
        "macro_auc": float(auc[MACRO_AVG]),
        "images": int(len(y_true)),
    }


def mcnemar(correct_a, correct_b) -> dict:
    """Exact McNemar test on paired predictions: is one model right where the other is wrong
    more often than chance allows?"""
    from scipy.stats import binomtest

    correct_a, correct_b = np.asarray(correct_a, bool), np.asarray(correct_b, bool)
    only_a = int(np.sum(correct_a & ~correct_b))
    only_b = int(np.sum(~correct_a & correct_b))
    p_value = binomtest(only_a, only_a + only_b, 0.5).pvalue if only_a + only_b else 1.0
    return {"only_first_correct": only_a, "only_second_correct": only_b, "p_value": float(p_value)}


CALIBRATION_BINS = 15  # equal-width bins of top-1 confidence (Guo et al. 2017); the pages say it from here


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


def mcnemar_of_runs(first: pd.DataFrame, second: pd.DataFrame) -> dict:
    """``mcnemar`` of two runs' predictions.csv, image by image (the caller checks they share images)."""
    return mcnemar(first["true"] == first["pred"], second["true"] == second["pred"])

