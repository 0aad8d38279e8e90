"""The verdict on each of the paper's claims, the departures that make a run incomparable, the
bootstrap intervals behind them, and the one number style the reports use: on numbers written by
hand, so each expected value can be checked."""

import math

import numpy as np
import pandas as pd
import pytest

from kvasir_utils import profiles
from kvasir_utils.analysis import departures, intervals, paper, stats, verdicts
from kvasir_utils.analysis.labels import CLASSES
from kvasir_utils.report import formats, tables


@pytest.mark.parametrize(("paper_value", "low", "high", "reason", "expected"), [
    (0.92, 0.90, 0.95, None, "consistent with the paper"),
    (0.92, 0.80, 0.90, None, "below the paper"),
    (0.92, 0.93, 0.97, None, "above the paper"),
    (0.92, 0.90, 0.95, "generated data", "not comparable: generated data"),
    (0.92, math.nan, math.nan, None, "too few runs to tell"),
])
def test_a_verdict_says_where_the_papers_value_lies(paper_value, low, high, reason, expected):
    assert verdicts.verdict(paper_value, low, high, reason) == expected


def _evaluations(accuracy: dict[str, float], n: int = 400) -> dict:
    """metrics.json-like records and predictions.csv frames for 8 classes, right on a given share."""
    evaluations = {}
    for model, share in accuracy.items():
        true = np.arange(n) % 8
        right = np.arange(n) < round(share * n)
        pred = np.where(right, true, (true + 1) % 8)
        probs = np.full((n, 8), 0.02)
        probs[np.arange(n), pred] = 0.86
        frame = pd.DataFrame({"path": [f"{i}.jpg" for i in range(n)], "true": true, "pred": pred,
                              **{f"p_{c}": probs[:, k] for k, c in enumerate(CLASSES)}})
        evaluations[model] = ({"accuracy": right.mean(), "macro_f1": 0.9, "macro_auc": 0.95}, frame)
    return evaluations


def test_the_card_judges_each_claim_from_the_runs_intervals():
    cfg = profiles.load_profile("paper", ["eval.bootstrap_samples=200"])
    card = verdicts.claims_table(cfg, _evaluations({"resnet50": 0.925, "efficientnet_b0": 0.80})).set_index("claim")
    accuracy = card.loc["ResNet50 accuracy"]
    assert accuracy["run"] == pytest.approx(0.925) and accuracy["ci_low"] < 0.9263 < accuracy["ci_high"]
    assert accuracy["verdict"] == "consistent with the paper" and accuracy["n"] == 1
    assert card.loc["EfficientNet-B0 accuracy", "verdict"] == "below the paper"  # 80% against 91.5%, 400 images
    beats = card.loc["ResNet50 beats EfficientNet-B0 (accuracy difference)"]
    assert beats["run"] == pytest.approx(0.125) and beats["paper"] == pytest.approx(0.9263 - 0.9150)
    assert beats["verdict"] == "above the paper" and "McNemar" in beats["basis"]
    assert card.loc["ResNet50 accuracy", "difference"] == pytest.approx(0.925 - paper.MODELS["resnet50"]["accuracy"])


def test_a_departure_or_generated_data_makes_every_claim_not_comparable():
    evaluations = _evaluations({"resnet50": 0.925})
    departed = profiles.load_profile("paper", ["train.stage2.lr=0.001", "eval.bootstrap_samples=50"])
    card = verdicts.claims_table(departed, evaluations)
    assert set(card.loc[card["verdict"] != "not run", "verdict"]) == {
        "not comparable: settings depart from the paper (train.stage2.lr)"}
    assert (card.set_index("claim").loc["EfficientNet-B0 accuracy", "verdict"]) == "not run"
    smoke = verdicts.claims_table(profiles.load_profile("smoke"), evaluations)
    assert smoke.loc[0, "verdict"] == "not comparable: generated data"


def _sweep(n: int) -> dict:
    summary = pd.DataFrame([{"model": "resnet50", "reading": "profile's reading", "metric": "accuracy",
                             "mean": 0.93, "sd": 0.01, "ci_low": 0.91, "ci_high": 1.05, "n": n}])
    return {"name": "seeds", "summary": summary, "paired": pd.DataFrame()}


def test_a_sweep_of_enough_runs_stands_behind_the_card_and_too_few_do_not():
    cfg = profiles.load_profile("paper", ["eval.bootstrap_samples=50"])
    evaluations = _evaluations({"resnet50": 0.925})
    row = verdicts.claims_table(cfg, evaluations, _sweep(5)).set_index("claim").loc["ResNet50 accuracy"]
    assert (row["run"], row["n"], row["ci_high"]) == (0.93, 5, 1.0)  # a bounded metric's interval stays in [0, 1]
    assert "mean of 5 runs (sweep seeds)" in row["basis"] and row["verdict"] == "consistent with the paper"
    row = verdicts.claims_table(cfg, evaluations, _sweep(2)).set_index("claim").loc["ResNet50 accuracy"]
    assert row["n"] == 1 and row["basis"].startswith("this run only")  # two runs say less than its own interval
    page = verdicts.claims_table(cfg, {}, _sweep(2)).set_index("claim").loc["ResNet50 accuracy"]
    assert page["verdict"] == "too few runs to tell" and page["n"] == 2  # the sweep's own page


