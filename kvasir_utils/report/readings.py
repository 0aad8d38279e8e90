"""How to read this run's result: the one to three sentences a notebook shows after a table or a
figure, naming what this run's numbers say (the best and the weakest class, the largest confusion,
the epoch where validation accuracy peaked ...), and each notebook's closing conclusions, for one
model's data, training, evaluation, audit and predictions (notebooks 01-04, 07, 08; the models
compared, 05 and 06, are ``comparison_readings``'). Pure functions of the tables the notebooks
already hold, in the house number style (``formats``); what a table *is* and what to look for in it
is the notebook's own markdown, written once there. A class with no validation image, ties and an
all-correct run read as what they are."""

from __future__ import annotations

import numpy as np
import pandas as pd

from kvasir_utils.analysis.labels import display_name
from kvasir_utils.analysis.metrics import AVERAGE_ROWS, MACRO_AVG
from kvasir_utils.artefacts import STAGES
from kvasir_utils.report.formats import model_name, number

HIGH_AUC = 0.99  # "near 1": the ROC-AUC reading counts the classes above it
FLAT = 0.01  # a validation loss that ends within 1% of its lowest has not clearly risen
UNSURE = 0.5  # a top-1 probability below it: the model gives its own answer less than even odds


# -- words --------------------------------------------------------------------------------------
def _listed(names) -> str:
    """``A``, ``A and B``, ``A, B and C``."""
    names = [str(n) for n in names]
    if len(names) < 2:
        return "".join(names)
    return ", ".join(names[:-1]) + " and " + names[-1]


def _pct(value) -> str:
    return number(value, "percent")


def _score(value) -> str:
    return number(value, "score")


def _count(value) -> str:
    return number(value, "count")


def _tied(values: pd.Series, value: float) -> list:
    """The index entries of ``values`` equal to ``value`` (a tie names them all)."""
    return list(values.index[np.isclose(values.to_numpy(float), value, rtol=0, atol=1e-12)])


def _has(count: int) -> str:
    return "has" if count == 1 else "have"


def _plural(count, noun: str) -> str:
    """``1 image``, ``3 images``."""
    return f"{_count(count)} {noun}{'' if count == 1 else 's'}"


# -- 01: the data -------------------------------------------------------------------------------
def resolutions_reading(resolutions: pd.DataFrame) -> str:
    """The dataset check's ``resolution``/``images`` table: how many sizes, and the commonest."""
    total = int(resolutions["images"].sum())
    if not total:
        return "No image could be read."
    top = resolutions.loc[resolutions["images"].idxmax()]
    if len(resolutions) == 1:
        return f"All {_count(total)} readable images are {top['resolution']} pixels."
    return (f"The {_count(total)} readable images come in {len(resolutions)} resolutions; the commonest, "
            f"{top['resolution']} pixels, holds {_pct(top['images'] / total)} of them.")


def split_reading(counts: pd.DataFrame) -> list[str]:
    """The split's class counts (``data.split.split_counts``: ``train``, ``val`` per class and a
    ``total`` row): the two sides' sizes, and how evenly the classes reach validation."""
    classes, total = counts.drop(index="total"), counts.loc["total"]
    whole = total["train"] + total["val"]
    share = f" ({_pct(total['val'] / whole)} of {_count(whole)})" if whole else ""
    sentences = [f"{_count(total['train'])} images for training and {_count(total['val'])} for validation{share}."]
    val = classes["val"]
    if val.min() == val.max():
        sentences.append(f"Every class has {_count(val.max())} validation images.")
    else:
        low, high = (_listed(display_name(c) for c in _tied(val, v)) for v in (val.min(), val.max()))
        sentences.append(f"Validation images per class range from {_count(val.min())} ({low}) to "
                         f"{_count(val.max())} ({high}).")
    if (empty := [display_name(c) for c in val.index[val == 0]]):
        sentences.append(f"{_listed(empty)} {_has(len(empty))} no validation image: Table 1's zeros for "
                         f"{'it' if len(empty) == 1 else 'them'} in notebook 04 will mean no data, not failure.")
    return sentences


