"""Percentile-bootstrap intervals over one run's validation images, for what the bootstrap of
``metrics.bootstrap_ci`` (accuracy, macro F1) does not cover: macro ROC-AUC, the difference between
two models on the same images, a change on the same images (the box masked), and the gap between
two groups of images (with and without a near-duplicate in training). A bounded quantity's interval
stays inside its bounds because it is made of values of that quantity."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import roc_auc_score


def _percentiles(values, confidence: float) -> tuple[float, float]:
    values = np.asarray(values, float)
    values = values[~np.isnan(values)]
    if not len(values):
        return float("nan"), float("nan")
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(values, [tail, 100 - tail])
    return float(low), float(high)


def resamples(n: int, samples: int, seed: int) -> np.ndarray:
    """``samples`` rows of ``n`` image indices drawn with replacement (the same rows for paired statistics)."""
    return np.random.default_rng(seed).integers(0, n, size=(samples, n))


def macro_auc(y_true, probs) -> float:
    """Mean one-vs-rest ROC-AUC over the classes present with both outcomes (as ``metrics.roc_auc_table``)."""
    y_true, probs = np.asarray(y_true), np.asarray(probs)
    present = [k for k in range(probs.shape[1]) if 0 < (y_true == k).sum() < len(y_true)]
    aucs = [roc_auc_score(y_true == k, probs[:, k]) for k in present]
    return float(np.mean(aucs)) if aucs else float("nan")


def macro_auc_interval(y_true, probs, samples: int, confidence: float, seed: int) -> tuple[float, float]:
    y_true, probs = np.asarray(y_true), np.asarray(probs)
    return _percentiles([macro_auc(y_true[i], probs[i]) for i in resamples(len(y_true), samples, seed)], confidence)


def paired_difference_interval(first_correct, second_correct, samples: int, confidence: float,
                               seed: int) -> tuple[float, float]:
    """Interval of mean(first) - mean(second) over the same images resampled together (two models'
    right/wrong, or one model masked and unmasked)."""
    first, second = np.asarray(first_correct, float), np.asarray(second_correct, float)
    draws = resamples(len(first), samples, seed)
    return _percentiles(first[draws].mean(axis=1) - second[draws].mean(axis=1), confidence)


def group_gap_interval(first_correct, second_correct, samples: int, confidence: float,
                       seed: int) -> tuple[float, float]:
    """Interval of mean(first) - mean(second) for two separate groups of images, each resampled on its own."""
    first, second = np.asarray(first_correct, float), np.asarray(second_correct, float)
    if not len(first) or not len(second):
        return float("nan"), float("nan")
    a = first[resamples(len(first), samples, seed)].mean(axis=1)
    b = second[resamples(len(second), samples, seed + 1)].mean(axis=1)
    return _percentiles(a - b, confidence)