def test_departures_list_what_differs_from_paper_yaml_and_only_some_of_it_matters():
    assert departures.departures(profiles.load_profile("paper")).empty
    assert departures.why_not_comparable(profiles.load_profile("paper")) is None
    own = profiles.load_profile("paper", ["data.dataset=other", "data.url=/srv/mine.zip"])
    assert departures.why_not_comparable(own) == "another dataset than the paper's Kvasir v2 (data.dataset: other)"
    moved = profiles.load_profile("paper", ["data.url=/mirror/kvasir-dataset-v2.zip", "eval.bootstrap_samples=10"])
    assert set(departures.departures(moved)["setting"]) == {"data.url", "data.mirrors", "data.size",
                                                            "eval.bootstrap_samples"}
    assert departures.why_not_comparable(moved) is None  # the same data from elsewhere, reported otherwise
    masked = profiles.load_profile("paper-masked")
    assert departures.departures_for(masked, "03_finetune")["setting"].tolist() == ["transforms.mask_overlays"]
    assert departures.departures_for(masked, "01_download_and_split").empty


def test_bootstrap_intervals_cover_the_difference_and_stay_in_bounds():
    right = np.r_[np.ones(90), np.zeros(10)]
    worse = np.r_[np.ones(70), np.zeros(30)]
    low, high = intervals.paired_difference_interval(right, worse, 500, 0.95, 0)
    assert low <= 0.2 <= high and low >= -1 and high <= 1
    assert intervals.paired_difference_interval(right, right, 100, 0.95, 0) == (0.0, 0.0)
    assert all(math.isnan(v) for v in intervals.group_gap_interval(right, [], 100, 0.95, 0))
    low, high = intervals.group_gap_interval(np.ones(5), np.r_[np.ones(50), np.zeros(50)], 500, 0.95, 0)
    assert 0.3 < low <= 0.5 <= high <= 0.7


def test_one_number_style():
    assert formats.number(0.92625, "percent") == "92.6%" and formats.number(0.9250, "score") == "0.925"
    assert formats.number(-0.0469, "points") == "\u22124.7 points" and formats.number(1600, "count") == "1,600"
    assert formats.number(203.0, "count") == "203" and formats.number(-0.25, "score") == "\u22120.250"
    assert formats.counted(1, "epoch") == "1 epoch" and formats.counted(3, "epoch") == "3 epochs"
    assert formats.number(float("nan"), "score", formats.NOT_REPORTED) == "not reported"
    assert formats.interval(0.85, 0.9, "percent") == "[85.0%, 90.0%]" and formats.interval(math.nan, 1) == ""
    versus = paper.versus(pd.DataFrame({"Recall": [0.5], "F1-Score": [0.75]}, index=["Polyps"]),
                          pd.DataFrame({"Recall": [0.6], "F1-Score": [0.7]}, index=["Polyps"]))
    shown = formats.formatted(versus).loc["Polyps"]
    assert shown[("Recall", "difference")] == "\u221210.0 points" and shown[("F1-Score", "difference")] == "+0.050"


def test_a_sweep_page_shows_no_interval_below_the_fewest_runs_and_none_outside_the_bounds():
    fewest = stats.MIN_RUNS
    summary = pd.DataFrame([{"model": "resnet50", "reading": "r", "metric": "accuracy", "mean": 0.77, "sd": 0.35,
                             "ci_low": 0.2771, "ci_high": 1.2698, "n": fewest - 1},
                            {"model": "resnet50", "reading": "r", "metric": "macro_f1", "mean": 0.9, "sd": 0.1,
                             "ci_low": 0.7, "ci_high": 1.1, "n": fewest}])
    shown = tables.sweep_summary(summary)
    assert shown.loc[0, "interval across runs"] == tables.TOO_FEW_RUNS
    assert shown.loc[1, "interval across runs"] == "[0.700, 1.000]"
    paired = pd.DataFrame([{"first": "resnet50", "second": "efficientnet_b0", "reading": "r", "mean_difference": d,
                            "ci_low": d - 0.9, "ci_high": d + 0.5, "n": n, "sign_test_p": 0.5,
                            "mcnemar_p_per_seed": ""} for d, n in ((-0.5, fewest), (0.2, fewest - 1))])
    shown = tables.sweep_paired(paired)
    assert shown["interval"].tolist() == ["[\u2212100.0 points, +0.0 points]", tables.TOO_FEW_RUNS]
    # the card follows the same rule: the sweep's mean, without an interval below the fewest runs
    sweep = {"name": "s", "summary": summary.assign(model="efficientnet_b0"), "paired": paired}
    card = verdicts.claims_table(profiles.load_profile("paper"), {}, sweep).set_index("claim")
    assert card.loc["EfficientNet-B0 macro F1", ["ci_low", "ci_high"]].tolist() == [0.7, 1.0]
    assert card.loc["EfficientNet-B0 accuracy", "verdict"] == "too few runs to tell"
    assert card.loc["ResNet50 beats EfficientNet-B0 (accuracy difference)", "ci_low"] == -1.0


