"""The run-time readings (report.readings, report.comparison_readings) on small hand-made tables:
each names the right class, epoch or count, and a class with no validation image, a tie or an
all-correct run reads as what it is."""

import numpy as np
import pandas as pd

from kvasir_utils.analysis import metrics
from kvasir_utils.report import comparison_readings, readings
from kvasir_utils.report.formats import MINUS

CLASSES = ["dyed-lifted-polyps", "dyed-resection-margins", "polyps"]
NAMES = {"DLP": "dyed-lifted-polyps", "DRM": "dyed-resection-margins", "P": "polyps"}


def _table1(y_true, y_pred, classes=CLASSES):
    return metrics.classification_table(np.array(y_true), np.array(y_pred), classes)


def _confusion(rows):
    return pd.DataFrame(rows, index=list(NAMES), columns=list(NAMES))


def _history(val_acc, val_loss, train_loss=None, train_acc=None, stages=None):
    n = len(val_acc)
    return pd.DataFrame({"global_epoch": range(1, n + 1), "val_acc": val_acc, "val_loss": val_loss,
                         "train_loss": train_loss or [1.0 - 0.1 * i for i in range(n)],
                         "train_acc": train_acc or [0.5 + 0.1 * i for i in range(n)],
                         **({"stage": stages} if stages else {})})


# -- 01 -----------------------------------------------------------------------------------------
def test_the_resolutions_reading_names_the_commonest_and_a_single_one():
    table = pd.DataFrame({"resolution": ["720x576", "1280x1024"], "images": [30, 90]})
    assert readings.resolutions_reading(table) == ("The 120 readable images come in 2 resolutions; the commonest, "
                                                   "1280x1024 pixels, holds 75.0% of them.")
    assert readings.resolutions_reading(table.iloc[:1]) == "All 30 readable images are 720x576 pixels."


def test_the_split_reading_gives_the_sides_the_range_and_a_class_without_validation_images():
    counts = pd.DataFrame({"train": [8, 6, 4], "val": [2, 0, 1]}, index=CLASSES)
    counts["total"] = counts.sum(axis=1)
    counts.loc["total"] = counts.sum()
    sentences = readings.split_reading(counts)
    assert sentences[0] == "18 images for training and 3 for validation (14.3% of 21)."
    assert sentences[1] == ("Validation images per class range from 0 (Dyed-resection-margins) to 2 "
                            "(Dyed-lifted-polyps).")
    assert sentences[2].startswith("Dyed-resection-margins has no validation image")
    even = counts.assign(val=[2, 2, 2, 6])
    assert readings.split_reading(even)[1] == "Every class has 2 validation images."
    assert "21 images of 3 classes, 18 to train on and 3 to validate on; 1 near-duplicate pair found" in \
        readings.data_conclusions(counts, 1)


# -- 02, 03 -------------------------------------------------------------------------------------
def test_the_trainable_reading_names_the_trained_modules():
    table = pd.DataFrame({"module": ["features", "fc", "total"], "parameters": [1000, 10, 1010],
                          "trainable": [0, 10, 10]})
    assert readings.trainable_reading(table) == ("10 of 1,010 parameters (1.0%) train: `fc` (10 of 10); "
                                                 "the rest keep their weights.")
    everything = table.assign(trainable=table["parameters"])
    assert readings.trainable_reading(everything) == "All 1,010 parameters train, in every one of the 2 modules."


def test_the_epochs_reading_finds_the_peak_the_rising_validation_loss_and_the_gap():
    history = _history(val_acc=[0.5, 0.8, 0.7, 0.6], val_loss=[1.0, 0.6, 0.7, 0.9])
    peak, loss, gap = readings.epochs_reading(history)
    assert peak == "Validation accuracy peaked at 80.0% in epoch 2 and ended at 60.0% in epoch 4."
    assert loss == ("Validation loss was lowest in epoch 2 (0.600) and rose to 0.900 by epoch 4, while training "
                    "loss kept falling: the pattern of overfitting.")
    assert gap == ("In the last epoch, training accuracy 80.0%, validation 60.0%: a gap of +20.0 points "
                   "(training minus validation).")


