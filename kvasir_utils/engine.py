"""Plain-PyTorch training: one epoch, evaluation, a whole stage with checkpoints and resume."""

from __future__ import annotations

import contextlib
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn
from tqdm import tqdm

from kvasir_utils import data, metrics, models, transforms
from kvasir_utils.config import STAGES, Config, RuntimeConfig
from kvasir_utils.errors import KvasirError
from kvasir_utils.io import atomic_path, write_csv_atomic, write_json_atomic

HISTORY_COLUMNS = ["epoch", "global_epoch", "train_loss", "train_acc", "val_loss", "val_acc",
                   "seconds", "images_per_s", "lr"]
TRAINING_SECTIONS = ("split", "cache", "transforms", "train")
# TensorBoard scalar tag -> history.csv column: what fit_stage logs and what plots read back.
SCALAR_TAGS = {"loss/train": "train_loss", "loss/val": "val_loss",
               "accuracy/train": "train_acc", "accuracy/val": "val_acc"}


# -- reproducibility and hardware ---------------------------------------------------------
def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def epoch_seed(seed: int, stage: str, epoch: int) -> int:
    """Each epoch's seed depends only on (seed, stage, epoch), so a resumed run repeats it exactly."""
    return seed * 1000 + STAGES.index(stage) * 100 + epoch


def cpu_has_native_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


@dataclass
class Runtime:
    device: torch.device
    precision: str  # "bf16" or "fp32"
    workers: int

    @property
    def channels_last(self) -> bool:
        return self.precision == "bf16"

    @property
    def memory_format(self) -> torch.memory_format:
        return torch.channels_last if self.channels_last else torch.contiguous_format

    @property
    def pin_memory(self) -> bool:
        return self.device.type == "cuda"

    def autocast(self):
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=torch.bfloat16)

    def describe(self) -> str:
        name = torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else self.device.type
        layout = " + channels_last" if self.channels_last else ""
        return f"{name}, {self.precision}{layout}, {self.workers} loader workers"


def resolve_runtime(rt: RuntimeConfig) -> Runtime:
    """Turn ``auto`` settings into this machine's device, precision and loader workers."""
    if rt.device == "auto":
        kind = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    else:
        kind = rt.device
        if kind == "cuda" and not torch.cuda.is_available():
            raise KvasirError("runtime.device=cuda but no CUDA GPU is visible; use runtime.device=auto")
    device = torch.device(kind)
    if rt.precision == "auto":
        native = (kind == "cuda" and torch.cuda.is_bf16_supported()) or (kind == "cpu" and cpu_has_native_bf16())
        precision = "bf16" if native else "fp32"
    else:
        precision = rt.precision
    cores = os.cpu_count() or 1
    if rt.workers != "auto":
        workers = rt.workers
    elif kind == "cpu":
        # The model already uses every core; a loader process would only compete with it.
        workers = 0
    else:
        # On a GPU the loader is the bottleneck (measured on an H100: 8 workers fed ~550 img/s while
        # ResNet50's steps ran at ~2,600 img/s), so use every core but one.
        workers = max(1, min(cores - 1, 16))
    if kind == "cuda":
        torch.backends.cudnn.benchmark = True
    return Runtime(device, precision, workers)


def to_device(images: torch.Tensor, runtime: Runtime) -> torch.Tensor:
    return images.to(runtime.device, non_blocking=True, memory_format=runtime.memory_format)


def prepare_model(model: nn.Module, runtime: Runtime) -> nn.Module:
    return model.to(runtime.device, memory_format=runtime.memory_format)


