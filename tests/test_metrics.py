import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import (
    accuracy_score,
    f1_score,
    matthews_corrcoef,
    precision_recall_fscore_support,
    roc_auc_score,
)

from kvasir_utils.analysis import intervals, labels, metrics, paper

CLASSES = labels.CLASSES


@pytest.fixture
def random_predictions():
    rng = np.random.default_rng(0)
    y_true = rng.integers(0, 8, 400)
    probs = rng.dirichlet(np.ones(8), 400)
    probs[np.arange(400), y_true] += rng.random(400)  # better than chance, not perfect
    probs /= probs.sum(1, keepdims=True)
    return y_true, probs


def test_table1_agrees_with_scikit_learn(random_predictions):
    y_true, probs = random_predictions
    y_pred = probs.argmax(1)
    table = metrics.classification_table(y_true, y_pred, CLASSES)
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred)
    assert list(table.columns) == ["Precision", "Recall", "F1-Score", "Specificity", "Support"]
    assert list(table.index) == [labels.display_name(c) for c in CLASSES] + ["Macro Avg", "Weighted Avg"]
    np.testing.assert_allclose(table["Precision"].iloc[:8], p)
    np.testing.assert_allclose(table["Recall"].iloc[:8], r)
    np.testing.assert_allclose(table["F1-Score"].iloc[:8], f)
    assert table.loc["Macro Avg", "F1-Score"] == pytest.approx(f1_score(y_true, y_pred, average="macro"))
    assert table.loc["Weighted Avg", "F1-Score"] == pytest.approx(f1_score(y_true, y_pred, average="weighted"))
    assert table.loc["Weighted Avg", "Recall"] == pytest.approx(accuracy_score(y_true, y_pred))
    assert list(table["Support"]) == [*s, 400, 400] and np.isnan(table.loc["Weighted Avg", "Specificity"])


def test_specificity_by_hand():
    # 3 classes; class 0: TP=2, FN=1, FP=1, TN=4 -> specificity 4/5
    y_true = [0, 0, 0, 1, 1, 2, 2, 2]
    y_pred = [0, 0, 1, 0, 1, 2, 2, 1]
    table = metrics.classification_table(y_true, y_pred, ["a", "b", "c"])
    assert table.loc["A", "Specificity"] == pytest.approx(4 / 5)
    assert table.loc["B", "Specificity"] == pytest.approx(4 / 6)  # FP=2 (from a and c), TN=4
    assert table.loc["C", "Specificity"] == pytest.approx(5 / 5)
    assert table.loc["Macro Avg", "Specificity"] == pytest.approx((4 / 5 + 4 / 6 + 1) / 3)


def test_the_papers_table2_gives_back_its_table1():
    y_true, y_pred = paper.expand_confusion(paper.TABLE2)
    assert metrics.accuracy(y_true, y_pred) == pytest.approx(0.92625)
    table = metrics.classification_table(y_true, y_pred, CLASSES)
    np.testing.assert_allclose(table.iloc[:8].to_numpy(float), paper.TABLE1.iloc[:8].to_numpy(float), atol=5.1e-5)
    pd.testing.assert_frame_equal(metrics.confusion_table(y_true, y_pred, CLASSES), paper.TABLE2)


def test_paper_consistency_notes_find_the_weighted_averages():
    notes = paper.consistency_notes()
    assert any("Weighted Avg Precision is 0.9308; Table 2 gives 0.9325" in n for n in notes)
    assert any("Weighted Avg F1-Score" in n for n in notes)
    assert not any("Dyed-lifted-polyps" in n for n in notes)


def test_roc_auc_per_class_and_macro(random_predictions):
    y_true, probs = random_predictions
    auc = metrics.roc_auc_table(y_true, probs, CLASSES)
    assert auc["Esophagitis"] == pytest.approx(roc_auc_score(y_true == 2, probs[:, 2]))
    assert auc["Macro Avg"] == pytest.approx(roc_auc_score(y_true, probs, multi_class="ovr", average="macro"))