def _headline(gap_interval: tuple[float, float]) -> pd.DataFrame:
    low, high = gap_interval
    return pd.DataFrame({"twin_gap": [0.05], "twin_gap_ci_low": [low], "twin_gap_ci_high": [high],
                         "masked_change": [-0.02], "masked_change_ci_low": [-0.04], "masked_change_ci_high": [-0.01]},
                        index=["resnet50"])


def test_the_card_says_what_each_interval_covers_and_what_the_audit_found():
    cfg = profiles.load_profile("paper", ["eval.bootstrap_samples=100"])
    evaluations = _evaluations({"resnet50": 0.90, "efficientnet_b0": 0.93})
    card = verdicts.claims_table(cfg, evaluations, None, _headline((-0.03, 0.12))).set_index("claim")
    resnet = card.loc["ResNet50 accuracy"]
    assert "400 validation images" in resnet["basis"] and "not in it" in resnet["basis"]  # no training variance
    assert resnet["audit"].startswith("near-duplicate gap +5.0 points (95% interval [\u22123.0 points, +12.0 points]: "
                                      "too few images to tell)")
    assert "guide box masked: \u22122.0 points" in resnet["audit"] and "the model leans on the box" in resnet["audit"]
    assert card.loc["EfficientNet-B0 accuracy", "audit"] == "not audited"
    assert card.loc["ResNet50 macro F1", "audit"] == ""  # only accuracy claims carry the audit's word
    note = verdicts.variance_note(cfg, card.reset_index())
    assert "leaves out the variance" in note and note.endswith(": make sweep SWEEP=seeds")
    assert verdicts.sweep_command(profiles.load_profile("smoke")) == "make sweep SWEEP=smoke-seeds"
    unaudited = verdicts.claims_table(cfg, evaluations).set_index("claim")
    assert unaudited.loc["ResNet50 accuracy", "audit"] == "the audit (notebook 07) has not run"


def test_the_card_reads_each_audit_interval_by_its_sign_as_the_audit_page_does():
    from kvasir_utils.analysis import audit

    headline = pd.DataFrame({"twin_gap": [-0.06], "twin_gap_ci_low": [-0.1], "twin_gap_ci_high": [-0.02],
                             "masked_change": [0.094], "masked_change_ci_low": [0.016],
                             "masked_change_ci_high": [0.172]}, index=["resnet50"])
    words = verdicts.audit_words(headline, "resnet50", 0.95)
    assert "+9.4 points (95% interval [+1.6 points, +17.2 points]: masking the box helps)" in words
    assert "images with a near-duplicate are harder" in words
    assert "leans on the box" not in words and "flatters" not in words
    assert audit.box_effect(-0.04, -0.01) == "the model leans on the box"
    assert audit.gap_effect(0.01, 0.1) == "the image-level split flatters the score"


def test_the_head_to_head_row_states_both_gaps_and_a_difference_a_reader_can_recompute():
    cfg = profiles.load_profile("paper", ["eval.bootstrap_samples=100"])
    claims = verdicts.claims_table(cfg, _evaluations({"resnet50": 0.8875, "efficientnet_b0": 0.92}))
    row = claims.set_index("claim").loc["ResNet50 beats EfficientNet-B0 (accuracy difference)"]
    # paper 92.63 - 91.50 = +1.13; this run 88.75 - 92.00 = -3.25; -4.38 (at one decimal -4.4 beside +1.1 and -3.2)
    assert "paper 92.63% \u2212 91.50% = +1.13 points" in row["basis"]
    assert "this run 88.75% \u2212 92.00% = \u22123.25 points; difference \u22124.38 points" in row["basis"]
    assert "computed from the unrounded values" in row["basis"]
    shown = tables.card(claims).set_index("claim").loc[row.name]
    assert (shown["paper"], shown["this run"], shown["difference"]) == ("+1.13 points", "\u22123.25 points",
                                                                        "\u22124.38 points")


def test_the_departures_and_readings_show_no_python_repr_and_no_empty_cell():
    cfg = profiles.load_profile("smoke")
    shown = tables.departures_table(cfg)
    assert len(shown) and (shown != "").all().all()
    assert not shown.map(lambda v: v in ("None", "[]") or v.startswith("[")).any().any()
    assert shown.set_index("setting").loc["train.weights", "this run"] == "none (random initialisation)"
    readings = tables.readings(paper.readings_table(cfg.to_dict()), cfg)
    assert not readings["value"].str.contains("None").any()
    assert formats.setting(None) == formats.setting([]) == "none" and formats.setting(["a", "b"]) == "a, b"
