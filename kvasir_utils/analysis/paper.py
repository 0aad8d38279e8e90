"""The paper's reported numbers as data, and where its text is open to more than one reading."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from kvasir_utils.analysis.metrics import accuracy, classification_table
from kvasir_utils.datasets import KVASIR_V2_ABBREVIATIONS, KVASIR_V2_CLASSES, citation, display_name, terms

# Table 1: per-class performance on the validation set.
TABLE1 = pd.DataFrame(
    [
        [0.9299, 0.9803, 0.9544, 0.9893, 203],
        [0.9836, 0.9231, 0.9524, 0.9979, 195],
        [0.9317, 0.7212, 0.8130, 0.9921, 208],
        [0.9615, 0.9756, 0.9685, 0.9943, 205],
        [0.9760, 1.0000, 0.9878, 0.9964, 203],
        [0.7412, 0.9389, 0.8284, 0.9585, 180],
        [0.9797, 0.9234, 0.9507, 0.9971, 209],
        [0.9353, 0.9543, 0.9447, 0.9907, 197],
        [0.9300, 0.9269, 0.9250, 0.9895, 1600],
        [0.9308, 0.9263, 0.9250, np.nan, 1600],
    ],
    index=[display_name(c) for c in KVASIR_V2_CLASSES] + ["Macro Avg", "Weighted Avg"],
    columns=["Precision", "Recall", "F1-Score", "Specificity", "Support"],
)


# Table 2: confusion matrix, rows true, columns predicted.
TABLE2 = pd.DataFrame(
    [
        [199, 3, 0, 0, 0, 0, 0, 1],
        [15, 180, 0, 0, 0, 0, 0, 0],
        [0, 0, 150, 0, 0, 58, 0, 0],
        [0, 0, 0, 200, 0, 0, 2, 3],
        [0, 0, 0, 0, 203, 0, 0, 0],
        [0, 0, 11, 0, 0, 169, 0, 0],
        [0, 0, 0, 3, 3, 1, 193, 9],
        [0, 0, 0, 5, 2, 0, 2, 188],
    ],
    index=list(KVASIR_V2_ABBREVIATIONS.values()), columns=list(KVASIR_V2_ABBREVIATIONS.values()),
)


# Section 4.2: "ROC-AUC scores yield a macro-average of 0.98, with [Normal-pylorus] at 1.00 and [Esophagitis] at
# 0.92" (the classes in brackets as the tables write them).
ROC_AUC = {"Normal-pylorus": 1.00, "Esophagitis": 0.92, "Macro Avg": 0.98}
MODELS = {
    # Section 4: "validation accuracy of 92.63%"; macro F1 from Table 1; macro ROC-AUC from Section 4.2.
    "resnet50": {"accuracy": 0.9263, "macro_f1": TABLE1.loc["Macro Avg", "F1-Score"],
                 "macro_auc": ROC_AUC["Macro Avg"]},
    # Section 4.3: "EfficientNet-B0 ... achieves 91.50% validation accuracy and a macro-average F1-score of 0.9150".
    "efficientnet_b0": {"accuracy": 0.9150, "macro_f1": 0.9150, "macro_auc": np.nan},
}


# What the paper reports per model: only ResNet50 has per-class tables.
REPORTED = {"resnet50": {"table1": TABLE1, "table2": TABLE2, "roc_auc": pd.Series(ROC_AUC, name="ROC-AUC").to_frame()}}


def comparable(classes: list[str]) -> bool:
    """Whether the paper's numbers can stand beside a run's: only a run on Kvasir v2's eight classes
    (or data shaped like them) is compared with them."""
    return list(classes) == KVASIR_V2_CLASSES


def reported(model: str, classes: list[str]) -> dict:
    """The paper's tables for ``model`` where they can stand beside a run's ({} for other classes)."""
    return REPORTED.get(model, {}) if comparable(classes) else {}


def reported_metrics(model: str, classes: list[str]) -> dict:
    """The paper's accuracy, macro F1 and macro ROC-AUC for ``model`` where they can stand beside a
    run's ({} for other classes)."""
    return MODELS.get(model, {}) if comparable(classes) else {}


# Section 4.1: "a 2.5% accuracy improvement during fine-tuning".
FINE_TUNING_GAIN = 0.025
@dataclass(frozen=True)
class Ambiguity:
    """A choice the paper leaves open: the setting that makes it, the paper's words, the reading
    the protocol uses (``configs/paper.yaml``) and the others the study offers."""

    setting: str
    paper_says: str
    default: str
    others: str = ""