def data_conclusions(counts: pd.DataFrame, pairs: int) -> str:
    """Notebook 01's close: the images, classes and sides, and the near-duplicate pairs found."""
    classes, total = counts.drop(index="total"), counts.loc["total"]
    return (f"This run's data: {_count(total['total'])} images of {len(classes)} classes, "
            f"{_count(total['train'])} to train on and {_count(total['val'])} to validate on; "
            f"{_count(pairs)} near-duplicate pair{'' if pairs == 1 else 's'} found among them.")


# -- 02, 03: training ---------------------------------------------------------------------------
def trainable_reading(table: pd.DataFrame) -> str:
    """``train.models.trainable_table`` (a ``total`` row last): how much of the model trains, and where."""
    modules, total = table[table["module"] != "total"], table.iloc[-1]
    trained = modules[modules["trainable"] > 0]
    if not total["trainable"]:
        return f"None of the {_count(total['parameters'])} parameters is trainable."
    if total["trainable"] == total["parameters"]:
        return f"All {_count(total['parameters'])} parameters train, in every one of the {len(modules)} modules."
    where = (_listed(f"`{row.module}` ({_count(row.trainable)} of {_count(row.parameters)})"
                     for row in trained.itertuples()) if len(trained) <= 4
             else f"{len(trained)} of the {len(modules)} modules")
    return (f"{_count(total['trainable'])} of {_count(total['parameters'])} parameters "
            f"({_pct(total['trainable'] / total['parameters'])}) train: {where}; the rest keep their weights.")


def _epoch(history: pd.DataFrame, row: int) -> str:
    """``epoch 4``, or ``epoch 4 (fine-tuning)`` where the history holds both stages."""
    words = f"epoch {int(history['global_epoch'].iloc[row])}"
    if "stage" in history and history["stage"].nunique() > 1 and history["stage"].iloc[row] == STAGES[-1]:
        words += " (fine-tuning)"
    return words


def epochs_reading(history: pd.DataFrame) -> list[str]:
    """One stage's or both stages' history (``global_epoch``, ``train_loss``, ``train_acc``,
    ``val_loss``, ``val_acc``; ``stage`` for both): where validation accuracy peaked, whether
    validation loss rose after its lowest point, and the last epoch's gap between training and
    validation accuracy."""
    history = history.sort_values("global_epoch").reset_index(drop=True)
    if history.empty:
        return ["No epoch has finished."]
    last = len(history) - 1
    gap = history["train_acc"].iloc[last] - history["val_acc"].iloc[last]
    gap_words = (f"training accuracy {_pct(history['train_acc'].iloc[last])}, validation "
                 f"{_pct(history['val_acc'].iloc[last])}: a gap of {number(gap, 'points')} (training minus validation)")
    if last == 0:
        return [f"One epoch, so no trend to read: {gap_words}."]
    accuracy, loss = history["val_acc"], history["val_loss"]
    best = int(accuracy.to_numpy().argmax())  # the first epoch that reached the highest
    if accuracy.max() == accuracy.min():
        sentences = [f"Validation accuracy stayed at {_pct(accuracy.max())} in all {len(history)} epochs."]
    elif accuracy.iloc[last] == accuracy.max():
        sentences = [f"Validation accuracy reached its highest, {_pct(accuracy.max())}, in {_epoch(history, best)}"
                     + (", the last." if best == last else
                        f" and held it to {_epoch(history, last)}." if (accuracy.iloc[best:] == accuracy.max()).all()
                        else f" and reached it again in {_epoch(history, last)}, the last.")]
    else:
        sentences = [f"Validation accuracy peaked at {_pct(accuracy.max())} in {_epoch(history, best)} and ended at "
                     f"{_pct(accuracy.iloc[last])} in {_epoch(history, last)}."]
    lowest = int(loss.to_numpy().argmin())
    if lowest == last:
        sentences.append(f"Validation loss was lowest in the last epoch ({_score(loss.iloc[last])}): "
                         "it had not begun to rise.")
    elif loss.iloc[last] - loss.iloc[lowest] < FLAT * abs(loss.iloc[lowest]):
        sentences.append(f"Validation loss was lowest in {_epoch(history, lowest)} ({_score(loss.iloc[lowest])}) and "
                         f"ended within {FLAT:.0%} of it ({_score(loss.iloc[last])}): no clear rise.")
    else:
        kept_falling = history["train_loss"].iloc[last] < history["train_loss"].iloc[lowest]
        sentences.append(
            f"Validation loss was lowest in {_epoch(history, lowest)} ({_score(loss.iloc[lowest])}) "
            f"and rose to {_score(loss.iloc[last])} by {_epoch(history, last)}"
            + (", while training loss kept falling: the pattern of overfitting." if kept_falling else "."))
    sentences.append(f"In the last epoch, {gap_words}.")
    return sentences


