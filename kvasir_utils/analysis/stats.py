"""Statistics across runs: means with t-intervals, paired differences, paired t and sign tests.

Pure computation on the numbers it is given (scipy.stats), so it can be checked by hand. A run
is one value; ``n`` is the number of runs, never the number of images.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

# scipy.stats is imported in the functions that use it, not with the module
# (docs/architecture.md: the direction of imports).

SUMMARY_COLUMNS = ["mean", "sd", "ci_low", "ci_high", "n"]
# The fewest runs whose interval across runs the pages show: with two, t(0.975, 1) = 12.7 makes the
# interval many times wider than the spread, and it says nothing a reader can use.
MIN_RUNS = 3
SHARE_BOUNDS = (0.0, 1.0)  # accuracy, F1, ROC-AUC: shares and scores
DIFFERENCE_BOUNDS = (-1.0, 1.0)  # one of those minus another


def clip_interval(low: float, high: float, bounds: tuple[float, float] = SHARE_BOUNDS) -> tuple[float, float]:
    """An interval kept inside the bounds of what it estimates (a t-interval of a mean near 1 can
    reach past 1, which no accuracy can); a missing end (NaN) stays missing."""
    return tuple(float(np.clip(v, *bounds)) if not math.isnan(v) else v for v in (low, high))


def t_interval(values, confidence: float = 0.95) -> dict:
    """Mean, sample standard deviation and the two-sided Student-t interval of the mean.

    With one value the spread is unknown: sd and the interval are NaN (never zero)."""
    from scipy import stats as sps

    values = np.asarray(values, float)
    values = values[~np.isnan(values)]
    n = len(values)
    mean = float(values.mean()) if n else math.nan
    if n < 2:
        return {"mean": mean, "sd": math.nan, "ci_low": math.nan, "ci_high": math.nan, "n": n}
    sd = float(values.std(ddof=1))
    if sd == 0:
        return {"mean": mean, "sd": 0.0, "ci_low": mean, "ci_high": mean, "n": n}
    low, high = sps.t.interval(confidence, n - 1, loc=mean, scale=sps.sem(values))
    return {"mean": mean, "sd": sd, "ci_low": float(low), "ci_high": float(high), "n": n}


def summarize(runs: pd.DataFrame, by: list[str], metrics: list[str], confidence: float = 0.95) -> pd.DataFrame:
    """One row per group and metric: ``by..., metric, mean, sd, ci_low, ci_high, n``."""
    rows = []
    for key, group in runs.groupby(by, sort=False):
        key = key if isinstance(key, tuple) else (key,)
        for metric in metrics:
            rows.append({**dict(zip(by, key)), "metric": metric, **t_interval(group[metric], confidence)})
    return pd.DataFrame(rows, columns=[*by, "metric", *SUMMARY_COLUMNS])


def sign_test(differences) -> float:
    """Two-sided exact sign test: are positive and negative differences equally likely? Ties
    (zero differences) are left out; with no non-zero difference the p-value is 1."""
    from scipy import stats as sps

    differences = np.asarray(differences, float)
    positive, negative = int((differences > 0).sum()), int((differences < 0).sum())
    if positive + negative == 0:
        return 1.0
    return float(sps.binomtest(positive, positive + negative, 0.5).pvalue)


def paired_difference(first, second, confidence: float = 0.95) -> dict:
    """``first - second`` over pairs (the same seed): mean difference with its t-interval, the
    paired t-test and the sign test. NaN pairs are dropped."""
    from scipy import stats as sps

    first, second = np.asarray(first, float), np.asarray(second, float)
    keep = ~(np.isnan(first) | np.isnan(second))
    differences = first[keep] - second[keep]
    interval = t_interval(differences, confidence)
    if len(differences) >= 2 and np.ptp(differences) > 0:
        test = sps.ttest_rel(first[keep], second[keep])
        t_p = float(test.pvalue)
        interval["ci_low"], interval["ci_high"] = map(float, test.confidence_interval(confidence))
    else:
        t_p = math.nan  # no spread: the t-test is undefined
    return {"mean_difference": interval["mean"], "sd": interval["sd"], "ci_low": interval["ci_low"],
            "ci_high": interval["ci_high"], "n": interval["n"], "paired_t_p": t_p,
            "sign_test_p": sign_test(differences)}
