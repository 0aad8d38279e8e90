"""How to read the comparisons of this run's models: against each other on one run's validation
images (notebook 05) and across the runs of a sweep (notebook 06). The sentences that follow the
outputs and close the notebooks, as ``readings`` writes them for one model's outputs."""

from __future__ import annotations

import numpy as np
import pandas as pd

from kvasir_utils.analysis import stats
from kvasir_utils.report.formats import model_name, number
from kvasir_utils.report.tables import TOO_FEW_RUNS


def _pct(value) -> str:
    return number(value, "percent")


def _count(value) -> str:
    return number(value, "count")


# -- 05: the models side by side ----------------------------------------------------------------
def comparison_reading(comparison: pd.DataFrame, confidence: float) -> list[str]:
    """``compare.comparison_table``: which model leads on accuracy, and whether the two best models'
    bootstrap intervals overlap."""
    ranked = comparison.sort_values("accuracy", ascending=False)
    if ranked.empty:
        return ["No model is evaluated yet (notebook 04 evaluates each model)."]
    if len(ranked) < 2:
        return [f"Only {model_name(ranked.index[0])} is evaluated: nothing to compare yet (notebook 04 evaluates "
                "each model)."]
    a, b = ranked.iloc[0], ranked.iloc[1]
    first, second = model_name(ranked.index[0]), model_name(ranked.index[1])
    if a["accuracy"] == b["accuracy"]:
        sentences = [f"{first} and {second} have the same accuracy, {_pct(a['accuracy'])}."]
    else:
        sentences = [f"{first} has the higher accuracy, {_pct(a['accuracy'])} against {second}'s "
                     f"{_pct(b['accuracy'])} ({number(a['accuracy'] - b['accuracy'], 'points')})."]
    if len(ranked) > 2:
        sentences.append("By accuracy: " + ", ".join(f"{model_name(m)} {_pct(v)}"
                                                     for m, v in ranked["accuracy"].items()) + ".")
    bounds = [a["accuracy_ci_low"], a["accuracy_ci_high"], b["accuracy_ci_low"], b["accuracy_ci_high"]]
    if not np.isnan(np.asarray(bounds, float)).any():
        overlap = a["accuracy_ci_low"] <= b["accuracy_ci_high"] and b["accuracy_ci_low"] <= a["accuracy_ci_high"]
        sentences.append(f"Their {confidence:.0%} intervals " + (
            "overlap: these validation images alone may not separate them; McNemar's test below compares them "
            "image by image." if overlap else
            "do not overlap: the difference is larger than the resampling noise of these validation images."))
    return sentences


def comparison_conclusions(comparison: pd.DataFrame, tests: pd.DataFrame) -> str:
    """Notebook 05's close: the gap between the first two models against the paper's gap, and
    whether McNemar's test can tell them apart."""
    if len(comparison) < 2:
        return "One model evaluated: no comparison to conclude."
    first, second = comparison.index[:2]
    gap = comparison.loc[first, "accuracy"] - comparison.loc[second, "accuracy"]
    paper_gap = comparison.loc[first, "accuracy_paper"] - comparison.loc[second, "accuracy_paper"]
    paper = "" if np.isnan(paper_gap) else f" (the paper: {number(paper_gap, 'points')})"
    text = (f"On this run, {model_name(first)} minus {model_name(second)} is {number(gap, 'points')} "
            f"of accuracy{paper}.")
    pair = tests[(tests["first"] == first) & (tests["second"] == second)]
    if len(pair):
        p = pair["p_value"].iloc[0]
        text += (f" McNemar's p = {number(p, 'p')}: " + ("the two differ by more than chance on these images."
                                                         if p < 0.05 else "these images cannot tell them apart."))
    return text


# -- 06: across runs ----------------------------------------------------------------------------
def _reading_words(reading: str, readings) -> str:
    return f" ({reading})" if len(set(readings)) > 1 else ""