def test_bootstrap_interval_contains_the_estimate_and_narrows_with_more_data(random_predictions):
    y_true, probs = random_predictions
    y_pred = probs.argmax(1)
    ci = intervals.accuracy_macro_f1_intervals(y_true, y_pred, 8, samples=500, seed=1)
    assert ci["accuracy"][0] < metrics.accuracy(y_true, y_pred) < ci["accuracy"][1]
    assert ci["macro_f1"][0] < f1_score(y_true, y_pred, average="macro") < ci["macro_f1"][1]
    wide = intervals.accuracy_macro_f1_intervals(y_true[:100], y_pred[:100], 8, samples=500, seed=1)
    assert wide["accuracy"][1] - wide["accuracy"][0] > ci["accuracy"][1] - ci["accuracy"][0]


def test_every_bootstrap_draws_the_same_resamples_and_reads_the_same_percentiles(random_predictions):
    # accuracy's interval is the percentile interval of the accuracy of each of ``resamples``' rows:
    # the same images for the same seed, whichever interval is asked for
    y_true, probs = random_predictions
    y_pred = probs.argmax(1)
    draws = intervals.resamples(len(y_true), 200, 3)
    by_hand = intervals.percentile_interval((y_true[draws] == y_pred[draws]).mean(axis=1), 0.9)
    assert intervals.accuracy_macro_f1_intervals(y_true, y_pred, 8, 200, 0.9, 3)["accuracy"] == by_hand
    right = y_true == y_pred
    assert intervals.paired_difference_interval(right, np.zeros(len(right)), 200, 0.9, 3) == by_hand
    assert intervals.percentile_interval([np.nan, 1.0, 3.0], 0.5) == (1.5, 2.5)  # NaN resamples left out


def test_the_counted_auc_of_every_resample_is_scikit_learns_with_ties_and_absent_classes(monkeypatch):
    # scores rounded to two places (ties, as a saturated softmax or bf16 gives), a rare class that some
    # resamples lack (NaN, left out of the macro mean as macro_auc leaves it out), blocks of resamples
    rng = np.random.default_rng(4)
    y_true = np.r_[rng.integers(0, 3, 60), [3]]  # class 3: one image
    probs = np.round(rng.dirichlet(np.ones(4), len(y_true)), 2)
    draws = intervals.resamples(len(y_true), 300, 5)
    counted = intervals.auc_by_resample(y_true == 3, probs[:, 3], draws)
    lacking = ~(y_true[draws] == 3).any(axis=1)
    assert lacking.any() and not lacking.all() and np.isnan(counted[lacking]).all()
    for k in range(4):
        counted = intervals.auc_by_resample(y_true == k, probs[:, k], draws)
        for row, auc in zip(draws, counted, strict=True):
            if 0 < (y_true[row] == k).sum() < len(row):
                assert auc == pytest.approx(roc_auc_score(y_true[row] == k, probs[row, k]), abs=1e-12)
    by_hand = intervals.percentile_interval([intervals.macro_auc(y_true[i], probs[i]) for i in draws], 0.9)
    assert intervals.macro_auc_interval(y_true, probs, 300, 0.9, 5) == pytest.approx(by_hand, abs=1e-12)
    monkeypatch.setattr(intervals, "_AUC_BLOCK_CELLS", 1000)  # many small blocks count the same
    assert intervals.macro_auc_interval(y_true, probs, 300, 0.9, 5) == pytest.approx(by_hand, abs=1e-12)


def test_mcnemar_exact_by_hand():
    a = [True] * 10 + [False] * 2 + [True] * 5
    b = [False] * 10 + [True] * 2 + [True] * 5
    result = metrics.mcnemar(a, b)
    assert (result["only_first_correct"], result["only_second_correct"]) == (10, 2)
    assert result["p_value"] == pytest.approx(0.03857, abs=1e-4)  # 2 * P(X <= 2), X ~ Bin(12, 0.5)
    assert metrics.mcnemar(a, a)["p_value"] == 1.0


def test_side_by_side_shows_paper_this_run_and_difference():
    ours = paper.TABLE1.copy()
    ours.loc["Polyps", "Recall"] = 0.9
    both = paper.side_by_side(ours, paper.TABLE1)
    assert both.loc["Polyps", ("Recall", "difference")] == pytest.approx(0.9 - 0.9234)
    assert list(both["Recall"].columns) == ["paper", "run", "difference"]