def stage_conclusions(history: pd.DataFrame, stage: str) -> str:
    """Notebooks 02 and 03's close: how the stage ended, and what the next step starts from."""
    name = f"Stage {STAGES.index(stage) + 1}"
    if history.empty:
        return f"{name} has no finished epoch."
    last = history.sort_values("global_epoch").iloc[-1]
    return (f"{name} ended after {len(history)} epoch{'' if len(history) == 1 else 's'} at "
            f"{_pct(last['val_acc'])} validation accuracy (best {_pct(history['val_acc'].max())}); what follows "
            "uses the weights of its last epoch, not of its best.")


# -- 04: evaluation -----------------------------------------------------------------------------
def table1_reading(table1: pd.DataFrame) -> list[str]:
    """Table 1 (``metrics.classification_table``): the best and the weakest class by F1 against the
    macro average, whether the weakest is missed or over-called, and classes with no validation image."""
    rows = table1.drop(index=list(AVERAGE_ROWS), errors="ignore")
    present, empty = rows[rows["Support"] > 0], list(rows.index[rows["Support"] == 0])
    sentences = []
    if present.empty:
        sentences.append("No class has a validation image: Table 1 has nothing to read.")
    elif (f1 := present["F1-Score"]).max() == f1.min():
        sentences.append(f"Every class with validation images has the same F1, {_score(f1.max())}.")
    else:
        best, weakest = _tied(f1, f1.max()), _tied(f1, f1.min())
        macro = f", against a macro average of {_score(table1.loc[MACRO_AVG, 'F1-Score'])}" \
            if MACRO_AVG in table1.index else ""
        sentences.append(f"Best F1: {_listed(best)} ({_score(f1.max())}); weakest: {_listed(weakest)} "
                         f"({_score(f1.min())}){macro}.")
        if len(weakest) == 1:
            row = present.loc[weakest[0]]
            precision, recall = _score(row["Precision"]), _score(row["Recall"])
            if row["Recall"] < row["Precision"]:
                sentences.append(f"The recall of {weakest[0]} ({recall}) is below its precision ({precision}): the "
                                 "model misses its images more often than it gives its name to others.")
            elif row["Precision"] < row["Recall"]:
                sentences.append(f"The precision of {weakest[0]} ({precision}) is below its recall ({recall}): the "
                                 "model gives its name to other classes' images more often than it misses its own.")
    if empty:
        sentences.append(f"{_listed(empty)} {_has(len(empty))} no validation image: "
                         f"{'its' if len(empty) == 1 else 'their'} zeros mean no data, not failure.")
    return sentences


