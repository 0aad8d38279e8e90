"""Tables shaped for a reader (the summary card, the comparison with its intervals, Table 2 as row
percentages beside the paper's, the readings with this run's departures): numbers in the house
style (``formats``) as text, ready for ``outputs.table_html``."""

from __future__ import annotations

import pandas as pd

from kvasir_utils.analysis import departures, paper, stats
from kvasir_utils.config import Config
from kvasir_utils.report import formats

TOO_FEW_RUNS = "too few runs for an interval"  # below stats.MIN_RUNS runs
# The head-to-head row's gaps in hundredths of a point: its difference is computed from unrounded
# values, and at two decimals a reader who recomputes it from the shown gaps lands within 0.01.
CARD_KIND = {"accuracy": "percent", "macro_f1": "score", "macro_auc": "score", "beats": "fine points"}


def card(claims: pd.DataFrame) -> pd.DataFrame:
    """``analysis.verdicts.claims_table`` as the reader sees it: each row in its own kind of number."""
    from kvasir_utils.analysis.verdicts import CLAIMS

    kinds = {c.words: CARD_KIND["beats" if c.other else c.metric] for c in CLAIMS}
    rows = []
    for row in claims.itertuples():
        kind = kinds.get(row.claim, "score")
        difference_kind = {"percent": "points", "score": "signed score"}.get(kind, kind)
        rows.append({"claim": row.claim, "paper": formats.number(row.paper, kind, formats.NOT_REPORTED),
                     "this run": formats.number(row.run, kind, "not run"),
                     "interval": formats.interval(row.ci_low, row.ci_high, kind) or "none",
                     "difference": formats.number(row.difference, difference_kind, "none"),
                     "runs": formats.number(row.n, "count"), "verdict": row.verdict,
                     "what the interval covers": row.basis if isinstance(row.basis, str) else "nothing was run",
                     "the audit": row.audit if isinstance(row.audit, str) and row.audit else "(on accuracy only)"})
    shown = pd.DataFrame(rows)
    return shown if claims["audit"].fillna("").astype(bool).any() else shown.drop(columns="the audit")


def comparison(table: pd.DataFrame) -> pd.DataFrame:
    """``analysis.compare.comparison_table`` with each value beside its interval and the paper's."""
    rows = []
    for model, row in table.iterrows():
        rows.append({
            "model": formats.model_name(model),
            "accuracy": f"{formats.number(row['accuracy'], 'percent')} "
                        f"{formats.interval(row['accuracy_ci_low'], row['accuracy_ci_high'], 'percent')}",
            "accuracy (paper)": formats.number(row["accuracy_paper"], "percent", formats.NOT_REPORTED),
            "macro F1": f"{formats.number(row['macro_f1'])} "
                        f"{formats.interval(row['macro_f1_ci_low'], row['macro_f1_ci_high'])}",
            "macro F1 (paper)": formats.number(row["macro_f1_paper"], "score", formats.NOT_REPORTED),
            "macro ROC-AUC": formats.number(row["macro_auc"]),
            "macro ROC-AUC (paper)": formats.number(row["macro_auc_paper"], "score", formats.NOT_REPORTED),
            "ECE": formats.number(row["ece"]), "Brier": formats.number(row["brier"]),
            "parameters": f"{row['parameters_m']:.1f} M", "GFLOPs / image": f"{row['gflops']:.2f}",
            "training time": f"{row['train_seconds']:.0f} s",
            "inference": f"{row['inference_images_per_s']:.0f} images/s",
            "validation images": formats.number(row["images"], "count"),
        })
    return pd.DataFrame(rows)


def paper_heading(table: str, what: str, name: str, reported: bool) -> str:
    """A heading that names the paper's table only where the paper has it for this model."""
    if reported:
        return f"{table} (paper): {what}"
    return f"{what[0].upper()}{what[1:]} (the paper reports no such table for {name})"


# Table 1 beside the paper's in two tables of a few columns each, so each fits a 1280 px window
TABLE1_GROUPS = {"precision and recall": ("Precision", "Recall"),
                 "F1, specificity and support": ("F1-Score", "Specificity", "Support")}


def table1_parts(ours: pd.DataFrame, reported: pd.DataFrame | None, name: str) -> list[tuple[pd.DataFrame, str]]:
    """Table 1 as (table, caption) pairs: this run's alone where the paper has none for the model,
    else paper, this run and the difference per metric, split by ``TABLE1_GROUPS`` (the support's
    difference is left out: the two validation sets need not have the same size)."""
    if reported is None:
        return [(ours, f"{name}: per-class precision, recall, F1, specificity and support of this run")]
    both = paper.side_by_side(ours, reported).drop(columns=[("Support", "difference")], errors="ignore")
    parts = []
    for i, (words, group) in enumerate(TABLE1_GROUPS.items(), 1):
        parts.append((both[[c for c in both.columns if c[0] in group]],
                      f"{name}, Table 1 ({i} of {len(TABLE1_GROUPS)}): {words}, the paper beside this run"))
    return parts