def test_macro_and_micro_precision_recall_f1_and_mcc_by_hand():
    # 3 classes, 8 images: the specificity example above
    y_true = [0, 0, 0, 1, 1, 2, 2, 2]
    y_pred = [0, 0, 1, 0, 1, 2, 2, 1]
    table = metrics.macro_micro_table(y_true, y_pred, ["a", "b", "c"])
    assert list(table.index) == ["Macro", "Micro"] and list(table.columns) == ["Precision", "Recall", "F1-Score", "MCC"]
    assert table.loc["Micro", ["Precision", "Recall", "F1-Score"]].to_numpy() == pytest.approx([5 / 8] * 3)
    assert table.loc["Macro", "Precision"] == pytest.approx((2 / 3 + 1 / 3 + 1) / 3)
    assert table.loc["Macro", "Recall"] == pytest.approx((2 / 3 + 1 / 2 + 2 / 3) / 3)
    # class a one-vs-rest: TP 2, FP 1, FN 1, TN 4 -> (8 - 1) / sqrt(3 * 3 * 5 * 5)
    mcc_a = (2 * 4 - 1 * 1) / np.sqrt(3 * 3 * 5 * 5)
    mcc_b = (1 * 4 - 2 * 1) / np.sqrt(3 * 2 * 6 * 5)
    mcc_c = (2 * 5 - 0 * 1) / np.sqrt(2 * 3 * 6 * 5)
    assert table.loc["Macro", "MCC"] == pytest.approx((mcc_a + mcc_b + mcc_c) / 3)
    # pooled: TP 5, FP 3, FN 3, TN 13 (8 images x 2 other classes - 3 wrong)
    assert table.loc["Micro", "MCC"] == pytest.approx((5 * 13 - 3 * 3) / np.sqrt(8 * 8 * 16 * 16))
    record = metrics.summary(np.array(y_true), np.eye(3)[y_pred], ["a", "b", "c"])
    assert record["mcc"] == pytest.approx(matthews_corrcoef(y_true, y_pred)) and record["micro_f1"] == 5 / 8


def test_small_classes_are_flagged_and_averages_never():
    support = [30, 30, 30, 0, 30, 5, 30, 19]  # no normal-cecum, 5 normal-z-line, 19 ulcerative-colitis
    y_true = np.repeat(np.arange(8), support)
    table = metrics.flag_small_support(metrics.classification_table(y_true, y_true, CLASSES), min_support=20)
    flagged = table.index[table["Note"] != ""].tolist()
    assert flagged == ["Normal-cecum", "Normal-z-line", "Ulcerative-colitis"]
    assert table.loc["Normal-z-line", "Note"] == "fewer than 20 images" and table.loc["Macro Avg", "Note"] == ""
    assert metrics.small_classes(y_true, CLASSES, 20) == ["normal-cecum", "normal-z-line", "ulcerative-colitis"]
    assert metrics.small_classes(y_true, CLASSES, 19) == ["normal-cecum", "normal-z-line"]


def test_abbreviations_are_short_unique_and_keep_the_papers():
    from kvasir_utils.data import synthetic_hyperkvasir

    assert labels.abbreviations(CLASSES) == labels.ABBREVIATIONS
    hyper = labels.abbreviations(synthetic_hyperkvasir.CLASS_NAMES)
    assert len(set(hyper.values())) == 23 and max(len(a) for a in hyper.values()) <= 5
    assert (hyper["polyps"], hyper["esophagitis-a"], hyper["bbps-2-3"], hyper["cecum"]) == ("POL", "EA", "B23", "CEC")
    assert labels.abbreviations(synthetic_hyperkvasir.CLASS_NAMES[::-1]) == hyper  # order does not matter
    clashing = labels.abbreviations(["retroflex-rectum", "rectal-resection", "x-1", "x1"])
    assert len(set(clashing.values())) == 4
    table = metrics.confusion_table([0, 1, 22], [0, 1, 21], synthetic_hyperkvasir.CLASS_NAMES)
    assert table.shape == (23, 23) and list(table.columns) == list(hyper.values())
