"""Notebook 04's files: the trained model's validation predictions and its metrics record.

``predictions.csv`` (per image: true and predicted class, confidence, every class's probability)
and ``metrics.json`` (headline numbers, model size and speed, where it ran) under
``runs/<profile>/<model>/eval/``; the reports read them back with ``read_evaluations``.
"""

from __future__ import annotations

import json

import pandas as pd

from kvasir_utils import engine, metrics, models
from kvasir_utils.config import Config
from kvasir_utils.environment import environment
from kvasir_utils.errors import KvasirError
from kvasir_utils.history import read_history
from kvasir_utils.io import write_csv_atomic, write_json_atomic
from kvasir_utils.split import read_split


def evaluate_final_model(cfg: Config, model_name: str, runtime: engine.Runtime) -> tuple[pd.DataFrame, dict]:
    """Predict the validation set once with the trained model (after checking it was trained on
    today's split and cache); write ``predictions.csv`` and ``metrics.json``."""
    model = engine.prepare_model(engine.load_trained_model(cfg, model_name), runtime)
    split = read_split(cfg.split_csv, cfg.data.classes)
    val = split[split["split"] == "val"].reset_index(drop=True)
    loader = engine.make_loaders(cfg, runtime, split)["val"]
    probs, targets, seconds = engine.predict(model, loader, runtime, desc=f"{model_name} predict")
    predictions = val[["path", "label"]].assign(true=targets, pred=probs.argmax(1), confidence=probs.max(1))
    predictions = pd.concat([predictions, pd.DataFrame(probs, columns=[f"p_{c}" for c in cfg.data.classes])], axis=1)
    history = read_history(cfg, model_name)
    stage_acc = {stage: float(part["val_acc"].iloc[-1]) for stage, part in history.groupby("stage")}
    record = metrics.summary(targets, probs, cfg.data.classes) | {
        "parameters": models.count_parameters(model),
        "gflops": models.gflops(model, cfg.transforms.image_size),
        "train_seconds": float(history["seconds"].sum()),
        "inference_images_per_s": len(targets) / seconds,
        "stage_val_acc": stage_acc,
        "fine_tuning_gain": stage_acc.get("stage2", float("nan")) - stage_acc["stage1"],
        "runtime": runtime.describe(),
        "environment": environment(),
        "generated_data": cfg.generated_data,
    }
    out = cfg.eval_dir(model_name)
    write_csv_atomic(predictions, out / "predictions.csv")
    write_json_atomic(out / "metrics.json", record)
    return predictions, record


def read_evaluations(cfg: Config, required: bool = True) -> dict:
    """``{model: (metrics record, predictions)}`` for every model notebook 04 has evaluated."""
    found = {}
    for model in cfg.train.models:
        folder = cfg.eval_dir(model)
        if (folder / "metrics.json").exists():
            found[model] = (json.loads((folder / "metrics.json").read_text()), pd.read_csv(folder / "predictions.csv"))
    if required and not found:
        raise KvasirError(f"no evaluated model under {cfg.run_dir}; run notebook 04 first")
    return found
