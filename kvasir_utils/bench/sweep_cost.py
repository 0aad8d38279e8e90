"""What a sweep costs on this device, from measured step times: ``make gpu-check``'s ``sweep`` part.

The runs of a sweep are grouped by what sets their step time (``step_settings``: the model, its
input size, the batch size, each stage's reading, the LoRA settings where a stage uses them, the
runtime), and each group is measured once: its model built per stage as those runs train it (frozen,
all layers, LoRA; from random weights, as the same network trains at the same speed) and timed on
a batch held on the device, training steps and inference steps. A run's seconds are, per stage, its
epochs x (training images / training rate + validation images / that stage's inference rate), and
one more pass for the evaluation (notebook 04); the sweep's hours are the sum over its runs, one run
at a time on one device. The steps are eager and every validation pass is priced whole, where the
stages compile and reuse the frozen part's validation outputs: the price errs high. It leaves out
the data stage and notebook start-up; given the loader's measured rate (the ``epoch`` part), the
hours are also given with no pass faster than the loader.
"""

from __future__ import annotations

import json

import torch

from kvasir_utils.artefacts import STAGES
from kvasir_utils.bench.projection import split_sizes
from kvasir_utils.bench.timing import step_throughput
from kvasir_utils.config import Config
from kvasir_utils.errors import KvasirError
from kvasir_utils.train import hardware, models, probe

Run = tuple[str, str, Config]  # a run's name, its model and its settings


def check_priceable(name: str, runs: list[Run]) -> None:
    """Refuse, before anything is measured, a sweep whose image counts its settings do not give."""
    for run, _, cfg in runs:
        if cfg.data.expected_per_class is None or cfg.split.source == "file":
            raise KvasirError(
                f"sweep {name}, run {run}: its image counts are not in its settings (data.expected_per_class is "
                f"{cfg.data.expected_per_class}, split.source is {cfg.split.source}); the sweep part prices sweeps "
                "whose profile gives data.expected_per_class and a stratified split")


def step_settings(cfg: Config, model: str) -> dict:
    """What sets a run's step time (runs with the same are measured once)."""
    own = models.for_model(cfg, model)
    uses_lora = any(models.stage_uses_lora(own, stage) for stage in STAGES)
    return {"model": model, "image_size": own.transforms.image_size,  # the model's own where the profile has none
            "batch_size": own.train.batch_size, "classes": len(own.classes),
            "trainable": {stage: own.stage_config(stage).trainable for stage in STAGES},
            "lora": own.train.lora.model_dump() if uses_lora else None, "runtime": own.runtime.model_dump()}


def model_rates(cfg: Config, model: str, steps: int) -> dict:
    """Per stage, the parameters it trains and the images per second of its training and inference
    steps, on one random batch held on the device (no pretrained weights are read), under the
    runtime the run's stages would take (``train.probe``'s choice, measured once a machine)."""
    cfg = models.random_init(cfg)
    settings = step_settings(cfg, model)
    size, count = settings["image_size"], settings["batch_size"]
    networks = {stage: models.stage_model(cfg, model, stage) for stage in STAGES}
    # what the run's stages train with: the probe's choice for this model on this machine
    runtime = probe.choose(hardware.use_runtime(cfg.runtime), networks[STAGES[0]], model, cfg)
    batch = hardware.to_device(torch.randn(count, 3, size, size), runtime)
    targets = (torch.arange(count) % settings["classes"]).to(runtime.device)
    rates = {stage: {"trainable_parameters": sum(p.numel() for p in network.parameters() if p.requires_grad),
                     "train_images_per_s": step_throughput(network, runtime, batch, targets, steps),
                     "inference_images_per_s": step_throughput(network, runtime, batch, targets, steps, train=False)}
             for stage, network in networks.items()}
    return {**settings, "runtime": runtime.describe(), "stages": rates}


def run_seconds(cfg: Config, rates: dict, loader_images_per_s: float | None = None) -> float:
    """One run's training and validation at the measured rates (no faster than the loader, when
    given): every stage's epochs, a validation pass each, and the evaluation's pass."""
    def rate(stage: str, kind: str) -> float:
        measured = rates["stages"][stage][f"{kind}_images_per_s"]
        return min(measured, loader_images_per_s) if loader_images_per_s else measured

    train, val = split_sizes(cfg)
    seconds = val / rate(STAGES[-1], "inference")
    for stage in STAGES:
        seconds += cfg.stage_config(stage).epochs * (train / rate(stage, "train") + val / rate(stage, "inference"))
    return seconds


def estimate(name: str, runs: list[Run], steps: int, loader_images_per_s: float | None = None,
             vs_one: dict[str, float] | None = None, progress: bool = True) -> dict:
    """The device-hours of the sweep ``name`` (its ``runs``, as ``run.sweep_spec`` reads them), each
    group of runs with the same ``step_settings`` measured once; also with no pass faster than
    ``loader_images_per_s``, and with runs sharing the device at ``vs_one``'s aggregate rate for each
    count (``make gpu-check``'s ``epoch`` and ``concurrency`` parts), where given."""
    check_priceable(name, runs)
    measured: dict[str, dict] = {}
    for run, model, cfg in runs:
        key = json.dumps(step_settings(cfg, model), sort_keys=True, default=str)
        if key not in measured:
            measured[key] = {**model_rates(cfg, model, steps), "runs": [], "hours": 0.0}
            measured[key] |= {"hours_with_loader": 0.0} if loader_images_per_s else {}
            if progress:
                _show(name, measured[key])
        entry = measured[key]
        entry["runs"].append(run)
        entry["hours"] += run_seconds(cfg, entry) / 3600
        if loader_images_per_s:
            entry["hours_with_loader"] += run_seconds(cfg, entry, loader_images_per_s) / 3600
    measurements = list(measured.values())
    by_model: dict[str, float] = {}
    for entry in measurements:
        by_model[entry["model"]] = by_model.get(entry["model"], 0.0) + entry["hours"]
    result = {"sweep": name, "runs": len(runs), "steps_timed": steps, "measurements": measurements,
              "hours_by_model": by_model, "hours": sum(by_model.values())}
    if loader_images_per_s:
        result["loader_images_per_s"] = loader_images_per_s
        result["hours_with_loader"] = sum(entry["hours_with_loader"] for entry in measurements)
    if vs_one:
        result["hours_sharing_the_device"] = {count: result["hours"] / ratio for count, ratio in vs_one.items()}
    if progress:
        print(f"sweep {name}: {len(runs)} runs, {_hours(result['hours'])} on this device from the steps alone"
              + (f", {_hours(result['hours_with_loader'])} with no pass faster than the loader"
                 if loader_images_per_s else ""))
    return result


def _show(name: str, entry: dict) -> None:
    stages = "; ".join(f"{stage} ({entry['trainable'][stage]}) train {rates['train_images_per_s']:.1f}, "
                       f"inference {rates['inference_images_per_s']:.1f} img/s"
                       for stage, rates in entry["stages"].items())
    print(f"sweep {name}: {entry['model']} at {entry['image_size']} px, batch {entry['batch_size']}: {stages}")


def _hours(hours: float) -> str:
    return f"{hours:.1f} hours" if hours >= 1 else f"{hours * 60:.1f} minutes"
