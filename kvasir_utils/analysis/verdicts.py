"""Did the run reproduce the paper? One row per claim of the paper: the paper's value, this run's
(or a sweep's mean over seeds), its interval, the difference, how many runs stand behind it and a
verdict in words.

Verdicts: *consistent with the paper* (the paper's value lies inside the interval), *below the
paper* / *above the paper* (the whole interval lies on one side of it), *not comparable* (generated
data, another dataset than Kvasir v2, or settings that depart from the paper's protocol), *too few
runs to tell* (a sweep of fewer than ``stats.MIN_RUNS`` runs gives no interval).

Each row's ``basis`` says what its interval covers: one run's validation images resampled (so not
the variance from one training run to the next: ``sweep_command`` names the sweep that adds it), or
the runs of a sweep over seeds. Each accuracy claim carries the audit's word on what may inflate it
(``audit_words``)."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from kvasir_utils import artefacts, profiles
from kvasir_utils.analysis import audit, departures, intervals, metrics, paper, stats
from kvasir_utils.analysis.runs import same_images
from kvasir_utils.config import CONFIG_DIR, Config, ConfigError
from kvasir_utils.files import write_json_atomic

CARD_COLUMNS = ["claim", "paper", "run", "ci_low", "ci_high", "difference", "n", "basis", "verdict", "audit"]
ONE_RUN = ("this run only: a {level} bootstrap interval over its {images} validation images; the variance from one "
           "training run (seed) to the next is not in it")


@dataclass(frozen=True)
class Claim:
    words: str
    model: str
    metric: str  # accuracy, macro_f1, macro_auc; "beats" compares model with other by accuracy
    other: str | None = None

    @property
    def paper_value(self) -> float:
        reported = paper.MODELS.get(self.model, {})
        if self.other is not None:
            return reported.get("accuracy", math.nan) - paper.MODELS.get(self.other, {}).get("accuracy", math.nan)
        return reported.get(self.metric, math.nan)


CLAIMS = [
    Claim("ResNet50 accuracy", "resnet50", "accuracy"),
    Claim("ResNet50 macro F1", "resnet50", "macro_f1"),
    Claim("ResNet50 macro ROC-AUC", "resnet50", "macro_auc"),
    Claim("EfficientNet-B0 accuracy", "efficientnet_b0", "accuracy"),
    Claim("EfficientNet-B0 macro F1", "efficientnet_b0", "macro_f1"),
    Claim("ResNet50 beats EfficientNet-B0 (accuracy difference)", "resnet50", "beats", "efficientnet_b0"),
]


def verdict(paper_value: float, low: float, high: float, not_comparable: str | None) -> str:
    if not_comparable:
        return f"not comparable: {not_comparable}"
    if math.isnan(low) or math.isnan(high):
        return "too few runs to tell"
    if low <= paper_value <= high:
        return "consistent with the paper"
    return "above the paper" if paper_value < low else "below the paper"


def _single_run(cfg: Config, claim: Claim, evaluations: dict) -> dict | None:
    """This run's value and its bootstrap interval over the validation images (None: not evaluated)."""
    samples, confidence, seed = cfg.eval.bootstrap_samples, cfg.eval.confidence, cfg.eval.seed
    if claim.model not in evaluations or (claim.other and claim.other not in evaluations):
        return None
    record, predictions = evaluations[claim.model]
    n_images = len(predictions)
    basis = ONE_RUN.format(level=f"{confidence:.0%}", images=n_images)
    if claim.other is not None:
        theirs = evaluations[claim.other][1]
        if not same_images(predictions, theirs):
            return None
        ours_right, theirs_right = (p["true"] == p["pred"] for p in (predictions, theirs))
        low, high = intervals.paired_difference_interval(ours_right, theirs_right, samples, confidence, seed)
        value = float(ours_right.mean() - theirs_right.mean())
        p = metrics.mcnemar_of_runs(predictions, theirs)["p_value"]
        accuracies = record["accuracy"], evaluations[claim.other][0]["accuracy"]
        return {"run": value, "ci_low": low, "ci_high": high, "n": 1,
                "basis": f"{basis}; McNemar p = {p:.2g}; {_gaps_words(claim, accuracies)}"}
    if claim.metric == "macro_auc":
        probs = predictions[artefacts.probability_columns(cfg.classes)].to_numpy()
        low, high = intervals.macro_auc_interval(predictions["true"], probs, samples, confidence, seed)
    else:
        ci = intervals.accuracy_macro_f1_intervals(predictions["true"], predictions["pred"], len(cfg.classes),
                                                   samples, confidence, seed)
        low, high = ci[claim.metric]
    return {"run": record[claim.metric], "ci_low": low, "ci_high": high, "n": 1, "basis": basis}


