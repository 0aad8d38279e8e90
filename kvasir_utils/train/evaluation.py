"""The trained model on the validation set: notebook 04's files, and the audit's variants.

``predictions.csv`` (per image: true and predicted class, confidence, every class's probability)
and ``metrics.json`` (headline numbers, calibration, model size and speed, where it ran) under
``runs/<profile>/<model>/eval/``; the reports read them back with ``read_evaluations``. The audit
predicts the same images with the guide box masked at test time only.
"""

from __future__ import annotations

import pandas as pd

from kvasir_utils import artefacts
from kvasir_utils.analysis import metrics
from kvasir_utils.analysis.runs import read_history
from kvasir_utils.config import Config
from kvasir_utils.data import dataset, overlays, prepare
from kvasir_utils.data.split import read_split
from kvasir_utils.errors import KvasirError
from kvasir_utils.files import write_csv_atomic, write_text_atomic
from kvasir_utils.provenance import environment, provenance
from kvasir_utils.train import checkpoints, flops, hardware, loop, models, presets, stages


def evaluate_final_model(cfg: Config, model_name: str, runtime: hardware.Runtime) -> tuple[pd.DataFrame, dict]:
    """Predict the validation set once with the trained model (after checking it was trained on
    today's split and cache); write ``predictions.csv`` and ``metrics.json``."""
    cfg = models.for_model(cfg, model_name)  # a profile that leaves the input to the model: the model's own
    model, runtime = checkpoints.load_trained(cfg, model_name, runtime)  # as the stages chose: precision, layout
    split = read_split(cfg.run.split, cfg.classes)
    val = split[split["split"] == "val"].reset_index(drop=True)
    loader = stages.make_loaders(cfg, runtime, split)["val"]
    probs, targets, seconds = loop.predict(model, loader, runtime, desc=f"{model_name} predict")
    predictions = val[["path", "label"]].assign(true=targets, pred=probs.argmax(1), confidence=probs.max(1))
    probabilities = pd.DataFrame(probs, columns=artefacts.probability_columns(cfg.classes))
    predictions = pd.concat([predictions, probabilities], axis=1)
    history = read_history(cfg, model_name)
    stage_acc = {stage: float(part["val_acc"].iloc[-1]) for stage, part in history.groupby("stage")}
    record = metrics.summary(targets, probs, cfg.classes) | {
        "parameters": models.count_parameters(model),
        "trainable_parameters": models.trainable_counts(cfg, model_name),
        "gflops": flops.forward_gflops(model, cfg.transforms.image_size),
        "train_seconds": float(history["seconds"].sum()),
        "inference_images_per_s": len(targets) / seconds,
        "ece": metrics.expected_calibration_error(targets, probs),
        "brier": metrics.brier_score(targets, probs),
        "stage_val_acc": stage_acc,
        "fine_tuning_gain": stage_acc.get("stage2", float("nan")) - stage_acc["stage1"],
        "runtime": runtime.record(),
        "provenance": provenance(cfg, model_name),
        "environment": environment(),
        "generated_data": cfg.generated_data,
        "model_settings": {"transforms": {key: getattr(cfg.transforms, key) for key in ("image_size", "mean", "std")},
                           "trainable": {stage: cfg.stage_config(stage).trainable for stage in artefacts.STAGES}},
    }
    write_csv_atomic(predictions, cfg.run.predictions(model_name))
    write_text_atomic(cfg.run.metrics(model_name), artefacts.metrics_json(record))
    return predictions, record


def predict_validation(cfg: Config, model, runtime: hardware.Runtime, transforms_cfg=None, desc: str = "predict"):
    """Probabilities and targets for the validation images, with the profile's eval preset or the
    one ``transforms_cfg`` describes (e.g. with overlays masked)."""
    split = read_split(cfg.run.split, cfg.classes)
    preset = presets.eval_preset(transforms_cfg or cfg.transforms)
    val = dataset.KvasirDataset(prepare.cache_dir(cfg), split[split["split"] == "val"], cfg.classes, preset)
    loader = dataset.make_loader(val, cfg.train.batch_size, False, runtime.workers, runtime.pin_memory)
    probs, targets, _ = loop.predict(model, loader, runtime, desc=desc)
    return probs, targets


def masked_predictions(cfg: Config, model_name: str, runtime: hardware.Runtime,
                       mode: str = "guide_box") -> pd.DataFrame:
    """predictions.csv's images (``path``, ``label``, ``true``, ``pred``) with ``masked_pred``: the
    class predicted with the overlays masked at test time only (how much the model leans on them)."""
    cfg = models.for_model(cfg, model_name)
    predictions = pd.read_csv(cfg.run.predictions(model_name))
    model, runtime = checkpoints.load_trained(cfg, model_name, runtime)  # as the stages chose: precision, layout
    if overlays.MASK_MODES.index(cfg.transforms.mask_overlays) > overlays.MASK_MODES.index(mode):
        mode = cfg.transforms.mask_overlays  # never unmask what the profile masks
    masked_cfg = cfg.transforms.model_copy(update={"mask_overlays": mode})
    probs, targets = predict_validation(cfg, model, runtime, masked_cfg, desc=f"{model_name} masked")
    if len(targets) != len(predictions) or (targets != predictions["true"].to_numpy()).any():
        raise KvasirError(f"{cfg.run.predictions(model_name)} does not list today's validation images "
                          f"in split order; rerun notebook 04 for {model_name}")
    return predictions[["path", "label", "true", "pred"]].assign(masked_pred=probs.argmax(1))