# -- one epoch ----------------------------------------------------------------------------
def train_one_epoch(model, criterion, optimizer, loader, runtime: Runtime, frozen_batchnorm: str = "eval",
                    desc: str = "train") -> dict:
    """One pass over ``loader``; returns mean loss, accuracy, images and seconds."""
    models.set_train_mode(model, frozen_batchnorm)
    loss_sum = torch.zeros((), device=runtime.device)
    correct = torch.zeros((), device=runtime.device, dtype=torch.long)
    seen, start = 0, time.perf_counter()
    bar = tqdm(loader, desc=desc, unit="batch", leave=False, mininterval=2)
    for step, (images, targets) in enumerate(bar):
        images, targets = to_device(images, runtime), targets.to(runtime.device, non_blocking=True)
        with runtime.autocast():
            logits = model(images)
            loss = criterion(logits.float(), targets)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        loss_sum += loss.detach() * len(targets)
        correct += (logits.argmax(1) == targets).sum()
        seen += len(targets)
        if step % 10 == 0:
            bar.set_postfix(loss=f"{loss_sum.item() / seen:.3f}")
    seconds = time.perf_counter() - start
    return {"loss": loss_sum.item() / seen, "acc": correct.item() / seen, "images": seen, "seconds": seconds}


@torch.inference_mode()
def predict(model, loader, runtime: Runtime, desc: str = "predict") -> tuple[np.ndarray, np.ndarray, float]:
    """Softmax probabilities and targets for every image of ``loader``, plus the seconds it took."""
    model.eval()
    probs, targets_all, start = [], [], time.perf_counter()
    for images, targets in tqdm(loader, desc=desc, unit="batch", leave=False, mininterval=2):
        with runtime.autocast():
            logits = model(to_device(images, runtime))
        probs.append(torch.softmax(logits.float(), dim=1).cpu())
        targets_all.append(targets)
    seconds = time.perf_counter() - start
    return torch.cat(probs).numpy(), torch.cat(targets_all).numpy(), seconds


def evaluate(model, loader, runtime: Runtime, desc: str = "val") -> dict:
    """Mean cross-entropy loss and accuracy on ``loader``."""
    probs, targets, seconds = predict(model, loader, runtime, desc)
    probs_t, targets_t = torch.from_numpy(probs), torch.from_numpy(targets)
    loss = nn.functional.nll_loss(torch.log(probs_t.clamp_min(1e-12)), targets_t).item()
    acc = (probs_t.argmax(1) == targets_t).float().mean().item()
    return {"loss": loss, "acc": acc, "images": len(targets), "seconds": seconds}


# -- checkpoints --------------------------------------------------------------------------
def save_checkpoint(path: Path, **state) -> Path:
    """One format for every checkpoint, written atomically."""
    with atomic_path(path, ".pt") as tmp:
        torch.save(state, tmp)
    return path


def load_checkpoint(path: Path) -> dict:
    if not path.exists():
        raise KvasirError(f"no checkpoint at {path}; run the stage that writes it first")
    return torch.load(path, map_location="cpu", weights_only=True)


def training_settings(config: dict, stage: str) -> dict:
    """The settings a stage's result depends on: its own and earlier stages', not later ones'."""
    settings = {key: config[key] for key in TRAINING_SECTIONS} | {"classes": config["data"]["classes"]}
    later = STAGES[STAGES.index(stage) + 1:]
    settings["train"] = {k: v for k, v in settings["train"].items()
                         if k not in later and not any(k.startswith(f"{s}_") for s in later)}
    return settings


def _changed_keys(old, new, prefix="") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        return [k for key in sorted(set(old) | set(new))
                for k in _changed_keys(old.get(key), new.get(key), f"{prefix}{key}.")]
    return [] if old == new else [prefix.rstrip(".")]


def check_resumable(checkpoint: dict, cfg: Config, path: Path) -> None:
    """Refuse to continue from a checkpoint trained under other settings (nothing is overwritten)."""
    stage = checkpoint["stage"]
    changed = _changed_keys(training_settings(checkpoint["config"], stage), training_settings(cfg.to_dict(), stage))
    if changed:
        raise KvasirError(
            f"the checkpoint {path} was trained with other settings ({', '.join(changed)}). "
            f"Delete {path.parent} to retrain (`make clean PROFILE={cfg.profile}` deletes all runs of the "
            f"profile), or set paths.runs to another folder."
        )