def confusion_reading(table2: pd.DataFrame, names: dict[str, str] | None = None) -> list[str]:
    """Table 2 (counts, rows true, columns predicted, by abbreviation; ``names``: abbreviation ->
    class): how many images lie off the diagonal, and the largest confusion with its reverse."""
    counts = table2.to_numpy()
    total, wrong = int(counts.sum()), int(counts.sum() - np.trace(counts))
    if not total:
        return ["No validation image was predicted."]
    if not wrong:
        return [f"All {_count(total)} validation images lie on the diagonal: no confusion at all."]
    names = names or {}
    called = {short: f"{display_name(names[short])} ({short})" if short in names else short for short in table2.index}
    off = counts.copy()
    np.fill_diagonal(off, 0)
    top = off.max()
    pairs = [(table2.index[i], table2.columns[j], off[j, i]) for i, j in np.argwhere(off == top)]
    sentences = [f"{_count(wrong)} of {_count(total)} validation images ({_pct(wrong / total)}) lie off the diagonal."]
    for true, predicted, reverse in pairs[:3]:
        images = int(counts[table2.index.get_loc(true)].sum())
        sentences.append(f"{'The largest confusion' if len(pairs) == 1 else 'Tied for the largest'}: "
                         f"{called[true]} predicted as {called[predicted]}, {_plural(top, 'image')} "
                         f"({_pct(top / images)} of {true}'s {_count(images)}); "
                         + (f"{_count(reverse)} the other way." if reverse else "never the other way."))
    if len(pairs) > 3:
        sentences.append(f"{len(pairs) - 3} more pairs of classes are confused {_count(top)} times each.")
    return sentences


def auc_reading(auc: pd.Series, accuracy: float) -> list[str]:
    """ROC-AUC per class and ``Macro Avg`` (``metrics.roc_auc_table``) beside the accuracy: how many
    classes are near 1, the lowest, and the classes that have no curve."""
    per_class = auc.drop(index=[MACRO_AVG], errors="ignore")
    defined, undefined = per_class.dropna(), list(per_class.index[per_class.isna()])
    sentences = []
    if len(defined):
        lowest = _tied(defined, defined.min())
        sentences.append(f"{(defined > HIGH_AUC).sum()} of {len(defined)} classes have a ROC-AUC above {HIGH_AUC}; "
                         f"the lowest: {_listed(lowest)} ({_score(defined.min())}).")
        if MACRO_AVG in auc.index:
            sentences.append(f"Macro ROC-AUC {_score(auc[MACRO_AVG])} beside an accuracy of {_pct(accuracy)}.")
    if undefined:
        sentences.append(f"ROC-AUC is undefined for {_listed(undefined)}: a curve needs validation images of the "
                         "class and of others.")
    return sentences


def examples_reading(examples: pd.DataFrame, predictions: pd.DataFrame) -> str:
    """Figure 1's draw (``runs.pick_examples``) against every prediction it was drawn from."""
    right = predictions["true"] == predictions["pred"]
    shown_right = int(examples["correct"].sum())
    if right.all():
        return (f"Every one of the {_count(len(right))} validation images is predicted correctly: the figure has "
                f"no incorrect row; it shows {_count(shown_right)} of them.")
    return (f"Shown: {_count(shown_right)} of the {_count(right.sum())} correct and "
            f"{_count(len(examples) - shown_right)} of the {_count((~right).sum())} incorrect predictions, drawn at "
            "random (seeded by `eval.seed`).")


def gradcam_reading(rows: pd.DataFrame, classes: list[str]) -> str:
    """Figure 3's rows (``runs.pick_examples_per_class``): the classes whose correct or incorrect cell is empty."""
    missing = {kind: [display_name(name) for i, name in enumerate(classes)
                      if not ((rows["true"] == i) & (rows["correct"] == correct)).any()]
               for kind, correct in (("incorrect", False), ("correct", True))}
    if not any(missing.values()):
        return "Every class has a correct and an incorrect example."
    return " ".join(f"No {kind} validation prediction of {_listed(found)}, so {'its' if len(found) == 1 else 'their'} "
                    f"{kind} cell is empty." for kind, found in missing.items() if found)


def evaluation_conclusions(model: str, record: dict, reported: dict) -> str:
    """Notebook 04's close: the headline numbers of ``metrics.json`` beside the paper's where it gives them."""
    parts = []
    for key, words, kind in (("accuracy", "accuracy", "percent"), ("macro_f1", "macro F1", "score"),
                             ("macro_auc", "macro ROC-AUC", "score")):
        paper = f" (paper: {number(reported[key], kind)})" if reported.get(key) is not None else ""
        parts.append(f"{words} {number(record[key], kind)}{paper}")
    return (f"{model_name(model)} on this run's {_count(record['images'])} validation images: "
            + "; ".join(parts) + ".")