COMPARISON_PARTS = {"how well": ["model", "accuracy", "accuracy (paper)", "macro F1", "macro F1 (paper)",
                                 "macro ROC-AUC", "macro ROC-AUC (paper)", "ECE", "Brier"],
                    "what it costs": ["model", "parameters", "GFLOPs / image", "training time", "inference",
                                      "validation images"]}


def comparison_parts(table: pd.DataFrame) -> list[tuple[pd.DataFrame, str]]:
    """``comparison`` as two (table, caption) pairs that each fit the page: how well, what it costs."""
    shown = comparison(table)
    return [(shown[columns], f"Each model against the paper: {what}") for what, columns in COMPARISON_PARTS.items()]


def table2_percentages(confusion: pd.DataFrame) -> pd.DataFrame:
    """A confusion matrix as row percentages with the counts: ``93.1% (189)``."""
    totals = confusion.sum(axis=1).replace(0, 1)
    return pd.DataFrame({column: [f"{formats.number(count / total, 'percent')} ({formats.number(count, 'count')})"
                                  for count, total in zip(confusion[column], totals)]
                         for column in confusion.columns}, index=confusion.index)


def table2_parts(ours: pd.DataFrame, reported: pd.DataFrame | None, name: str) -> list[tuple[pd.DataFrame, str]]:
    """Table 2 as row percentages (counts in brackets), as (table, caption) pairs: the paper's, where
    it has one, then this run's, each a table of its own that fits the page; comparing shares, since
    the two validation sets need not have the same size."""
    parts = [(table2_percentages(ours), f"{name}, this run")]
    if reported is not None and list(reported.index) == list(ours.index):
        parts.insert(0, (table2_percentages(reported), f"{name}, the paper's Table 2"))
    return [(table.rename_axis("true \\ predicted"), f"{caption}: row percentages (counts), the true class by row")
            for table, caption in parts]


def readings(table: pd.DataFrame, cfg: Config) -> pd.DataFrame:
    """``analysis.paper.readings_table`` with the readings this run departs from marked."""
    departed = set(departures.departures(cfg)["setting"])
    marked = table.copy()
    marked["value"] = [formats.setting(v, s) + (" (departs from the paper)" if s in departed else "")
                       for s, v in zip(table["setting"], table["value"])]
    return marked


def departures_table(cfg: Config) -> pd.DataFrame:
    """Every setting of this run that differs from the paper's protocol, for the index."""
    found = departures.departures(cfg)
    return pd.DataFrame({"setting": found["setting"],
                         "paper": [formats.setting(v, s) for s, v in zip(found["setting"], found["paper"])],
                         "this run": [formats.setting(v, s) for s, v in zip(found["setting"], found["run"])],
                         "affects": [", ".join(p) if p else "no notebook: shown in the reports only"
                                     for p in found["pages"]],
                         "comparability": ["shown only" if n else "departs from the protocol"
                                           for n in found["neutral"]]})


def sweep_summary(summary: pd.DataFrame) -> pd.DataFrame:
    """``analysis.sweeps.means_table`` for a reader: mean +- sd and the interval across runs, kept
    inside the metric's bounds, or ``TOO_FEW_RUNS`` below ``stats.MIN_RUNS`` runs."""
    rows = []
    for row in summary.itertuples():
        kind = formats.kind_of(row.metric)
        if row.n < stats.MIN_RUNS:
            span = TOO_FEW_RUNS
        else:
            span = formats.interval(*stats.clip_interval(row.ci_low, row.ci_high, stats.SHARE_BOUNDS), kind)
        rows.append({"model": formats.model_name(row.model), "reading": row.reading, "metric": row.metric,
                     "mean": formats.number(row.mean, kind), "sd": formats.number(row.sd, kind, "none"),
                     "interval across runs": span, "runs": formats.number(row.n, "count")})
    return pd.DataFrame(rows)


