"""The HTML gallery of a prediction (``make predict``, notebook 08): every image with the Grad-CAM
map of its predicted class and its three most probable classes, sortable by confidence, and the
files that were skipped with the reason.

Made only from the files the prediction wrote (``predictions.csv``, ``skipped.csv``,
``predict.json`` and the images beside them), so it renders without torch; the page uses no
network and opens from ``file://``; ``embed=True`` puts the images inside the page (a notebook
shows it inline).
"""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pandas as pd

from kvasir_utils import artefacts
from kvasir_utils.analysis.runs import class_names
from kvasir_utils.config import Config
from kvasir_utils.provenance import describe_runtime
from kvasir_utils.report import pages
from kvasir_utils.report.outputs import banner_html

THUMBNAILS, GRADCAM = "thumbnails", "gradcam"
TOP = 3


def image_names(row: int) -> tuple[str, str]:
    """Where row ``row`` of predictions.csv has its image and its Grad-CAM overlay, relative to
    the prediction's folder."""
    return f"{THUMBNAILS}/{row:05d}.jpg", f"{GRADCAM}/{row:05d}.jpg"


def read_prediction(folder: Path) -> tuple[pd.DataFrame, pd.DataFrame, dict]:
    """A prediction's predictions.csv, skipped.csv and predict.json."""
    predictions = pd.read_csv(folder / artefacts.PREDICTIONS, dtype={"file": str, "train_near_duplicate": str})
    skipped = pd.read_csv(folder / artefacts.SKIPPED, dtype=str, keep_default_na=False)
    return predictions, skipped, json.loads((folder / artefacts.PREDICT_RECORD).read_text())


def top_classes(predictions: pd.DataFrame, k: int = TOP) -> list[list[tuple[str, float]]]:
    """Per row, the ``k`` most probable classes with their probabilities, most probable first."""
    classes = class_names(predictions)
    probs = predictions[artefacts.probability_columns(classes)].to_numpy()
    order = (-probs).argsort(axis=1, kind="stable")[:, :k]
    return [[(classes[j], float(row[j])) for j in picks] for row, picks in zip(probs, order)]


def _source(folder: Path, name: str, embed: bool) -> str:
    if not embed:
        return name
    return "data:image/jpeg;base64," + base64.b64encode((folder / name).read_bytes()).decode()


def gallery_items(folder: Path, predictions: pd.DataFrame, embed: bool = False) -> list[dict]:
    """What the template shows of each predicted image."""
    items = []
    for row, (record, top) in enumerate(zip(predictions.to_dict("records"), top_classes(predictions))):
        thumbnail, gradcam = image_names(row)
        near = record["train_near_duplicate"] if isinstance(record["train_near_duplicate"], str) else ""
        items.append({"file": record["file"], "predicted": record["predicted"], "probability": record["probability"],
                      "top": top, "guide_box": bool(record["guide_box"]), "near_duplicate": near,
                      "distance": int(record["train_near_duplicate_distance"]) if near else None,
                      "thumbnail": _source(folder, thumbnail, embed), "gradcam": _source(folder, gradcam, embed)})
    return items


def summary(record: dict, skipped: int) -> str:
    """One paragraph: what was predicted, by which model, where, and what was left out."""
    near = ("Near-duplicates are looked for among the run's training images."
            if record["near_duplicates_checked"] else
            "No near-duplicate check: the run's split or cache is not on this machine.")
    return (f"{record['predicted']} of {record['files']} file(s) in {record['images']} predicted by {record['model']} "
            f"(profile '{record['profile']}', checkpoint {record['checkpoint']}) on "
            f"{describe_runtime(record['runtime'])}; {skipped} skipped. {near}")


def render_gallery(folder: Path, cfg: Config, embed: bool = False) -> str:
    """The gallery page of the prediction in ``folder`` (``reports/<profile>/predict/<name>/``);
    ``embed=True``: the part of it a notebook shows, its images inside and its styles its own."""
    predictions, skipped, record = read_prediction(folder)
    card = pages.rel(cfg.report.model_dir(record["model"]) / "model_card.md", folder)
    return pages.render("gallery.html.j2",
        standalone=not embed, title=f"{record['model']}: predictions for {record['name']}",
        banner=banner_html(cfg, f"Predictions of {record['model']}, trained in profile '{record['profile']}'."),
        summary=summary(record, len(skipped)),
        card=card,
        skipped=skipped.to_dict("records"), items=gallery_items(folder, predictions, embed))
