"""Cross-dataset evaluation as tables: a class mapping from a target dataset's classes to the
classes a model was trained on, the target's images it lets through (and the classes it leaves
out), and the scores on the target with and without the images that have a near-identical frame
in the model's training set, beside the model's own validation numbers.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from kvasir_utils.analysis import metrics
from kvasir_utils.config import CONFIG_DIR
from kvasir_utils.errors import KvasirError
from kvasir_utils.profiles import read_yaml

MAPPING_DIR = CONFIG_DIR / "mappings"


@dataclass
class ClassMapping:
    """Target class folder -> the source class it counts as (``configs/mappings/<target>-to-<source>.yaml``)."""

    source: str
    target: str
    classes: dict[str, str]
    path: Path


def mapping_path(source_dataset: str, target_dataset: str) -> Path:
    return MAPPING_DIR / f"{target_dataset}-to-{source_dataset}.yaml"


def read_mapping(path: Path) -> ClassMapping:
    """A mapping file: ``source``, ``target`` (``data.dataset`` values) and ``classes`` (target: source)."""
    if not path.is_file():
        known = ", ".join(sorted(p.name for p in MAPPING_DIR.glob("*.yaml"))) or "none"
        raise KvasirError(f"no class mapping {path}: write one (target class folder: source class, under `classes:`) "
                          f"or give another with --mapping; known mappings: {known}")
    raw = read_yaml(path, "class mapping")
    classes = raw.get("classes")
    if not isinstance(classes, dict) or not classes or not all(isinstance(v, str) for v in classes.values()):
        raise KvasirError(f"class mapping {path} needs `classes:`, a mapping of target class folder to source class")
    return ClassMapping(str(raw.get("source", "")), str(raw.get("target", "")), dict(classes), path)


def check_mapping(mapping: ClassMapping, source_classes: list[str], target_classes: list[str]) -> None:
    """Every class the mapping names exists in the model's classes (source) and the target dataset."""
    unknown_source = sorted(set(mapping.classes.values()) - set(source_classes))
    unknown_target = sorted(set(mapping.classes) - set(target_classes))
    problems = [f"source class(es) the model was not trained on: {', '.join(unknown_source)}"] if unknown_source else []
    problems += [f"target class(es) not in the target dataset: {', '.join(unknown_target)}"] if unknown_target else []
    if problems:
        raise KvasirError(f"class mapping {mapping.path} does not fit these runs: {'; '.join(problems)}. Fix the "
                          "mapping, or choose the RUN and TARGET it was written for")


def map_images(images: pd.DataFrame, mapping: ClassMapping,
               source_classes: list[str]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The target's images (``path``, ``label``) the mapping lets through, with ``source_label`` and
    ``true`` (its index in ``source_classes``); and the classes left out, with their image counts."""
    mapped = images[images["label"].isin(mapping.classes)].reset_index(drop=True)
    mapped = mapped.assign(source_label=mapped["label"].map(mapping.classes))
    mapped["true"] = mapped["source_label"].map({name: i for i, name in enumerate(source_classes)}).astype(int)
    left = images.loc[~images["label"].isin(mapping.classes), "label"]
    left_out = left.value_counts(sort=False).rename_axis("class").rename("images").reset_index()
    return mapped, left_out


def mapping_table(mapped: pd.DataFrame) -> pd.DataFrame:
    """Per target class: the source class it counts as, its images and how many overlap the training set."""
    grouped = mapped.groupby("label", sort=False)
    return pd.DataFrame({"source_class": grouped["source_label"].first(), "images": grouped.size(),
                         "overlap": grouped["overlap"].sum().astype(int)}).rename_axis("target_class").reset_index()


def _scores(frame: pd.DataFrame, classes: list[str], prefix: str) -> dict:
    """Accuracy, macro F1 over the classes the images show (a source class without a counterpart in
    the target would count as F1 0 otherwise) and the multi-class MCC."""
    from sklearn.metrics import matthews_corrcoef  # imported here, as in metrics

    if frame.empty:
        return {f"{prefix}images": 0, f"{prefix}accuracy": np.nan, f"{prefix}macro_f1": np.nan, f"{prefix}mcc": np.nan}
    y_true, y_pred = frame["true"].to_numpy(), frame["pred"].to_numpy()
    table = metrics.classification_table(y_true, y_pred, classes)
    return {f"{prefix}images": int(len(frame)), f"{prefix}accuracy": metrics.accuracy(y_true, y_pred),
            f"{prefix}macro_f1": float(table["F1-Score"].iloc[sorted(set(y_true))].mean()),
            f"{prefix}mcc": float(matthews_corrcoef(y_true, y_pred))}


def cross_summary(predictions: dict[str, pd.DataFrame], source_records: dict[str, dict],
                  classes: list[str]) -> pd.DataFrame:
    """One row per model: its validation accuracy and macro F1 on its own dataset, then on the
    target: all mapped images, the ones with a near-identical frame in its training set
    (``overlap_images``), and the score without them (the honest generalisation number)."""
    rows = {}
    for model, frame in predictions.items():
        record = source_records.get(model, {})
        rows[model] = {"source_accuracy": record.get("accuracy", np.nan),
                       "source_macro_f1": record.get("macro_f1", np.nan), **_scores(frame, classes, "target_"),
                       "overlap_images": int(frame["overlap"].sum()),
                       **_scores(frame[~frame["overlap"]], classes, "target_without_overlap_")}
    summary = pd.DataFrame(rows).T
    counts = [c for c in summary.columns if c.endswith("images")]
    return summary.astype({c: int for c in counts}).astype({c: float for c in summary.columns if c not in counts})


def cross_tables(frame: pd.DataFrame, source_classes: list[str]) -> dict[str, pd.DataFrame]:
    """Table 1 and Table 2 on the target (in the source's classes), and Table 1 without the overlap."""
    clean = frame[~frame["overlap"]]
    return {"table1": metrics.classification_table(frame["true"], frame["pred"], source_classes),
            "table2": metrics.confusion_table(frame["true"], frame["pred"], source_classes),
            "table1_without_overlap": metrics.classification_table(clean["true"], clean["pred"], source_classes)}