def test_the_epochs_reading_of_both_stages_says_fine_tuning_and_a_tie_takes_the_first_epoch():
    history = _history(val_acc=[0.5, 0.9, 0.9, 0.9], val_loss=[1.0, 0.8, 0.6, 0.5],
                       train_acc=[0.5, 0.6, 0.7, 0.95], stages=["stage1", "stage1", "stage2", "stage2"])
    peak, loss, gap = readings.epochs_reading(history)
    assert peak == "Validation accuracy reached its highest, 90.0%, in epoch 2 and held it to epoch 4 (fine-tuning)."
    assert loss == "Validation loss was lowest in the last epoch (0.500): it had not begun to rise."
    assert "a gap of +5.0 points" in gap
    below = _history(val_acc=[0.7, 0.8], val_loss=[1.0, 0.9], train_acc=[0.6, 0.7])
    assert f"a gap of {MINUS}10.0 points" in readings.epochs_reading(below)[-1]
    assert readings.epochs_reading(below)[0] == "Validation accuracy reached its highest, 80.0%, in epoch 2, the last."


def test_the_epochs_reading_says_when_accuracy_is_flat_or_held_and_a_tiny_rise_of_loss_is_no_rise():
    flat = readings.epochs_reading(_history(val_acc=[0.125] * 3, val_loss=[2.1, 2.089, 2.093]))
    assert flat[0] == "Validation accuracy stayed at 12.5% in all 3 epochs."
    assert flat[1] == "Validation loss was lowest in epoch 2 (2.089) and ended within 1% of it (2.093): no clear rise."
    held = readings.epochs_reading(_history(val_acc=[0.5, 0.7, 0.7], val_loss=[1.0, 0.9, 1.0],
                                            train_loss=[1.0, 1.1, 1.2]))
    assert held[0] == "Validation accuracy reached its highest, 70.0%, in epoch 2 and held it to epoch 3."
    # training loss rose too: no word of overfitting
    assert held[1] == "Validation loss was lowest in epoch 2 (0.900) and rose to 1.000 by epoch 3."


def test_the_epochs_reading_of_one_epoch_or_none_claims_no_trend():
    assert readings.epochs_reading(_history([0.4], [1.2], [1.5], [0.3])) == [
        f"One epoch, so no trend to read: training accuracy 30.0%, validation 40.0%: a gap of {MINUS}10.0 points "
        "(training minus validation)."]
    assert readings.epochs_reading(_history([], [], [], [])) == ["No epoch has finished."]
    history = _history(val_acc=[0.5, 0.8], val_loss=[1.0, 0.6])
    assert readings.stage_conclusions(history, "stage1") == (
        "Stage 1 ended after 2 epochs at 80.0% validation accuracy (best 80.0%); what follows uses the weights of its "
        "last epoch, not of its best.")


# -- 04 -----------------------------------------------------------------------------------------
def test_the_table1_reading_names_the_best_and_weakest_class_and_why_the_weakest_is_weak():
    # DLP: 4 images, 2 found (recall 0.5), never over-called (precision 1): F1 0.667; DRM takes one of its misses
    # and one polyp (F1 0.800), polyps the other miss (F1 0.750)
    table1 = _table1([0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2], [0, 0, 1, 2, 1, 1, 1, 1, 2, 2, 2, 1])
    best, why = readings.table1_reading(table1)
    assert best == ("Best F1: Dyed-resection-margins (0.800); weakest: Dyed-lifted-polyps (0.667), against a macro "
                    "average of 0.739.")
    assert why.startswith("The recall of Dyed-lifted-polyps (0.500) is below its precision (1.000): the model misses")


