"""The per-epoch record of training: history.csv's columns and the TensorBoard tags they map to."""

from __future__ import annotations

import pandas as pd

from kvasir_utils.config import STAGES, Config
from kvasir_utils.errors import KvasirError

HISTORY_COLUMNS = ["epoch", "global_epoch", "train_loss", "train_acc", "val_loss", "val_acc",
                   "seconds", "images_per_s", "val_images_per_s", "lr"]
# TensorBoard scalar tag -> history.csv column: what training logs and what the figures read back.
SCALAR_TAGS = {"loss/train": "train_loss", "loss/val": "val_loss",
               "accuracy/train": "train_acc", "accuracy/val": "val_acc"}


def read_history(cfg: Config, model_name: str) -> pd.DataFrame:
    """Both stages' histories, one row per epoch, with a ``stage`` column."""
    frames = []
    for stage in STAGES:
        path = cfg.stage_dir(model_name, stage) / "history.csv"
        if path.exists():
            frames.append(pd.read_csv(path).assign(stage=stage))
    if not frames:
        raise KvasirError(f"no training history for {model_name} under {cfg.run_dir}; run notebook 02 first")
    return pd.concat(frames, ignore_index=True)
