"""How much of each score survives an honest split: a ``leakage`` sweep's runs (each backbone on a
random split, on a near-duplicate-grouped split, and grouped with the guide box masked, over seeds)
as means with intervals across seeds, and each split's difference to the random one, paired by seed.

A sweep is a leakage sweep when its named readings are the splits of ``SPLITS`` (at least ``random``
and ``grouped``); ``run.sweep_aggregate.member_results`` gives the runs, one row each.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from kvasir_utils.analysis import stats

RANDOM, GROUPED, GROUPED_MASKED = "random", "grouped", "grouped-masked"
SPLITS = (RANDOM, GROUPED, GROUPED_MASKED)
# Said once, shown on the page from here.
DIFFERENCE = "split - random, paired by seed (negative: the random split flattered the score)"
# leakage.csv: the accuracy columns first (what another study compares), then the rest.
COLUMNS = ["model", "split", "mean", "ci_low", "ci_high", "n", "macro_f1_mean", "macro_f1_ci_low",
           "macro_f1_ci_high", "pairs_across_split", "trainable_parameters", "train_seconds"]
SURVIVAL_COLUMNS = ["model", "split", "metric", "random_mean", "split_mean", "difference", "ci_low", "ci_high",
                    "n", "survives"]


def is_leakage_sweep(readings) -> bool:
    """Whether a sweep's readings are the leakage sweep's splits."""
    return {RANDOM, GROUPED} <= set(readings) <= set(SPLITS)


def _finished(results: pd.DataFrame) -> pd.DataFrame:
    return results[(results["status"] == "finished") & results["reading"].isin(SPLITS)]


def leakage_table(results: pd.DataFrame, confidence: float = 0.95) -> pd.DataFrame:
    """Per backbone and split: accuracy (``mean``, ``ci_low``, ``ci_high``, ``n`` runs) and macro
    F1 with t-intervals across seeds, the near-duplicate pairs across the split, the parameters
    the final stage trains and the training time in seconds, each a mean over the runs."""
    rows = []
    for (model, split), runs in _finished(results).groupby(["model", "reading"], sort=False):
        accuracy, f1 = stats.t_interval(runs["accuracy"], confidence), stats.t_interval(runs["macro_f1"], confidence)
        accuracy_ci = stats.clip_interval(accuracy["ci_low"], accuracy["ci_high"])
        f1_ci = stats.clip_interval(f1["ci_low"], f1["ci_high"])
        rows.append({"model": model, "split": split, "mean": accuracy["mean"], "ci_low": accuracy_ci[0],
                     "ci_high": accuracy_ci[1], "n": accuracy["n"], "macro_f1_mean": f1["mean"],
                     "macro_f1_ci_low": f1_ci[0], "macro_f1_ci_high": f1_ci[1],
                     "pairs_across_split": runs["pairs_across_split"].mean(),
                     "trainable_parameters": runs["trainable_parameters"].mean(),
                     "train_seconds": runs["train_seconds"].mean()})
    order = {split: k for k, split in enumerate(SPLITS)}
    table = pd.DataFrame(rows, columns=COLUMNS)
    return table.sort_values(["model", "split"], key=lambda c: c.map(order) if c.name == "split" else c,
                             kind="stable").reset_index(drop=True)


def survival_table(results: pd.DataFrame, confidence: float = 0.95) -> pd.DataFrame:
    """Per backbone, split other than random and metric (accuracy, macro F1): the difference to the
    random split (``DIFFERENCE``) paired by seed, with its t-interval, and ``survives``, the share
    of the random split's mean that the honest split keeps."""
    finished = _finished(results)
    rows = []
    for model, runs in finished.groupby("model", sort=False):
        random = runs[runs["reading"] == RANDOM].set_index("seed")
        for split in SPLITS[1:]:
            other = runs[runs["reading"] == split].set_index("seed")
            seeds = sorted(set(random.index) & set(other.index))
            if not seeds:
                continue
            for metric in ("accuracy", "macro_f1"):
                difference = stats.paired_difference(other.loc[seeds, metric], random.loc[seeds, metric], confidence)
                low, high = stats.clip_interval(difference["ci_low"], difference["ci_high"], stats.DIFFERENCE_BOUNDS)
                random_mean, split_mean = random.loc[seeds, metric].mean(), other.loc[seeds, metric].mean()
                rows.append({"model": model, "split": split, "metric": metric, "random_mean": random_mean,
                             "split_mean": split_mean, "difference": difference["mean_difference"], "ci_low": low,
                             "ci_high": high, "n": difference["n"],
                             "survives": split_mean / random_mean if random_mean else np.nan})
    return pd.DataFrame(rows, columns=SURVIVAL_COLUMNS)


def survival_sentences(survival: pd.DataFrame, confidence: float = 0.95) -> list[str]:
    """Each backbone's accuracy on the honest splits against the random one, in words."""
    sentences = []
    for row in survival[survival["metric"] == "accuracy"].itertuples():
        interval = (f"no interval: fewer than {stats.MIN_RUNS} paired runs" if row.n < stats.MIN_RUNS
                    or np.isnan(row.ci_low) else
                    f"{confidence:.0%} interval [{100 * row.ci_low:+.1f}, {100 * row.ci_high:+.1f}] points")
        sentences.append(f"{row.model}, {row.split} split: accuracy {row.split_mean:.1%} against {row.random_mean:.1%} "
                         f"on the random split, {100 * row.difference:+.1f} points ({interval}, {row.n} seed(s)); "
                         f"{row.survives:.0%} of the random split's score survives.")
    return [*sentences, f"Differences are {DIFFERENCE}."]