def test_the_table1_reading_names_every_tied_class_and_a_class_without_images():
    table1 = _table1([0, 0, 1, 1], [0, 1, 1, 0])  # DLP and DRM each 0.5; polyps has no validation image
    best, empty = readings.table1_reading(table1)
    assert best == "Every class with validation images has the same F1, 0.500."
    assert empty == "Polyps has no validation image: its zeros mean no data, not failure."
    table1 = _table1([0, 1, 1, 2, 2], [0, 1, 1, 2, 0])  # F1: DRM 1.000, DLP and polyps 0.667 each
    assert readings.table1_reading(table1)[0].startswith("Best F1: Dyed-resection-margins (1.000); weakest: "
                                                         "Dyed-lifted-polyps and Polyps (0.667)")
    assert readings.table1_reading(_table1([0, 1, 2], [0, 1, 2])) == [
        "Every class with validation images has the same F1, 1.000."]


def test_the_confusion_reading_names_the_largest_confusion_its_reverse_and_all_correct():
    table2 = _confusion([[5, 3, 0], [1, 6, 0], [0, 0, 4]])
    counted, largest = readings.confusion_reading(table2, NAMES)
    assert counted == "4 of 19 validation images (21.1%) lie off the diagonal."
    assert largest == ("The largest confusion: Dyed-lifted-polyps (DLP) predicted as Dyed-resection-margins (DRM), "
                       "3 images (37.5% of DLP's 8); 1 the other way.")
    tied = readings.confusion_reading(_confusion([[5, 1, 0], [0, 6, 1], [0, 0, 4]]), NAMES)
    assert tied[1].startswith("Tied for the largest: Dyed-lifted-polyps (DLP) predicted as Dyed-resection-margins "
                              "(DRM), 1 image (") and tied[1].endswith("never the other way.")
    assert tied[2].startswith("Tied for the largest: Dyed-resection-margins (DRM) predicted as Polyps (P)")
    assert readings.confusion_reading(_confusion([[2, 0, 0], [0, 3, 0], [0, 0, 0]])) == [
        "All 5 validation images lie on the diagonal: no confusion at all."]


def test_the_auc_reading_counts_classes_near_one_and_names_undefined_ones():
    auc = pd.Series({"Dyed-lifted-polyps": 0.995, "Dyed-resection-margins": 0.93, "Polyps": 1.0,
                     "Macro Avg": 0.975})
    near, macro = readings.auc_reading(auc, 0.625)
    assert near == "2 of 3 classes have a ROC-AUC above 0.99; the lowest: Dyed-resection-margins (0.930)."
    assert macro == "Macro ROC-AUC 0.975 beside an accuracy of 62.5%."
    undefined = readings.auc_reading(auc.replace(1.0, np.nan), 0.5)  # polyps: no curve
    assert undefined[0].startswith("1 of 2 classes") and undefined[-1].startswith("ROC-AUC is undefined for Polyps")


def test_the_figure_readings_count_what_is_shown_and_what_is_missing():
    predictions = pd.DataFrame({"true": [0, 0, 1, 1, 2], "pred": [0, 1, 1, 1, 2]})
    examples = pd.DataFrame({"correct": [True, True, False]})
    assert readings.examples_reading(examples, predictions) == (
        "Shown: 2 of the 4 correct and 1 of the 1 incorrect predictions, drawn at random (seeded by `eval.seed`).")
    assert readings.examples_reading(examples.iloc[:2], predictions.assign(pred=predictions["true"])).startswith(
        "Every one of the 5 validation images is predicted correctly")
    rows = pd.DataFrame({"true": [0, 0, 1, 2], "correct": [True, False, True, True]})
    assert readings.gradcam_reading(rows, CLASSES) == (
        "No incorrect validation prediction of Dyed-resection-margins and Polyps, so their incorrect cell is empty.")


def test_the_evaluation_conclusions_stand_beside_the_paper_only_where_it_reports():
    record = {"accuracy": 0.625, "macro_f1": 0.6, "macro_auc": 0.9, "images": 64}
    assert readings.evaluation_conclusions("resnet50", record, {"accuracy": 0.9263, "macro_f1": 0.93}) == (
        "ResNet50 on this run's 64 validation images: accuracy 62.5% (paper: 92.6%); macro F1 0.600 (paper: 0.930); "
        "macro ROC-AUC 0.900.")