def final_stage(cfg: Config) -> str:
    """The last stage that trains (stage 2 unless its epochs are 0)."""
    return "stage2" if cfg.train.stage2.epochs > 0 else "stage1"


def load_trained_model(cfg: Config, model_name: str) -> nn.Module:
    """The model as it ended training, from the last stage's checkpoint."""
    path = cfg.stage_dir(model_name, final_stage(cfg)) / "checkpoint.pt"
    checkpoint = load_checkpoint(path)
    model = models.build_model(model_name, len(cfg.data.classes), weights=None)
    model.load_state_dict(checkpoint["model"])
    return model


# -- a whole stage ------------------------------------------------------------------------
def _optimizer_order(model: nn.Module, first: list[str]) -> list[str]:
    """The trainable parameters' names, those in ``first`` first: Adam's state is kept by position,
    so stage 1's state lines up with them (``continue_optimizer``) and a resumed stage rebuilds
    the same order from its checkpoint."""
    params = dict(model.named_parameters())
    ordered = [n for n in first if params[n].requires_grad]
    return ordered + [n for n, p in params.items() if p.requires_grad and n not in ordered]


def _previous_stage_checkpoint(cfg: Config, model_name: str, stage: str) -> dict:
    """The finished checkpoint of the stage before ``stage``, which ``stage`` starts from."""
    previous = STAGES[STAGES.index(stage) - 1]
    path = cfg.stage_dir(model_name, previous) / "checkpoint.pt"
    checkpoint = load_checkpoint(path)
    if checkpoint["epoch"] < cfg.stage_config(previous).epochs:
        raise KvasirError(f"{previous} of {model_name} is not finished ({path}); run it first")
    check_resumable(checkpoint, cfg, path)
    return checkpoint


def fit_stage(model: nn.Module, cfg: Config, model_name: str, stage: str, loaders: dict, runtime: Runtime,
              on_epoch_end=None) -> pd.DataFrame:
    """Train one stage of Algorithm 1, checkpointing after every epoch and resuming if interrupted.

    Writes ``checkpoint.pt``, ``history.csv`` and ``tensorboard/`` under the stage's folder.
    Stage 2 starts from stage 1's final weights. Returns the stage's history.
    """
    from torch.utils.tensorboard import SummaryWriter

    stage_cfg = cfg.stage_config(stage)
    out = cfg.stage_dir(model_name, stage)
    path = out / "checkpoint.pt"
    trainable = models.set_trainable(model, stage_cfg.trainable)
    resumed = load_checkpoint(path) if path.exists() else None
    if resumed is not None:
        check_resumable(resumed, cfg, path)
    previous = None if resumed or stage == STAGES[0] else _previous_stage_checkpoint(cfg, model_name, stage)
    if resumed or previous:
        model.load_state_dict((resumed or previous)["model"])
    history, start = (resumed["history"], resumed["epoch"]) if resumed else ([], 0)
    prepare_model(model, runtime)
    first = previous["trainable"] if previous else []
    order = resumed["optimizer_params"] if resumed else _optimizer_order(model, first)
    params = dict(model.named_parameters())
    optimizer = torch.optim.Adam([params[n] for n in order], lr=stage_cfg.lr)
    if resumed is not None:
        optimizer.load_state_dict(resumed["optimizer"])
    elif previous is not None and cfg.train.stage2_init == "continue_optimizer":
        _carry_adam_state(optimizer, previous["optimizer"])
    criterion = nn.CrossEntropyLoss()
    offset = sum(cfg.stage_config(s).epochs for s in STAGES[: STAGES.index(stage)])
    writer = SummaryWriter(log_dir=str(out / "tensorboard"), purge_step=offset + start + 1)
    try:
        for epoch in range(start + 1, stage_cfg.epochs + 1):
            seed = epoch_seed(cfg.train.seed, stage, epoch)
            seed_everything(seed)
            loaders["train"].generator.manual_seed(seed)
            desc = f"{model_name} {stage} epoch {epoch}/{stage_cfg.epochs}"
            fit = train_one_epoch(model, criterion, optimizer, loaders["train"], runtime,
                                  cfg.train.frozen_batchnorm, desc)
            val = evaluate(model, loaders["val"], runtime, desc=f"{desc} val")
            row = {"epoch": epoch, "global_epoch": offset + epoch, "train_loss": fit["loss"], "train_acc": fit["acc"],
                   "val_loss": val["loss"], "val_acc": val["acc"], "seconds": fit["seconds"] + val["seconds"],
                   "images_per_s": fit["images"] / fit["seconds"], "lr": stage_cfg.lr}
            history.append(row)
            for tag, column in SCALAR_TAGS.items():
                writer.add_scalar(tag, row[column], row["global_epoch"])
            writer.flush()
            save_checkpoint(path, model=model.state_dict(), optimizer=optimizer.state_dict(), epoch=epoch,
                            history=history, config=cfg.to_dict(), model_name=model_name, stage=stage,
                            trainable=trainable, optimizer_params=order,
                            seed_scheme="epoch_seed(train.seed, stage, epoch)")
            write_csv_atomic(pd.DataFrame(history, columns=HISTORY_COLUMNS), out / "history.csv")
            if on_epoch_end is not None:
                on_epoch_end(row)
    finally:
        writer.close()
    return pd.DataFrame(history, columns=HISTORY_COLUMNS)


