"""Statistics across a sweep's runs: means and intervals per model and reading, the models compared
seed by seed, each reading against the paper's default reading, per-class F1.
"""

from __future__ import annotations

import itertools

import numpy as np
import pandas as pd

from kvasir_utils.analysis import metrics, stats
from kvasir_utils.analysis.runs import class_names, same_images

METRICS = ["accuracy", "macro_f1", "macro_auc"]
DEFAULT_READING = "profile's reading"
# A sweep's runs as the functions here take them (``run.sweep_aggregate.member_results``): one row a
# run, with its model, seed, reading, whether that is the profile's own reading, status, the
# metrics above and ``predictions``, the path of its predictions.csv.
PAIRED_COLUMNS = ["first", "second", "reading", "metric", "mean_difference", "sd", "ci_low", "ci_high", "n",
                  "paired_t_p", "sign_test_p", "seeds", "mcnemar_p_per_seed"]
ABLATION_COLUMNS = ["model", "reading", "default", "mean", "n", "difference_to_default", "ci_low", "ci_high",
                    "paired_n", "paired_t_p", "sign_test_p"]


def means_table(results: pd.DataFrame, confidence: float = 0.95) -> pd.DataFrame:
    """Per model and reading, each metric's mean, sd, t-interval and n over the finished runs."""
    finished = results[results["status"] == "finished"]
    return stats.summarize(finished, ["model", "reading"], METRICS, confidence)


def _predictions(run) -> pd.DataFrame:
    return pd.read_csv(run["predictions"])


def per_class_f1(results: pd.DataFrame) -> pd.DataFrame:
    """Per model, reading and class: F1 mean and sd over the finished runs."""
    rows = []
    for _, run in results[results["status"] == "finished"].iterrows():
        predictions = _predictions(run)
        classes = class_names(predictions)
        table = metrics.classification_table(predictions["true"], predictions["pred"], classes)
        for name, f1 in table["F1-Score"].iloc[: len(classes)].items():
            rows.append({"model": run["model"], "reading": run["reading"], "class": name, "f1": f1})
    frame = pd.DataFrame(rows, columns=["model", "reading", "class", "f1"])
    grouped = frame.groupby(["model", "reading", "class"], sort=False)["f1"]
    return grouped.agg(mean="mean", sd="std", n="count").reset_index()


def paired_table(results: pd.DataFrame, metric: str = "accuracy", confidence: float = 0.95) -> pd.DataFrame:
    """Every pair of models, per reading, paired by seed: the mean difference of ``metric`` with
    its t-interval, the paired t-test, the sign test, and McNemar's p-value of each seed's pair
    of runs (on the same validation images; not available when the split varies by seed)."""
    finished = results[results["status"] == "finished"].set_index(["model", "reading", "seed"]).sort_index()
    model_names = list(dict.fromkeys(results["model"]))
    rows = []
    for first, second in itertools.combinations(model_names, 2):
        for reading in dict.fromkeys(results["reading"]):
            seeds = sorted(set(finished.loc[(first, reading)].index) & set(finished.loc[(second, reading)].index)
                           if (first, reading) in finished.index and (second, reading) in finished.index else [])
            if not seeds:
                continue
            a = [finished.loc[(first, reading, s), metric] for s in seeds]
            b = [finished.loc[(second, reading, s), metric] for s in seeds]
            mcnemar = [_mcnemar_p(finished.loc[(first, reading, s)], finished.loc[(second, reading, s)])
                       for s in seeds]
            rows.append({"first": first, "second": second, "reading": reading, "metric": metric,
                         **stats.paired_difference(a, b, confidence), "seeds": " ".join(map(str, seeds)),
                         "mcnemar_p_per_seed": " ".join(f"{p:.3g}" for p in mcnemar)})
    return pd.DataFrame(rows, columns=PAIRED_COLUMNS)


def _mcnemar_p(first, second) -> float:
    a, b = _predictions(first), _predictions(second)
    if not same_images(a, b):
        return float("nan")  # different validation images (the split varies with the seed)
    return metrics.mcnemar_of_runs(a, b)["p_value"]


def ablation_table(results: pd.DataFrame, metric: str = "accuracy", confidence: float = 0.95) -> pd.DataFrame:
    """Per model and reading: the mean of ``metric`` and its difference to the profile's own
    (the paper's default) reading, paired by seed, with the t-interval of that difference."""
    finished = results[results["status"] == "finished"]
    rows = []
    for model, runs in finished.groupby("model", sort=False):
        default = runs[runs["default_reading"]].set_index("seed")[metric]
        for reading, part in runs.groupby("reading", sort=False):
            values = part.set_index("seed")[metric]
            seeds = sorted(set(values.index) & set(default.index))
            is_default = bool(part["default_reading"].iloc[0])
            difference = stats.paired_difference(values[seeds], default[seeds], confidence) \
                if seeds and not is_default else {}
            rows.append({"model": model, "reading": reading, "default": is_default,
                         "mean": values.mean(), "n": len(values),
                         "difference_to_default": difference.get("mean_difference", np.nan),
                         "ci_low": difference.get("ci_low", np.nan), "ci_high": difference.get("ci_high", np.nan),
                         "paired_n": difference.get("n", 0), "paired_t_p": difference.get("paired_t_p", np.nan),
                         "sign_test_p": difference.get("sign_test_p", np.nan)})
    return pd.DataFrame(rows, columns=ABLATION_COLUMNS)