# -- 05, 06 -------------------------------------------------------------------------------------
def _comparison(accuracies, lows, highs, papers=(0.9263, 0.915)):
    return pd.DataFrame({"accuracy": accuracies, "accuracy_ci_low": lows, "accuracy_ci_high": highs,
                         "accuracy_paper": papers}, index=["resnet50", "efficientnet_b0"])


def test_the_comparison_reading_names_the_leader_and_whether_the_intervals_overlap():
    apart = comparison_readings.comparison_reading(_comparison([0.6, 0.8], [0.5, 0.75], [0.7, 0.85]), 0.95)
    assert apart == ["EfficientNet-B0 has the higher accuracy, 80.0% against ResNet50's 60.0% (+20.0 points).",
                     "Their 95% intervals do not overlap: the difference is larger than the resampling noise of these "
                     "validation images."]
    close = comparison_readings.comparison_reading(_comparison([0.6, 0.6], [0.5, 0.5], [0.7, 0.7]), 0.95)
    assert close[0] == "ResNet50 and EfficientNet-B0 have the same accuracy, 60.0%." and "overlap:" in close[1]
    alone = _comparison([0.6, 0.8], [0.5, 0.7], [0.7, 0.9]).iloc[:1]
    assert comparison_readings.comparison_reading(alone, 0.95)[0].startswith("Only ResNet50 is evaluated")
    assert comparison_readings.comparison_reading(alone.iloc[:0], 0.95)[0].startswith("No model is evaluated yet")
    tests = pd.DataFrame({"first": ["resnet50"], "second": ["efficientnet_b0"], "p_value": [0.01]})
    assert comparison_readings.comparison_conclusions(_comparison([0.6, 0.8], [0.5, 0.7], [0.7, 0.9]), tests) == (
        f"On this run, ResNet50 minus EfficientNet-B0 is {MINUS}20.0 points of accuracy (the paper: +1.1 points). "
        "McNemar's p = 0.01: the two differ by more than chance on these images.")


def test_the_sweep_readings_give_intervals_only_from_enough_runs():
    summary = pd.DataFrame({"model": ["resnet50", "efficientnet_b0"], "reading": ["default", "default"],
                            "metric": ["accuracy"] * 2, "mean": [0.6, 0.7], "sd": [0.02, 0.05],
                            "ci_low": [0.55, np.nan], "ci_high": [0.65, np.nan], "n": [3, 2]})
    top, spread, few = comparison_readings.sweep_reading(summary, 0.95)
    assert top == "Highest mean accuracy: EfficientNet-B0, 70.0% over 2 runs (too few runs for an interval)."
    assert spread.startswith("From run to run accuracy varies with a standard deviation of 2.0% to 5.0%")
    assert few == "1 of 2 groups have fewer than 3 runs: too few runs for an interval."
    paired = pd.DataFrame({"first": ["resnet50", "resnet50"], "second": ["efficientnet_b0"] * 2,
                           "reading": ["a", "b"], "mean_difference": [-0.1, 0.01], "ci_low": [-0.15, -0.02],
                           "ci_high": [-0.05, 0.04], "n": [3, 3]})
    ahead, tie = comparison_readings.paired_reading(paired, 0.95)
    assert ahead == (f"ResNet50 minus EfficientNet-B0 (a): {MINUS}10.0 points over 3 seeds, 95% interval "
                     f"[{MINUS}15.0 points, {MINUS}5.0 points]: EfficientNet-B0 is ahead.")
    assert tie.endswith("[−2.0 points, +4.0 points], which contains zero: the runs cannot tell them apart.")
    ablation = pd.DataFrame({"model": ["resnet50"] * 3, "reading": ["default", "a", "b"],
                             "default": [True, False, False], "difference_to_default": [np.nan, -0.1, 0.01],
                             "ci_low": [np.nan, -0.15, -0.02], "ci_high": [np.nan, -0.05, 0.04], "paired_n": [0, 3, 3]})
    assert comparison_readings.ablation_reading(ablation, 0.95) == (
        f"1 of 2 readings move accuracy beyond their 95% interval: ResNet50 with a, {MINUS}10.0 points.")
    few = comparison_readings.ablation_reading(ablation.assign(paired_n=2), 0.95)
    assert few.endswith(": too few runs for an interval.")
    assert comparison_readings.ablation_reading(ablation.iloc[:1], 0.95).startswith("This sweep varies no reading")
    results = pd.DataFrame({"member": ["a", "b"], "status": ["finished", "failed"]})
    assert comparison_readings.sweep_conclusions(results).startswith("1 of 2 runs finished; not finished: b (failed)")


