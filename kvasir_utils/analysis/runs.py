"""What a run wrote, read back: each model's predictions and metrics (notebook 04), the per-epoch
history and its TensorBoard scalars.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from kvasir_utils import artefacts
from kvasir_utils.artefacts import STAGES
from kvasir_utils.config import Config
from kvasir_utils.errors import KvasirError

HISTORY_COLUMNS = ["epoch", "global_epoch", "train_loss", "train_acc", "val_loss", "val_acc",
                   "seconds", "images_per_s", "val_images_per_s", "lr"]


# TensorBoard scalar tag -> history.csv column: what training logs and what the figures read back.
SCALAR_TAGS = {"loss/train": "train_loss", "loss/val": "val_loss",
               "accuracy/train": "train_acc", "accuracy/val": "val_acc"}


def read_history(cfg: Config, model_name: str, stages: tuple[str, ...] = STAGES) -> pd.DataFrame:
    """The ``stages``' histories (both by default), one row per epoch, with a ``stage`` column."""
    frames = []
    for stage in stages:
        path = cfg.run.history(model_name, stage)
        if path.exists():
            frames.append(pd.read_csv(path).assign(stage=stage))
    if not frames:
        raise KvasirError(f"no training history for {model_name} under {cfg.run_dir}; run notebook 02 first")
    return pd.concat(frames, ignore_index=True)


def read_evaluations(cfg: Config, required: bool = True) -> dict:
    """``{model: (metrics record, predictions)}`` for every model notebook 04 has evaluated."""
    found = {}
    for model in cfg.train.models:
        if cfg.run.metrics(model).exists():
            found[model] = (artefacts.read_metrics(cfg.run.metrics(model)), pd.read_csv(cfg.run.predictions(model)))
    if required and not found:
        raise KvasirError(f"no evaluated model under {cfg.run_dir}; run notebook 04 first")
    return found


def history_to_scalars(history: pd.DataFrame) -> pd.DataFrame:
    """history.csv rows -> the long (tag, step, value, stage) form that TensorBoard gives back."""
    return pd.concat([pd.DataFrame({"tag": tag, "step": history["global_epoch"], "value": history[column],
                                    "stage": history["stage"]}) for tag, column in SCALAR_TAGS.items()],
                     ignore_index=True)


def read_tensorboard(log_dirs: dict[str, Path]) -> pd.DataFrame:
    """Scalars read back from TensorBoard event files: ``{stage: folder}`` -> (tag, step, value, stage)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    frames = []
    for stage, folder in log_dirs.items():
        accumulator = EventAccumulator(str(folder), size_guidance={"scalars": 0})
        accumulator.Reload()
        for tag in accumulator.Tags()["scalars"]:
            events = accumulator.Scalars(tag)
            frames.append(pd.DataFrame({"tag": tag, "step": [e.step for e in events],
                                        "value": [e.value for e in events], "stage": stage}))
    if not frames:
        return pd.DataFrame(columns=["tag", "step", "value", "stage"])
    scalars = pd.concat(frames, ignore_index=True)
    return scalars.drop_duplicates(["tag", "step"], keep="last").sort_values(["tag", "step"], ignore_index=True)


def pick_examples(predictions: pd.DataFrame, correct: int, incorrect: int, seed: int = 0) -> pd.DataFrame:
    """A seeded random choice of correct and incorrect predictions, for Figure 1."""
    right = predictions["true"] == predictions["pred"]
    chosen = [part.sample(min(n, len(part)), random_state=seed) for part, n in
              ((predictions[right], correct), (predictions[~right], incorrect))]
    return pd.concat(chosen).assign(correct=lambda f: f["true"] == f["pred"])


def pick_examples_per_class(predictions: pd.DataFrame, correct: int = 1, incorrect: int = 1,
                            seed: int = 0) -> pd.DataFrame:
    """A seeded choice of up to ``correct`` right and ``incorrect`` wrong predictions per true class, for Figure 3."""
    marked = predictions.assign(correct=lambda f: f["true"] == f["pred"])
    chosen = [part.sample(min(n, len(part)), random_state=seed)
              for _, group in marked.groupby("true") for part, n in
              ((group[group["correct"]], correct), (group[~group["correct"]], incorrect))]
    return pd.concat(chosen)


def same_images(first: pd.DataFrame, second: pd.DataFrame) -> bool:
    """Whether two predictions.csv list the same validation images in the same order (so they pair)."""
    return list(first["path"]) == list(second["path"])


def class_names(predictions: pd.DataFrame) -> list[str]:
    """The run's classes, in its order, from predictions.csv's probability columns."""
    return artefacts.classes_of(predictions.columns)



def epochs_table(history: pd.DataFrame) -> pd.DataFrame:
    """A stage's history.csv as the notebooks show it: epochs numbered across both stages, as in
    Figure 2 and TensorBoard, and only what a reader compares."""
    table = history.rename(columns={"global_epoch": "epoch (both stages)", "epoch": "epoch of the stage"})
    return table[["epoch (both stages)", "epoch of the stage", "train_loss", "train_acc", "val_loss", "val_acc",
                  "seconds", "images_per_s"]].reset_index(drop=True)