# Every choice the paper leaves open, in one place: the reports' readings table and
# docs/paper-readings.md are made from it, and a test holds paper.yaml's AMBIGUOUS comments to it.
AMBIGUITIES = [
    Ambiguity("split.seed", "ensuring balanced class distribution", "stratified split, seed 42", "any seed"),
    Ambiguity("transforms.brightness", "Brightness and contrast adjustments (±0.2)",
              "ColorJitter factors drawn from [0.8, 1.2] (contrast alike)"),
    Ambiguity("transforms.crop_scale", "Random cropping and resizing to 224x224 pixels",
              "RandomResizedCrop with torchvision's scale [0.08, 1]", "any range"),
    Ambiguity("transforms.eval_resize", "resizing to 224x224 pixels",
              "squash: validation images resized straight to 224x224", "center_crop: short side, then the centre"),
    Ambiguity("train.weights", "Initialize M with ImageNet weights", "IMAGENET1K_V1 (the paper names no version)",
              "IMAGENET1K_V2, null (random initialisation)"),
    Ambiguity("train.stage1.trainable", "Train M on D_train with frozen weights",
              "head: everything frozen but the new final layer", "any reading of train.stage2.trainable"),
    Ambiguity("train.stage2.trainable", "the last 10 layers unfrozen",
              "last_tensors:10 (the last 10 parameter tensors)", "block:layer4.2 (Keras' meaning), module:<name>, all"),
    Ambiguity("train.stage2.lr", "learning rate η = 10^-4", "1e-4 for fine-tuning too (not given separately)"),
    Ambiguity("train.stage2_init", "Stage 2: Fine-Tuning", "fresh_optimizer: a new Adam for stage 2",
              "continue_optimizer: stage 1's Adam state carried on"),
    Ambiguity("train.frozen_batchnorm", "with frozen weights", "eval: frozen BatchNorm layers keep their statistics",
              "train: they keep updating"),
    Ambiguity("train.seed", "(no seed is given)", "42, for initialisation, shuffling and augmentation", "any seed"),
]


def setting_value(config: dict, dotted: str):
    node = config
    for key in dotted.split("."):
        node = node[key]
    return node


def readings_table(config: dict) -> pd.DataFrame:
    """The paper's ambiguous choices, the protocol's reading, the others, and the value this run used."""
    return pd.DataFrame(
        [{"setting": a.setting, "paper_words": a.paper_says, "default": a.default, "others": a.others,
          "value": setting_value(config, a.setting)} for a in AMBIGUITIES]
    )


def readings_markdown() -> str:
    """The table of docs/paper-readings.md, made from ``AMBIGUITIES``."""
    rows = [f"| `{a.setting}` | \"{a.paper_says}\" | {a.default} | {a.others} |" for a in AMBIGUITIES]
    return "\n".join(["| setting | the paper says | default reading | other readings |", "|---|---|---|---|", *rows])


def side_by_side(ours: pd.DataFrame, reported: pd.DataFrame) -> pd.DataFrame:
    """Columns (metric, paper | run | difference) for every metric both tables have; run - paper,
    except for ``Support``, whose counts belong to validation sets of different sizes."""
    index = ours.index.append(reported.index.difference(ours.index))
    parts = {}
    for column in [c for c in reported.columns if c in ours.columns]:
        mine, theirs = ours[column].reindex(index), reported[column].reindex(index)
        difference = mine - theirs if column != "Support" else pd.Series(np.nan, index=index)
        parts[column] = pd.DataFrame({"paper": theirs, "run": mine, "difference": difference})
    return pd.concat(parts, axis=1)


def versus(ours: pd.DataFrame, reported: pd.DataFrame | None) -> pd.DataFrame:
    """``side_by_side`` where the paper reports this table; this run's table alone where it does not."""
    return ours if reported is None else side_by_side(ours, reported)


def expand_confusion(confusion: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Label vectors that reproduce a confusion matrix exactly."""
    counts = confusion.to_numpy()
    true = np.repeat(np.arange(len(counts)), counts.sum(axis=1))
    pred = np.concatenate([np.repeat(np.arange(len(counts)), row) for row in counts])
    return true, pred


def consistency_notes() -> list[str]:
    """Where the paper's numbers disagree with each other (Table 1 recomputed from Table 2)."""
    true, pred = expand_confusion(TABLE2)
    recomputed = classification_table(true, pred, KVASIR_V2_CLASSES)
    notes = []
    for row in TABLE1.index:
        for column in TABLE1.columns:
            stated, derived = TABLE1.loc[row, column], recomputed.loc[row, column]
            if not (np.isnan(stated) and np.isnan(derived)) and abs(stated - derived) > 0.00051:
                notes.append(f"Table 1 {row} {column} is {stated:g}; Table 2 gives {derived:.4f}")
    acc = accuracy(true, pred)
    stated = MODELS["resnet50"]["accuracy"]
    if abs(acc - stated) > 0.00005:
        notes.append(f"the stated accuracy {stated:.4f} differs from Table 2's {acc:.4f}")
    eff = MODELS["efficientnet_b0"]
    if eff["accuracy"] == eff["macro_f1"]:
        notes.append("EfficientNet-B0's accuracy (91.50%) and macro F1 (0.9150) are stated as the same number; "
                     "possible for a balanced set but not usual; no per-class table is given to check it")
    per_class = ", ".join(f"{name.lower()} {auc:.2f}" for name, auc in ROC_AUC.items() if name != "Macro Avg")
    notes.append(f"ROC-AUC is reported for two classes only ({per_class}) and the macro average "
                 f"({ROC_AUC['Macro Avg']:.2f}), to two decimals")
    return notes


# What a run cites: the paper, then its dataset (the dataset's citation and terms are dataset facts).
PAPER_CITATION = (
    "Cruz, A. (2025). Advanced Classification of Gastrointestinal Endoscopy Images Using Transfer Learning "
    "with ResNet50 on the Kvasir v2 Dataset. (The paper this study reproduces.)")


def citations(dataset: str = "kvasir-v2") -> list[str]:
    """What a run on ``dataset`` (``data.dataset``) cites: the paper, and the dataset where it is a public one."""
    cited = citation(dataset)
    return [PAPER_CITATION] if cited is None else [PAPER_CITATION, cited]


dataset_terms = terms  # where the notebooks and reports read a dataset's terms