# -- 07: the audit ------------------------------------------------------------------------------
def box_rates_reading(box_rates: pd.DataFrame) -> str:
    """``audit.guide_box_rates``: which classes carry the guide box, and how often."""
    carrying = box_rates[box_rates["rate"] > 0].sort_values("rate", ascending=False)
    if carrying.empty:
        return "No frame of any class carries the guide box: masking it can change nothing."
    rates = _listed(f"{display_name(row.label)} {_pct(row.rate)}" for row in carrying.itertuples())
    return f"{len(carrying)} of {len(box_rates)} classes carry the box in some frames: {rates}."


def masked_reading(table: pd.DataFrame, model: str) -> str:
    """``audit.masked_table`` of one model: the overall change with the box masked, and the class
    that loses most (change = ``audit.MASKED_CHANGE``)."""
    overall, classes = table.loc["all"], table.drop(index="all").dropna(subset=["change"])
    text = (f"{model_name(model)}: masking the box moves accuracy from {_pct(overall['accuracy'])} to "
            f"{_pct(overall['masked_accuracy'])} ({number(overall['change'], 'points')})")
    if classes.empty or classes["change"].min() >= 0:
        return text + "; no class loses accuracy."
    worst = _tied(classes["change"], classes["change"].min())
    row = classes.loc[worst[0]]
    return (text + f"; {_listed(display_name(c) for c in worst)} {'loses' if len(worst) == 1 else 'lose'} most, "
            f"{number(row['change'], 'points')}" + (f" ({_pct(row['accuracy'])} to {_pct(row['masked_accuracy'])} of "
                                                   f"{_count(row['images'])} images)." if len(worst) == 1 else "."))


def calibration_reading(table: pd.DataFrame, model: str, ece: float) -> str:
    """``metrics.reliability_table`` of one model: its mean top-1 confidence against its accuracy."""
    counts = table["count"].to_numpy(float)
    if not counts.sum():
        return f"{model_name(model)}: no prediction to calibrate."
    confidence = np.nansum(counts * table["confidence"].to_numpy(float)) / counts.sum()
    accuracy = np.nansum(counts * table["accuracy"].to_numpy(float)) / counts.sum()
    difference = confidence - accuracy
    tendency = ("over-confident" if difference > 0 else "under-confident") if abs(difference) >= 0.0005 \
        else "as confident as it is right"
    return (f"{model_name(model)}: mean top-1 confidence {_pct(confidence)} against accuracy {_pct(accuracy)}, "
            f"{tendency} on average ({number(difference, 'points')}); ECE {_score(ece)}.")


# -- 08: new images -----------------------------------------------------------------------------
def predictions_reading(predictions: pd.DataFrame) -> list[str]:
    """``predictions.csv`` of ``make predict``: what the model called most, how many it is unsure
    of, and how many carry the guide box or nearly duplicate a training image."""
    if predictions.empty:
        return ["No image was predicted."]
    called = predictions["predicted"].value_counts()
    top = _tied(called, called.max())
    unsure = int((predictions["probability"] < UNSURE).sum())
    most = _listed(display_name(c) for c in top)
    sentences = [f"{_plural(len(predictions), 'image')}; predicted most often as {most} "
                 f"({_count(called.max())} {'each' if len(top) > 1 else 'of them'}).",
                 f"{_count(unsure)} ({_pct(unsure / len(predictions))}) have a top probability under {_pct(UNSURE)}: "
                 "the model gives its own answer less than even odds."]
    box = int(predictions["guide_box"].astype(bool).sum())
    twins = int(predictions["train_near_duplicate"].fillna("").astype(str).ne("").sum())
    sentences.append(f"With the guide box: {_plural(box, 'image')}; nearly duplicating a training image: "
                     f"{_plural(twins, 'image')}. A prediction on either says less about new patients.")
    return sentences