def _sweep_run(claim: Claim, sweep: dict | None) -> dict | None:
    """The sweep's mean over seeds and its t-interval, when a sweep of this profile has the runs."""
    if sweep is None:
        return None
    if claim.other is not None:
        paired = sweep["paired"]
        rows = paired[(paired["first"] == claim.model) & (paired["second"] == claim.other)] if len(paired) else paired
        if not len(rows):
            return None
        row = rows.iloc[0]
        value, low, high, n = row["mean_difference"], row["ci_low"], row["ci_high"], int(row["n"])
        bounds = stats.DIFFERENCE_BOUNDS
    else:
        summary = sweep["summary"]
        rows = summary[(summary["model"] == claim.model) & (summary["metric"] == claim.metric)]
        if not len(rows):
            return None
        row = rows.iloc[0]
        value, low, high, n = row["mean"], row["ci_low"], row["ci_high"], int(row["n"])
        bounds = stats.SHARE_BOUNDS
    low, high = stats.clip_interval(low, high, bounds) if n >= stats.MIN_RUNS else (math.nan, math.nan)
    basis = (f"mean of {n} runs (sweep {sweep['name']}), one a training seed; a t-interval across the runs, so "
             "the variance from one training run to the next is in it")
    if claim.other is not None:
        basis += "; the difference is computed from the unrounded gaps"
    return {"run": float(value), "ci_low": low, "ci_high": high, "n": n, "basis": basis}


def _gaps_words(claim: Claim, accuracies: tuple[float, float]) -> str:
    """The head-to-head row's two gaps and their difference, from unrounded values (two decimals of a
    point, so a reader who recomputes the difference from the shown gaps lands within 0.01)."""
    paper_gap, run_gap = claim.paper_value, accuracies[0] - accuracies[1]
    mine, theirs = paper.MODELS[claim.model]["accuracy"], paper.MODELS[claim.other]["accuracy"]
    return (f"gaps (first \u2212 second model): paper {100 * mine:.2f}% \u2212 {100 * theirs:.2f}% = "
            f"{audit.points(paper_gap, 2)}, this run {100 * accuracies[0]:.2f}% \u2212 {100 * accuracies[1]:.2f}% = "
            f"{audit.points(run_gap, 2)}; difference {audit.points(run_gap - paper_gap, 2)}, computed from the "
            "unrounded values")


def audit_words(headline: pd.DataFrame | None, model: str, confidence: float) -> str:
    """What the audit (notebook 07) says may inflate ``model``'s accuracy: the near-duplicate gap and
    the guide-box change, each with its interval (or too few images to tell)."""
    if headline is None:
        return "the audit (notebook 07) has not run"
    if model not in headline.index:
        return "not audited"
    row = headline.loc[model]
    level = f"{confidence:.0%}"
    gap_low, gap_high = row["twin_gap_ci_low"], row["twin_gap_ci_high"]
    box_low, box_high = row["masked_change_ci_low"], row["masked_change_ci_high"]
    gap = audit.interval_words(gap_low, gap_high, audit.gap_effect(gap_low, gap_high), "too few images to tell")
    box = audit.interval_words(box_low, box_high, audit.box_effect(box_low, box_high), "too few images to tell")
    return (f"near-duplicate gap {audit.points(row['twin_gap'])} ({level} interval {gap}); guide box masked: "
            f"{audit.points(row['masked_change'])} ({level} interval {box})")


