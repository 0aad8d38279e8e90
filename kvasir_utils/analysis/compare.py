"""The models against each other and against the paper: the headline and comparison tables,
McNemar's test on paired predictions, and the masked profile's Table 1.
"""

from __future__ import annotations

import pandas as pd

from kvasir_utils.analysis import intervals, labels, metrics, paper
from kvasir_utils.analysis.runs import read_evaluations, same_images
from kvasir_utils.config import Config
from kvasir_utils.errors import KvasirError


def comparison_table(cfg: Config) -> pd.DataFrame:
    """Every model against the paper: accuracy and macro F1 with bootstrap intervals over the
    validation images (``*_ci_low``, ``*_ci_high`` at ``eval.confidence``), macro ROC-AUC, calibration,
    parameters (millions), GFLOPs per image, training seconds and inference images per second."""
    rows = {}
    for model, (record, predictions) in read_evaluations(cfg).items():
        ci = intervals.accuracy_macro_f1_intervals(predictions["true"], predictions["pred"], len(cfg.classes),
                                                   cfg.eval.bootstrap_samples, cfg.eval.confidence, cfg.eval.seed)
        reported = paper.reported_metrics(model, cfg.classes)
        rows[model] = {
            "accuracy_paper": reported.get("accuracy", float("nan")), "accuracy": record["accuracy"],
            "accuracy_ci_low": ci["accuracy"][0], "accuracy_ci_high": ci["accuracy"][1],
            "macro_f1_paper": reported.get("macro_f1", float("nan")), "macro_f1": record["macro_f1"],
            "macro_f1_ci_low": ci["macro_f1"][0], "macro_f1_ci_high": ci["macro_f1"][1],
            "macro_auc_paper": reported.get("macro_auc", float("nan")), "macro_auc": record["macro_auc"],
            "ece": record["ece"], "brier": record["brier"], "parameters_m": record["parameters"] / 1e6,
            "gflops": record["gflops"], "train_seconds": record["train_seconds"],
            "inference_images_per_s": record["inference_images_per_s"], "images": record["images"],
        }
    return pd.DataFrame(rows).T


def paired_tests(cfg: Config) -> pd.DataFrame:
    """Exact McNemar test for each pair of evaluated models, on the same validation images."""
    evaluations = read_evaluations(cfg)
    names = list(evaluations)
    rows = []
    for i, first in enumerate(names):
        for second in names[i + 1:]:
            a, b = evaluations[first][1], evaluations[second][1]
            if not same_images(a, b):
                raise KvasirError(f"{first} and {second} were evaluated on different images; rerun notebook 04")
            rows.append({"first": first, "second": second, **metrics.mcnemar_of_runs(a, b)})
    return pd.DataFrame(rows, columns=["first", "second", "only_first_correct", "only_second_correct", "p_value"])


def masked_run_table1(cfg: Config, masked_cfg: Config) -> tuple[pd.DataFrame | None, str]:
    """Per model and class: F1 of this run beside the run trained and evaluated with the overlays
    masked (profile ``<profile>-masked``), when that run was made with the same settings otherwise
    and evaluated on the same images. Returns the table (or None) and a sentence saying why not."""
    mine, theirs = read_evaluations(cfg, required=False), read_evaluations(masked_cfg, required=False)
    models = [m for m in cfg.train.models if m in mine and m in theirs]
    if not models:
        return None, (f"no evaluated run of profile {masked_cfg.profile} yet: "
                      f"make reproduce PROFILE={masked_cfg.profile}")
    ours, other = cfg.science_dict(), masked_cfg.science_dict()
    for settings in (ours, other):
        settings["transforms"].pop("mask_overlays")
    if ours != other:
        return None, (f"the {masked_cfg.profile} run was made with other settings than this one (beyond the mask); "
                      f"rerun it with the same SET to compare")
    columns = {}
    for model in models:
        if not same_images(mine[model][1], theirs[model][1]):
            return None, f"{model}: the two runs were evaluated on different images (another split?)"
        masked_label = f"{masked_cfg.profile} ({masked_cfg.transforms.mask_overlays} masked)"
        for label, (_, predictions) in ((cfg.profile, mine[model]), (masked_label, theirs[model])):
            table = metrics.classification_table(predictions["true"], predictions["pred"], cfg.classes)
            columns[(model, label)] = table["F1-Score"]
    return pd.DataFrame(columns), f"Table 1 F1 of {cfg.profile} and {masked_cfg.profile} side by side"


def mcnemar_sentences(tests: pd.DataFrame, names: dict[str, str] | None = None) -> list[str]:
    """``paired_tests`` in words: where the two models disagree and whether that is more than chance."""
    names = names or {}
    sentences = []
    for row in tests.itertuples():
        first, second = names.get(row.first, row.first), names.get(row.second, row.second)
        disagree = row.only_first_correct + row.only_second_correct
        verdict = ("more than chance gives: the models differ" if row.p_value < 0.05
                   else "within what chance gives: these images cannot tell the models apart")
        sentences.append(f"{first} and {second} disagree on {disagree} validation images: {first} alone is right on "
                         f"{row.only_first_correct}, {second} alone on {row.only_second_correct}. McNemar's exact test "
                         f"gives p = {row.p_value:.2g}, {verdict} (p < 0.05 would say they differ).")
    return sentences


def abbreviation_names(classes: list[str]) -> dict[str, str]:
    """``{abbreviation: class}`` for the columns and rows of Table 2."""
    return {labels.abbreviation(name): name for name in classes}


def abbreviations_sentence(classes: list[str]) -> str:
    """The abbreviations of Table 2 spelled out, for the text beside every confusion matrix."""
    spelled = [f"{short} = {name}" for short, name in abbreviation_names(classes).items() if short != name]
    return ("Abbreviations: " + "; ".join(spelled) + ".") if spelled else ""
