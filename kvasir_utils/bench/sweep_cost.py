"""What a sweep costs on this device, from measured step times: ``make gpu-check``'s ``sweep`` part.

Each model of the sweep is built per stage as its members train it (the stage's reading: frozen,
all or LoRA; from random weights, as the same network trains at the same speed) and timed on a
batch held on the device, at the sweep's batch size and the model's input size: training steps,
and inference steps for the validation passes. A member's seconds are, per stage, its epochs over
its training images at the training rate plus a validation pass each epoch at the inference rate,
and one more pass for the evaluation (notebook 04); the sweep's hours are the sum over its members,
one run at a time on one device. Steps are eager and leave out the loader, the data stage and
notebook start-up; where the ``epoch`` part measured the loader's cost (``pipeline_vs_model_only``),
the hours are also given divided by it.
"""

from __future__ import annotations

import torch

from kvasir_utils.artefacts import STAGES
from kvasir_utils.bench.projection import split_sizes
from kvasir_utils.bench.timing import step_throughput
from kvasir_utils.config import Config
from kvasir_utils.train import hardware, models


def model_rates(cfg: Config, name: str, steps: int) -> dict:
    """Images per second of ``name``'s training step in each stage (as ``cfg`` reads it, with the
    parameters it trains) and of its inference step, on one random batch held on the device."""
    runtime = hardware.use_runtime(cfg.runtime)
    own = models.for_model(cfg, name)
    size = models.model_transforms(own.transforms, name).image_size
    batch = torch.randn(cfg.train.batch_size, 3, size, size)
    targets = torch.arange(cfg.train.batch_size) % len(cfg.classes)
    rates = {"image_size": size, "batch_size": cfg.train.batch_size}
    for stage in STAGES:
        model = models.stage_model(cfg, name, stage)
        rates[f"{stage}_trainable_parameters"] = sum(p.numel() for p in model.parameters() if p.requires_grad)
        rates[stage] = step_throughput(model, runtime, batch, targets, steps)
    rates["inference"] = step_throughput(model, runtime, batch, targets, steps, train=False)
    rates["runtime"] = runtime.describe()
    return rates


def member_seconds(cfg: Config, rates: dict) -> float:
    """One run's training and validation at the measured rates: every stage's epochs, a validation
    pass each, and the evaluation's pass."""
    train, val = split_sizes(cfg)
    seconds = val / rates["inference"]
    for stage in STAGES:
        epochs = cfg.stage_config(stage).epochs
        seconds += epochs * (train / rates[stage] + val / rates["inference"])
    return seconds


def estimate(name: str, runs: list[tuple[str, Config]], steps: int, pipeline_vs_model_only: float | None = None,
             progress: bool = True) -> dict:
    """The device-hours of the sweep ``name`` whose ``runs`` are (model, settings) pairs, one a run
    (``run.sweep_spec`` reads them), from each model's measured rates. Each model is measured once,
    with its first run's settings: the readings a sweep varies (the split, masking) leave its step
    as it is."""
    rates = {}
    for model, cfg in runs:
        if model not in rates:
            rates[model] = model_rates(cfg, model, steps)
            if progress:
                shown = ", ".join(f"{k} {rates[model][k]:.1f} img/s" for k in (*STAGES, "inference"))
                print(f"sweep {name}: {model} at {rates[model]['image_size']} px: {shown}")
    per_model = dict.fromkeys(rates, 0.0)
    for model, cfg in runs:
        per_model[model] += member_seconds(cfg, rates[model]) / 3600
    hours = sum(per_model.values())
    result = {"sweep": name, "runs": len(runs), "steps_timed": steps, "rates": rates,
              "hours_by_model": per_model, "hours": hours}
    if pipeline_vs_model_only:
        result["hours_with_loader"] = hours / pipeline_vs_model_only
    if progress:
        print(f"sweep {name}: {len(runs)} runs, {_hours(hours)} on this device from the steps alone"
              + (f", {_hours(result['hours_with_loader'])} with the loader's measured cost" if pipeline_vs_model_only
                 else ""))
    return result


def _hours(hours: float) -> str:
    return f"{hours:.1f} hours" if hours >= 1 else f"{hours * 60:.1f} minutes"