def sweep_command(cfg: Config) -> str:
    """The command that puts the variance between training runs into the card: ``make sweep`` of a
    sweep file over seeds of this profile (``configs/sweeps/``), or of one to write."""
    def profile_file(name: str, folder: Path | None = None) -> Path | None:
        try:  # a profile's name, or a path (a sweep's base: from the sweep file's folder)
            return profiles.find_profile(name, relative_to=folder).resolve()
        except ConfigError:
            return None

    own = profile_file(cfg.profile_argument)
    for path in sorted((CONFIG_DIR / "sweeps").glob("*.yaml")):
        spec = profiles.read_yaml(path, "sweep")
        same = own is not None and profile_file(spec.get("base", "paper"), path.parent) == own
        if same and not spec.get("grid") and not spec.get("readings"):
            return f"make sweep SWEEP={path.stem}"
    return f"make sweep SWEEP=<a sweep file over seeds with base: {cfg.profile_argument}>"


def variance_note(cfg: Config, claims: pd.DataFrame) -> str:
    """What the card's intervals leave out, in a sentence (empty when a sweep stands behind every row)."""
    if not len(claims) or not claims["basis"].fillna("").str.startswith("this run only").any():
        return ""
    return ("Every interval from this run alone resamples its validation images: it leaves out the variance from "
            "one training run (seed) to the next. This command trains each model over several seeds and puts that "
            f"variance in: {sweep_command(cfg)}")


def read_latest_seed_sweep(cfg: Config) -> dict | None:
    """The newest sweep of this profile over seeds only (no grid), from its report folder."""
    found = []
    for record in sorted((cfg.reports_root / "sweeps").glob("*/sweep.json")):
        about = json.loads(record.read_text())
        tables = record.parent / "tables"
        if about.get("base_profile") == cfg.profile and not about.get("grid") and (tables / "summary.csv").exists():
            paired = pd.read_csv(tables / "paired.csv") if (tables / "paired.csv").exists() else pd.DataFrame()
            summary = pd.read_csv(tables / "summary.csv")
            found.append((record.stat().st_mtime, {"name": about["name"], "summary": summary, "paired": paired}))
    return max(found, key=lambda item: item[0])[1] if found else None


def claims_table(cfg: Config, evaluations: dict, sweep: dict | None = None,
                 headline: pd.DataFrame | None = None) -> pd.DataFrame:
    """The summary card: one row per claim of the paper (see the module's docstring). With a
    ``sweep`` (``read_latest_seed_sweep``) of at least ``stats.MIN_RUNS`` runs a claim takes the sweep's mean over
    seeds; without ``evaluations`` (the sweep's own page) it does with fewer runs too, without an
    interval. ``headline`` is the audit's (``Table.AUDIT_HEADLINE``), for the accuracy claims."""
    reason = departures.why_not_comparable(cfg)
    rows = []
    for claim in CLAIMS:
        found = _sweep_run(claim, sweep)
        if found is not None and found["n"] < stats.MIN_RUNS and evaluations:
            found = None  # the run's own bootstrap interval says more than too few runs
        found = found or _single_run(cfg, claim, evaluations)
        if found is None:
            rows.append({"claim": claim.words, "paper": claim.paper_value, "verdict": "not run", "n": 0})
            continue
        words = audit_words(headline, claim.model, cfg.eval.confidence) \
            if claim.metric == "accuracy" and evaluations else ""
        rows.append({"claim": claim.words, "paper": claim.paper_value, **found,
                     "difference": found["run"] - claim.paper_value,
                     "verdict": verdict(claim.paper_value, found["ci_low"], found["ci_high"], reason), "audit": words})
    return pd.DataFrame(rows, columns=CARD_COLUMNS)


def write_sweep_record(folder: Path, name: str, base_profile: str, grid: dict) -> None:
    """What the index page needs to know about a sweep (``sweep.json`` beside its tables); ``grid``
    is what it varies besides the seed (a grid, or named readings): empty for a sweep over seeds only."""
    write_json_atomic(folder / "sweep.json", {"name": name, "base_profile": base_profile, "grid": grid})