def sweep_reading(summary: pd.DataFrame, confidence: float) -> list[str]:
    """``sweeps.means_table``'s accuracy rows: the highest mean with its interval across runs, how
    much runs of one model vary, and which groups have too few runs for an interval."""
    rows = summary[summary["metric"] == "accuracy"].reset_index(drop=True)
    if rows.empty or rows["mean"].isna().all():
        return ["No finished run: nothing to summarise."]
    top = rows.loc[rows["mean"].idxmax()]
    span = (f"{confidence:.0%} interval [{_pct(top['ci_low'])}, {_pct(top['ci_high'])}]"
            if top["n"] >= stats.MIN_RUNS and not np.isnan(top["ci_low"]) else TOO_FEW_RUNS)
    sentences = [f"Highest mean accuracy: {model_name(top['model'])}{_reading_words(top['reading'], rows['reading'])}, "
                 f"{_pct(top['mean'])} over {_count(top['n'])} run{'' if top['n'] == 1 else 's'} ({span})."]
    sds = rows["sd"].dropna()
    if len(sds):
        sentences.append(f"From run to run accuracy varies with a standard deviation of {_pct(sds.min())}"
                         + (f" to {_pct(sds.max())}" if sds.max() > sds.min() else "")
                         + ": the spread a single run's number hides.")
    few = int((rows["n"] < stats.MIN_RUNS).sum())
    if few:
        sentences.append(f"{few} of {len(rows)} groups have fewer than {stats.MIN_RUNS} runs: {TOO_FEW_RUNS}.")
    return sentences


def paired_reading(paired: pd.DataFrame, confidence: float) -> list[str]:
    """``sweeps.paired_table``: per pair of models (and reading), the mean difference by seed and
    whether its interval excludes zero."""
    if paired.empty:
        return ["No two models share a seed: nothing is paired."]
    sentences = []
    for row in paired.head(3).itertuples():
        a, b = model_name(row.first), model_name(row.second)
        head = (f"{a} minus {b}{_reading_words(row.reading, paired['reading'])}: "
                f"{number(row.mean_difference, 'points')} over {_count(row.n)} seed{'' if row.n == 1 else 's'}")
        if row.n < stats.MIN_RUNS or np.isnan(row.ci_low):
            sentences.append(f"{head}; {TOO_FEW_RUNS}.")
            continue
        span = f"{confidence:.0%} interval [{number(row.ci_low, 'points')}, {number(row.ci_high, 'points')}]"
        verdict = (f": {a if row.ci_low > 0 else b} is ahead" if row.ci_low > 0 or row.ci_high < 0
                   else ", which contains zero: the runs cannot tell them apart")
        sentences.append(f"{head}, {span}{verdict}.")
    if len(paired) > 3:
        sentences.append(f"{len(paired) - 3} more pairs in the table.")
    return sentences


def ablation_reading(ablation: pd.DataFrame, confidence: float) -> str:
    """``sweeps.ablation_table``: the readings whose paired interval against the profile's own
    reading excludes zero, or that none does."""
    others = ablation[~ablation["default"].astype(bool)]
    if others.empty:
        return "This sweep varies no reading of the paper: every run uses the profile's own."
    judged = others[(others["paired_n"] >= stats.MIN_RUNS) & others["ci_low"].notna()]
    if judged.empty:
        return f"No reading has {stats.MIN_RUNS} seeds paired with the profile's own: {TOO_FEW_RUNS}."
    moved = judged[(judged["ci_low"] > 0) | (judged["ci_high"] < 0)]
    if moved.empty:
        return (f"No reading moves accuracy beyond its {confidence:.0%} interval ({len(judged)} judged): these runs "
                "cannot tell the readings apart.")
    return (f"{len(moved)} of {len(judged)} readings move accuracy beyond their {confidence:.0%} interval: "
            + "; ".join(f"{model_name(row.model)} with {row.reading}, {number(row.difference_to_default, 'points')}"
                        for row in moved.itertuples()) + ".")


def sweep_conclusions(results: pd.DataFrame) -> str:
    """Notebook 06's close: how many runs finished, and which did not."""
    finished = results["status"] == "finished"
    text = f"{_count(finished.sum())} of {_count(len(results))} runs finished"
    if not finished.all():
        text += "; not finished: " + ", ".join(f"{row.member} ({row.status})"
                                               for row in results[~finished].itertuples())
    return text + "; every number above is over the finished runs only."