# -- 07, 08 -------------------------------------------------------------------------------------
def test_the_audit_readings_name_the_box_classes_the_largest_drop_and_the_calibration():
    rates = pd.DataFrame({"label": CLASSES, "images": [10, 10, 10], "with_box": [3, 0, 9], "rate": [0.3, 0, 0.9]})
    assert readings.box_rates_reading(rates) == ("2 of 3 classes carry the box in some frames: Polyps 90.0% and "
                                                 "Dyed-lifted-polyps 30.0%.")
    assert readings.box_rates_reading(rates.assign(rate=0.0)).startswith("No frame of any class carries")
    table = pd.DataFrame({"images": [4, 4, 0, 8], "accuracy": [0.5, 1.0, np.nan, 0.75],
                          "masked_accuracy": [0.5, 0.25, np.nan, 0.375]}, index=[*CLASSES, "all"])
    table["change"] = table["masked_accuracy"] - table["accuracy"]
    assert readings.masked_reading(table, "resnet50") == (
        f"ResNet50: masking the box moves accuracy from 75.0% to 37.5% ({MINUS}37.5 points); Dyed-resection-margins "
        f"loses most, {MINUS}75.0 points (100.0% to 25.0% of 4 images).")
    unchanged = table.assign(masked_accuracy=table["accuracy"], change=0.0)
    assert readings.masked_reading(unchanged, "resnet50").endswith("(+0.0 points); no class loses accuracy.")
    reliability = pd.DataFrame({"count": [0, 2, 2], "confidence": [np.nan, 0.5, 0.9], "accuracy": [np.nan, 0.5, 0.5]})
    assert readings.calibration_reading(reliability, "efficientnet_b0", 0.2) == (
        "EfficientNet-B0: mean top-1 confidence 70.0% against accuracy 50.0%, over-confident on average "
        "(+20.0 points); ECE 0.200.")


def test_the_predictions_reading_counts_the_unsure_the_boxed_and_the_near_duplicates():
    predictions = pd.DataFrame({"predicted": ["polyps", "polyps", "dyed-lifted-polyps"],
                                "probability": [0.9, 0.4, 0.45], "guide_box": [True, False, False],
                                "train_near_duplicate": ["a.jpg", np.nan, ""]})
    called, unsure, caveat = readings.predictions_reading(predictions)
    assert called == "3 images; predicted most often as Polyps (2 of them)."
    assert unsure.startswith("2 (66.7%) have a top probability under 50.0%")
    assert caveat.startswith("With the guide box: 1 image; nearly duplicating a training image: 1 image.")
    assert readings.predictions_reading(predictions.iloc[:0]) == ["No image was predicted."]


def test_a_peak_reached_again_after_a_drop_is_not_said_to_be_held():
    history = pd.DataFrame({"epoch": [1, 2, 3], "global_epoch": [1, 2, 3], "stage": ["stage1"] * 3,
                            "train_acc": [.9, .9, .95], "val_acc": [.9, .8, .9], "train_loss": [1, .8, .7],
                            "val_loss": [1, .9, .8]})
    first = readings.epochs_reading(history)[0]
    assert "reached it again in epoch 3" in first and "held" not in first
    held = readings.epochs_reading(history.assign(val_acc=[.8, .9, .9]))[0]
    assert "held it to epoch 3" in held