def _carry_adam_state(optimizer, previous: dict) -> None:
    """Carry the previous stage's Adam moments over to the same parameters (they come first)."""
    state = optimizer.state_dict()
    state["state"] = previous["state"]
    optimizer.load_state_dict(state)


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


# -- what the notebooks call --------------------------------------------------------------
def make_loaders(cfg: Config, runtime: Runtime, split: pd.DataFrame | None = None) -> dict:
    """Train and val loaders over the resized cache, with the paper's presets (split read from
    ``runs/<profile>/split.csv`` unless given)."""
    if split is None:
        split = data.read_split(cfg.split_csv, cfg.data.classes)
    datasets = data.split_datasets(cfg, split, transforms.train_preset(cfg.transforms),
                                   transforms.eval_preset(cfg.transforms))
    return {name: data.make_loader(ds, cfg.train.batch_size, name == "train", runtime.workers, runtime.pin_memory,
                                   cfg.train.seed) for name, ds in datasets.items()}


def model_for_stage(cfg: Config, model_name: str, stage: str) -> nn.Module:
    """The model a stage starts from, frozen as the stage says. Stage 1 loads the pretrained
    weights; later stages load the previous stage's weights inside ``fit_stage``."""
    seed_everything(cfg.train.seed)
    weights = cfg.train.weights if stage == STAGES[0] else None
    model = models.build_model(model_name, len(cfg.data.classes), weights, cfg.runtime.offline)
    models.set_trainable(model, cfg.stage_config(stage).trainable)
    return model


def evaluate_final_model(cfg: Config, model_name: str, runtime: Runtime) -> tuple[pd.DataFrame, dict]:
    """Predict the validation set once with the trained model; write ``predictions.csv`` (with
    per-class probabilities) and ``metrics.json`` under ``runs/<profile>/<model>/eval/``."""
    from kvasir_utils.report import environment

    model = prepare_model(load_trained_model(cfg, model_name), runtime)
    split = data.read_split(cfg.split_csv, cfg.data.classes)
    val = split[split["split"] == "val"].reset_index(drop=True)
    loader = make_loaders(cfg, runtime, split)["val"]
    probs, targets, seconds = predict(model, loader, runtime, desc=f"{model_name} predict")
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
