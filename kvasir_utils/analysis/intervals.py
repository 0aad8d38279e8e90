"""Percentile-bootstrap intervals over one run's validation images: accuracy and macro F1, macro
ROC-AUC, the difference between two models on the same images, a change on the same images (the box
masked), and the gap between two groups of images (with and without a near-duplicate in training).
Each resamples the images with ``resamples`` and reads the interval off with ``percentile_interval``.
A bounded quantity's interval stays inside its bounds because it is made of values of that quantity."""

from __future__ import annotations

import numpy as np

# scikit-learn is imported in the functions that use it, not with the module
# (docs/architecture.md: the direction of imports).


def percentile_interval(values, confidence: float) -> tuple[float, float]:
    """The central ``confidence`` share of the bootstrap ``values`` (NaN ones left out)."""
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


def _macro_f1_from_counts(cm: np.ndarray) -> np.ndarray:
    """Macro F1 for a stack of confusion matrices (..., k, k)."""
    tp = np.diagonal(cm, axis1=-2, axis2=-1)
    denom = cm.sum(axis=-1) + cm.sum(axis=-2)
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(denom > 0, 2 * tp / denom, 0.0)
    return f1.mean(axis=-1)


def accuracy_macro_f1_intervals(y_true, y_pred, num_classes: int, samples: int = 1000, confidence: float = 0.95,
                                seed: int = 0) -> dict[str, tuple[float, float]]:
    """``{"accuracy": (low, high), "macro_f1": (low, high)}``: each resample's confusion matrix is
    counted at once (one ``bincount`` over all resamples), so a thousand resamples cost one pass."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    idx = resamples(len(y_true), samples, seed)
    codes = y_true[idx] * num_classes + y_pred[idx]
    offsets = np.arange(samples)[:, None] * num_classes**2
    counts = np.bincount((codes + offsets).ravel(), minlength=samples * num_classes**2)
    cms = counts.reshape(samples, num_classes, num_classes)
    stats = {"accuracy": np.trace(cms, axis1=1, axis2=2) / len(y_true), "macro_f1": _macro_f1_from_counts(cms)}
    return {name: percentile_interval(values, confidence) for name, values in stats.items()}


def macro_auc(y_true, probs) -> float:
    """Mean one-vs-rest ROC-AUC over the classes present with both outcomes (as ``metrics.roc_auc_table``)."""
    from sklearn.metrics import roc_auc_score

    y_true, probs = np.asarray(y_true), np.asarray(probs)
    present = [k for k in range(probs.shape[1]) if 0 < (y_true == k).sum() < len(y_true)]
    aucs = [roc_auc_score(y_true == k, probs[:, k]) for k in present]
    return float(np.mean(aucs)) if aucs else float("nan")


# Resamples x distinct scores counted at once by ``auc_by_resample``: about 16 MB of counts a block.
_AUC_BLOCK_CELLS = 2_000_000


def auc_by_resample(positive, scores, draws: np.ndarray) -> np.ndarray:
    """The ROC-AUC of ``scores`` for ``positive`` in each resample (each row of ``draws``), NaN where a
    resample lacks either outcome. It is the Mann-Whitney statistic with ties counted half, the area
    ``roc_auc_score`` computes: the images of every resample are counted by their rank among the
    distinct scores (one ``bincount``), so a thousand resamples cost a few passes, not a thousand
    sorts (14 s for the paper's 1,000 resamples of 1,600 images and 8 classes that way)."""
    positive, scores = np.asarray(positive, bool), np.asarray(scores)
    values, rank = np.unique(scores, return_inverse=True)
    width, found = len(values), []
    blocks = max(1, -(-len(draws) * width // _AUC_BLOCK_CELLS))  # rounded up
    for block in np.array_split(draws, blocks):
        codes = (np.arange(len(block))[:, None] * width + rank[block]).ravel()
        chosen = positive[block].ravel()
        pos, neg = (np.bincount(codes[mask], minlength=len(block) * width).reshape(len(block), width)
                    for mask in (chosen, ~chosen))
        below = np.cumsum(neg, axis=1) - neg  # negatives scored lower than each distinct score
        n_pos, n_neg = pos.sum(axis=1), neg.sum(axis=1)
        wins = (pos * (2 * below + neg)).sum(axis=1)  # twice the pairs a positive wins, ties once
        with np.errstate(invalid="ignore", divide="ignore"):
            found.append(np.where((n_pos > 0) & (n_neg > 0), wins / (2.0 * n_pos * n_neg), np.nan))
    return np.concatenate(found) if found else np.empty(0)


def macro_auc_interval(y_true, probs, samples: int, confidence: float, seed: int) -> tuple[float, float]:
    """Interval of ``macro_auc`` over the resamples: each resample's mean over the classes present in
    it with both outcomes, as ``macro_auc`` takes them."""
    y_true, probs = np.asarray(y_true), np.asarray(probs)
    draws = resamples(len(y_true), samples, seed)
    aucs = np.stack([auc_by_resample(y_true == k, probs[:, k], draws) for k in range(probs.shape[1])], axis=1)
    present = (~np.isnan(aucs)).sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        macro = np.where(present > 0, np.nansum(aucs, axis=1) / present, np.nan)
    return percentile_interval(macro, confidence)


def paired_difference_interval(first_correct, second_correct, samples: int, confidence: float,
                               seed: int) -> tuple[float, float]:
    """Interval of mean(first) - mean(second) over the same images resampled together (two models'
    right/wrong, or one model masked and unmasked)."""
    first, second = np.asarray(first_correct, float), np.asarray(second_correct, float)
    draws = resamples(len(first), samples, seed)
    return percentile_interval(first[draws].mean(axis=1) - second[draws].mean(axis=1), confidence)


def group_gap_interval(first_correct, second_correct, samples: int, confidence: float,
                       seed: int) -> tuple[float, float]:
    """Interval of mean(first) - mean(second) for two separate groups of images, each resampled on its own."""
    first, second = np.asarray(first_correct, float), np.asarray(second_correct, float)
    if not len(first) or not len(second):
        return float("nan"), float("nan")
    a = first[resamples(len(first), samples, seed)].mean(axis=1)
    b = second[resamples(len(second), samples, seed + 1)].mean(axis=1)
    return percentile_interval(a - b, confidence)


def statistic_interval(statistic, n: int, samples: int, confidence: float, seed: int) -> tuple[float, float]:
    """Interval of ``statistic(indices)`` over ``samples`` resamples of ``n`` images (for a metric
    without a vectorised bootstrap of its own)."""
    return percentile_interval([statistic(draw) for draw in resamples(n, samples, seed)], confidence)


def card_intervals(y_true, probs, samples: int, confidence: float, seed: int) -> dict[str, tuple[float, float]]:
    """Every metric of a model card with its interval over the validation images: accuracy, macro
    and weighted F1, macro ROC-AUC, ECE and Brier (the predicted class is the most probable one)."""
    from sklearn.metrics import f1_score

    from kvasir_utils.analysis import metrics  # metrics' calibration, on the same resamples

    y_true, probs = np.asarray(y_true), np.asarray(probs, float)
    y_pred = probs.argmax(axis=1)
    found = accuracy_macro_f1_intervals(y_true, y_pred, probs.shape[1], samples, confidence, seed)
    statistics = {
        "weighted_f1": lambda i: f1_score(y_true[i], y_pred[i], average="weighted", zero_division=0),
        "ece": lambda i: metrics.expected_calibration_error(y_true[i], probs[i]),
        "brier": lambda i: metrics.brier_score(y_true[i], probs[i]),
    }
    found |= {name: statistic_interval(f, len(y_true), samples, confidence, seed) for name, f in statistics.items()}
    return found | {"macro_auc": macro_auc_interval(y_true, probs, samples, confidence, seed)}