def sweep_paired(paired: pd.DataFrame) -> pd.DataFrame:
    """``analysis.sweeps.paired_table`` for a reader: the mean difference (first - second) in points
    with its interval (or too few runs), and a verdict in words."""
    rows = []
    for row in paired.itertuples():
        if row.n < stats.MIN_RUNS:
            span, verdict = TOO_FEW_RUNS, "too few runs to tell"
        else:
            low, high = stats.clip_interval(row.ci_low, row.ci_high, stats.DIFFERENCE_BOUNDS)
            span = formats.interval(low, high, "points")
            verdict = "the first is better" if low > 0 else "the second is better" if high < 0 else \
                "the runs cannot tell them apart"
        rows.append({"first": formats.model_name(row.first), "second": formats.model_name(row.second),
                     "reading": row.reading, "difference": formats.number(row.mean_difference, "points"),
                     "interval": span, "runs": formats.number(row.n, "count"), "verdict": verdict,
                     "sign test p": formats.number(row.sign_test_p, "p", "none"),
                     "McNemar p per seed": formats.signed(str(row.mcnemar_p_per_seed))
                     if isinstance(row.mcnemar_p_per_seed, str) and row.mcnemar_p_per_seed else "none"})
    return pd.DataFrame(rows)


def sweep_ablation(ablation: pd.DataFrame) -> pd.DataFrame:
    """``analysis.sweeps.ablation_table`` for a reader: each reading's mean accuracy and its difference
    to the profile's own reading in points, paired by seed, with the interval and the tests (or why
    there is none)."""
    rows = []
    for row in ablation.itertuples():
        own = bool(row.default)
        if own:
            difference = span = tests = "the profile's own reading: the baseline"
        elif row.paired_n < stats.MIN_RUNS:
            difference = formats.number(row.difference_to_default, "points", "no run pairs with it")
            span, tests = TOO_FEW_RUNS, f"too few paired runs ({formats.number(row.paired_n, 'count')})"
        else:
            low, high = stats.clip_interval(row.ci_low, row.ci_high, stats.DIFFERENCE_BOUNDS)
            span = formats.interval(low, high, "points")
            difference = formats.number(row.difference_to_default, "points")
            tests = (f"paired t p = {formats.number(row.paired_t_p, 'p', 'none')}; "
                     f"sign test p = {formats.number(row.sign_test_p, 'p', 'none')}")
        rows.append({"model": formats.model_name(row.model), "reading": row.reading,
                     "mean accuracy": formats.number(row.mean, "percent"), "runs": formats.number(row.n, "count"),
                     "difference to the profile's reading": difference, "interval": span,
                     "seed pairs": formats.number(row.paired_n, "count"), "tests": tests})
    return pd.DataFrame(rows)


def leakage_summary(table: pd.DataFrame) -> pd.DataFrame:
    """``analysis.leakage.leakage_table`` for a reader: per backbone and split, accuracy and macro F1
    with their intervals across seeds (or ``TOO_FEW_RUNS``), pairs across the split, trainable
    parameters and training time."""
    rows = []
    for row in table.itertuples():
        few = row.n < stats.MIN_RUNS
        rows.append({"model": formats.model_name(row.model), "split": row.split,
                     "accuracy": formats.number(row.mean, "percent"),
                     "accuracy interval": TOO_FEW_RUNS if few else formats.interval(row.ci_low, row.ci_high, "percent"),
                     "macro F1": formats.number(row.macro_f1_mean, "score"),
                     "macro F1 interval": TOO_FEW_RUNS if few else formats.interval(
                         row.macro_f1_ci_low, row.macro_f1_ci_high, "score"),
                     "runs": formats.number(row.n, "count"),
                     "near-duplicate pairs across the split":
                         formats.number(row.pairs_across_split, "count", "not recorded"),
                     "trainable parameters": formats.number(row.trainable_parameters, "count"),
                     "training seconds per run": formats.number(row.train_seconds, "count")})
    return pd.DataFrame(rows)


def leakage_survival(survival: pd.DataFrame) -> pd.DataFrame:
    """``analysis.leakage.survival_table`` for a reader: each honest split against the random one,
    paired by seed, in points (accuracy) or score (macro F1), and the share that survives."""
    rows = []
    for row in survival.itertuples():
        kind = "points" if row.metric == "accuracy" else "signed score"
        shown = "percent" if row.metric == "accuracy" else "score"
        rows.append({"model": formats.model_name(row.model), "split": row.split, "metric": row.metric,
                     "random split": formats.number(row.random_mean, shown),
                     "this split": formats.number(row.split_mean, shown),
                     "difference": formats.number(row.difference, kind),
                     "interval": TOO_FEW_RUNS if row.n < stats.MIN_RUNS
                     else formats.interval(row.ci_low, row.ci_high, kind),
                     "paired runs": formats.number(row.n, "count"),
                     "share that survives": formats.number(row.survives, "percent", "no score to compare")})
    return pd.DataFrame(rows)
