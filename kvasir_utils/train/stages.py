"""A whole stage of Algorithm 1 (train, validate, checkpoint every epoch, resume where it stopped),
and what notebooks 02 and 03 call.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from torch import nn

from kvasir_utils.analysis.runs import HISTORY_COLUMNS, SCALAR_TAGS
from kvasir_utils.artefacts import STAGES, Checkpoint
from kvasir_utils.config import Config
from kvasir_utils.data import prepare
from kvasir_utils.data.dataset import make_loader, split_datasets
from kvasir_utils.data.split import read_split
from kvasir_utils.errors import KvasirError
from kvasir_utils.files import write_csv_atomic, write_json_atomic
from kvasir_utils.train import models, presets, probe, weights
from kvasir_utils.train.augment import pad_collate, to_uint8_tensor
from kvasir_utils.train.checkpoints import (
    check_checkpoint,
    finished_checkpoint,
    load_checkpoint,
    save_checkpoint,
    stage_inputs,
)
from kvasir_utils.train.frozen import ValidationFeatures, chunked, fold_frozen_batchnorm
from kvasir_utils.train.hardware import (
    NUMERIC_FIELDS,
    Runtime,
    augment_backend,
    compiled,
    device_augment,
    prepare_model,
    stage_runtime,
    use_runtime,
)
from kvasir_utils.train.loop import (
    SEED_SCHEME,
    adam,
    augment_generator,
    epoch_seed,
    evaluate,
    seed_everything,
    train_one_epoch,
)


# -- a whole stage ------------------------------------------------------------------------
def carry_adam_state(optimizer: torch.optim.Optimizer, order: list[str], previous: Checkpoint) -> int:
    """Give each parameter the previous stage's Adam moments for the parameter of the same name
    (Adam keeps state by position, and the stages train different parameters). Returns how many
    parameters received state; the others start fresh."""
    by_name = {previous.optimizer_params[int(i)]: s for i, s in previous.optimizer["state"].items()}
    state = optimizer.state_dict()
    state["state"] = {i: by_name[name] for i, name in enumerate(order) if name in by_name}
    optimizer.load_state_dict(state)
    return len(state["state"])


def resume_stage(cfg: Config, model_name: str, stage: str, inputs: dict[str, str]) -> Checkpoint | None:
    """The stage's own checkpoint to go on from (None: it starts afresh), checked against today's
    settings and inputs."""
    path = cfg.run.checkpoint(model_name, stage)
    if not path.exists():
        return None
    resumed = load_checkpoint(path, cfg.profile_argument)
    check_checkpoint(resumed, cfg, inputs, path)
    return resumed


# What training_form changed, as a checkpoint's runtime records it
FORM_FIELDS = {"folded_batchnorm": "folded BatchNorms", "frozen_chunk": "frozen part's chunk of images"}


def warn_numerics_change(resumed: Checkpoint | None, runtime: Runtime, form: dict, cfg: Config, model_name: str,
                         stage: str) -> None:
    """Warn where the rest of a resumed stage will run with other numerics than its start (another
    runtime, or another training form: folded BatchNorms, the frozen part's chunk, ``training_form``)."""
    if resumed is None:
        return
    before, now = resumed.runtime, runtime.record()
    changed = [f"{k} {before[k]} -> {now[k]}" for k in NUMERIC_FIELDS if before[k] != now[k]]
    for key, what in FORM_FIELDS.items():  # a checkpoint from before folding or chunking has none: 0
        if (was := before.get(key, 0)) != form[key]:
            changed.append(f"{what} {was} -> {form[key]}")
    if resumed.epoch < cfg.stage_config(stage).epochs and changed:
        print(f"warning: {stage} of {model_name} goes on with {', '.join(changed)}; the rest of it "
              f"will not repeat an uninterrupted run exactly (other rounding, or other augmentation draws)")


@dataclass
class StageState:
    """What a stage's epochs run with: the optimizer over the stage's parameters (in ``order``), the
    history so far and the epoch it stopped at (0 for a new stage)."""

    optimizer: torch.optim.Optimizer
    order: list[str]
    history: list[dict]
    start: int


def set_up_stage(model: nn.Module, cfg: Config, model_name: str, stage: str, trainable: list[str],
                 resumed: Checkpoint | None, runtime: Runtime) -> StageState:
    """Load the weights the stage starts from (its own checkpoint, else the previous stage's final
    one), put the model on the runtime's device and memory format, and build its optimizer: resumed
    exactly, or fresh, or with the previous stage's Adam state (``train.stage2_init``)."""
    previous = None
    if resumed is None and stage != STAGES[0]:
        previous = finished_checkpoint(cfg, model_name, STAGES[STAGES.index(stage) - 1])
    if resumed or previous:
        models.load_weights(model, (resumed or previous).model)  # a LoRA stage also takes stage 1's plain weights
    prepare_model(model, runtime)  # before the optimizer: its state is loaded onto the parameters' device
    order = resumed.optimizer_params if resumed else trainable
    params = dict(model.named_parameters())
    optimizer = adam([params[n] for n in order], cfg.stage_config(stage).lr)
    if resumed is not None:
        optimizer.load_state_dict(resumed.optimizer)
    elif previous is not None and cfg.train.stage2_init == "continue_optimizer":
        carry_adam_state(optimizer, order, previous)
    return StageState(optimizer, order, resumed.history if resumed else [], resumed.epoch if resumed else 0)


def fit_stage(model: nn.Module, cfg: Config, model_name: str, stage: str, loaders: dict, runtime: Runtime,
              on_epoch_end=None) -> pd.DataFrame:
    """Train one stage of Algorithm 1, checkpointing after every epoch and resuming if interrupted.

    Writes ``checkpoint.pt``, ``history.csv`` and ``tensorboard/`` under the stage's folder.
    Stage 2 starts from stage 1's final weights. Returns the stage's history.
    """
    trainable = models.set_trainable(model, cfg.stage_config(stage).trainable)
    runtime = stage_runtime(cfg, runtime, stage, len(loaders["train"].dataset))
    inputs = stage_inputs(cfg, model_name, stage)
    resumed = resume_stage(cfg, model_name, stage, inputs)
    if resumed is not None:  # a stage goes on as it started: its own record, not a new probe
        runtime = probe.adopt(runtime, resumed.runtime)
    runtime = probe.choose(runtime, model, model_name, cfg)
    state = set_up_stage(model, cfg, model_name, stage, trainable, resumed, runtime)
    if state.start >= cfg.stage_config(stage).epochs:
        return pd.DataFrame(state.history, columns=HISTORY_COLUMNS)  # finished: reused as it is
    image_size = models.for_model(cfg, model_name).transforms.image_size
    # after set_up_stage: folds the loaded weights
    training_model, form = training_form(model, cfg, runtime, image_size)
    warn_numerics_change(resumed, runtime, form, cfg, model_name, stage)
    if stage == STAGES[0] and state.start == 0:
        record_weights(cfg, model_name)
    run_epochs(model, cfg, model_name, stage, loaders, runtime, state,
               Checkpoint(model={}, optimizer={}, epoch=0, history=[], config=cfg.to_dict(), model_name=model_name,
                          stage=stage, trainable=trainable, optimizer_params=state.order, inputs=inputs,
                          seed_scheme=SEED_SCHEME, runtime={**runtime.record(), **form}),
               training_model, on_epoch_end)
    return pd.DataFrame(state.history, columns=HISTORY_COLUMNS)


def training_form(model: nn.Module, cfg: Config, runtime: Runtime, image_size: int) -> tuple[nn.Module, dict]:
    """The module a stage's training step runs (``model`` itself where nothing changes: the caller
    compiles it as the runtime says) and what it changed:
    compiled, with the frozen BatchNorms folded into their convolutions where they run in eval mode
    (``frozen.fold_frozen_batchnorm``), and the frozen part run ``runtime.frozen_chunk`` images at a
    time (``frozen.chunked``); eager, the model itself (folding gains nothing there:
    docs/performance.md). The record says how many pairs it folded and the chunk (0: whole batches)."""
    if runtime.compile != "on" or cfg.train.frozen_batchnorm != "eval":
        return model, dict.fromkeys(FORM_FIELDS, 0)
    folded, pairs = fold_frozen_batchnorm(model)
    split = chunked(folded, runtime.frozen_chunk, cfg.train.batch_size, image_size,
                    lambda part: compiled(part, runtime))
    form = {"folded_batchnorm": pairs, "frozen_chunk": split.chunk if split is not None else 0}
    if split is not None:
        return split, form
    return model if folded is model else compiled(folded, runtime), form


def run_epochs(model: nn.Module, cfg: Config, model_name: str, stage: str, loaders: dict, runtime: Runtime,
               state: StageState, record: Checkpoint, training_model: nn.Module, on_epoch_end=None) -> None:
    """The stage's remaining epochs: train, validate, log to TensorBoard, then write the checkpoint
    (``record`` with this epoch's weights, optimizer and history) and history.csv. The training step
    runs ``training_model`` (``training_form``: the model with its frozen BatchNorms folded and its
    frozen part in chunks, sharing its trainable parts), validation and the checkpoint the model itself."""
    from torch.utils.tensorboard import SummaryWriter

    stage_cfg = cfg.stage_config(stage)
    net, augment = compiled(model, runtime), device_augment(cfg, runtime)
    train_net = net if training_model is model else training_model  # already compiled
    features = ValidationFeatures.for_model(model) if cfg.runtime.reuse_frozen else None
    criterion = nn.CrossEntropyLoss()
    offset = sum(cfg.stage_config(s).epochs for s in STAGES[: STAGES.index(stage)])
    # purge_step: events a killed run logged after its last checkpoint are dropped on resuming
    writer = SummaryWriter(log_dir=str(cfg.run.tensorboard(model_name, stage)), purge_step=offset + state.start + 1)
    try:
        for epoch in range(state.start + 1, stage_cfg.epochs + 1):
            seed = epoch_seed(cfg.train.seed, stage, epoch)
            seed_everything(seed)
            loaders["train"].generator.manual_seed(seed)
            desc = f"{model_name} {stage} epoch {epoch}/{stage_cfg.epochs}"
            fit = train_one_epoch(train_net, criterion, state.optimizer, loaders["train"], runtime,
                                  cfg.train.frozen_batchnorm, desc, augment, augment_generator(seed))
            check_finite_loss(fit["loss"], cfg, model_name, stage, epoch)
            val = evaluate(net, loaders["val"], runtime, desc=f"{desc} val", features=features)
            check_finite_loss(val["loss"], cfg, model_name, stage, epoch)  # a last step that diverged shows here
            row = {"epoch": epoch, "global_epoch": offset + epoch, "train_loss": fit["loss"], "train_acc": fit["acc"],
                   "val_loss": val["loss"], "val_acc": val["acc"], "seconds": fit["seconds"] + val["seconds"],
                   "images_per_s": fit["images"] / fit["seconds"],
                   "val_images_per_s": val["images"] / val["seconds"], "lr": stage_cfg.lr}
            state.history.append(row)
            for tag, column in SCALAR_TAGS.items():
                writer.add_scalar(tag, row[column], row["global_epoch"])
            writer.flush()
            save_checkpoint(cfg.run.checkpoint(model_name, stage), dataclasses.replace(
                record, model=model.state_dict(), optimizer=state.optimizer.state_dict(), epoch=epoch,
                history=state.history))
            write_csv_atomic(pd.DataFrame(state.history, columns=HISTORY_COLUMNS), cfg.run.history(model_name, stage))
            if on_epoch_end is not None:
                on_epoch_end(row)
    finally:
        writer.close()


def check_finite_loss(loss: float, cfg: Config, model_name: str, stage: str, epoch: int) -> None:
    """Stop a stage whose training loss is no longer a number (the weights diverged), before the
    epoch is written: evaluating such a model would fail later, far from the cause, on probabilities
    that are NaN. The checkpoint of the epoch before stays as it was."""
    if math.isfinite(loss):
        return
    stage_cfg = cfg.stage_config(stage)
    folder = cfg.run.checkpoint(model_name, stage).parent
    kept = (f"; the checkpoint of epoch {epoch - 1} in {folder} stays, made at that rate, so delete the folder "
            f"before running it again with another" if epoch > 1 else "")
    raise KvasirError(
        f"{model_name} {stage} epoch {epoch}/{stage_cfg.epochs}: the training loss is {loss}, so the weights "
        f"diverged; nothing of this epoch was written{kept}. A learning rate too high for this model is the "
        f"usual cause: lower train.{stage}.lr (now {stage_cfg.lr:g}), e.g. "
        f"SET=\"train.{stage}.lr={stage_cfg.lr / 10:g}\", and run it again.")


def record_weights(cfg: Config, model_name: str) -> Path:
    """``weights.json`` beside stage 1's checkpoint: the pretrained weights file this run started
    from, where it came from and its SHA-256, taken when it was loaded (the provenance reports it
    from here; ``weights.weights_origin``)."""
    return write_json_atomic(cfg.run.weights_record(model_name), weights.weights_origin(cfg, model_name))


# -- what the notebooks call --------------------------------------------------------------
def make_loaders(cfg: Config, runtime: Runtime, split: pd.DataFrame | None = None) -> dict:
    """Train and val loaders over the resized cache, with the paper's presets (split read from
    ``runs/<profile>/split.csv`` unless given)."""
    if split is None:
        split = read_split(cfg.run.split, cfg.classes)
    device = augment_backend(cfg.transforms.backend, runtime.device) == "device"
    train = to_uint8_tensor(cfg.transforms) if device else presets.train_preset(cfg.transforms)
    datasets = split_datasets(prepare.cache_dir(cfg), split, cfg.classes, train,
                              presets.eval_preset(cfg.transforms))
    return {name: make_loader(ds, cfg.train.batch_size, name == "train", runtime.workers, runtime.pin_memory,
                              cfg.train.seed, pad_collate if device and name == "train" else None)
            for name, ds in datasets.items()}


def model_for_stage(cfg: Config, model_name: str, stage: str) -> nn.Module:
    """The model a stage starts from, frozen as the stage says. Stage 1 loads the pretrained
    weights; later stages load the previous stage's weights inside ``fit_stage``."""
    seed_everything(cfg.train.seed)
    return models.stage_model(cfg, model_name, stage)


@dataclass
class StageRun:
    """One stage of one model, ready to train: what notebooks 02 and 03 share."""

    cfg: Config
    model_name: str
    stage: str
    runtime: Runtime
    model: nn.Module

    def describe(self) -> str:
        split = read_split(self.cfg.run.split, self.cfg.classes)
        runtime = stage_runtime(self.cfg, self.runtime, self.stage, int((split["split"] == "train").sum()))
        runtime = probe.choose(runtime, self.model, self.model_name, self.cfg)
        return (f"{self.model_name}, {self.stage} (trainable: {self.cfg.stage_config(self.stage).trainable}) "
                f"on {runtime.describe()}")

    def fit(self) -> pd.DataFrame:
        loaders = make_loaders(self.cfg, self.runtime)
        return fit_stage(self.model, self.cfg, self.model_name, self.stage, loaders, self.runtime)


def start_stage(cfg: Config, model_name: str, stage: str) -> StageRun:
    """Resolve the runtime and build the model as ``stage`` starts it (with the model's own input
    where the profile leaves transforms null: ``models.for_model``)."""
    cfg = models.for_model(cfg, model_name)
    return StageRun(cfg, model_name, stage, use_runtime(cfg.runtime), model_for_stage(cfg, model_name, stage))


def throughput_summary(history: pd.DataFrame) -> str:
    return (f"time per epoch: {history['seconds'].mean():.1f} s, "
            f"training throughput: {history['images_per_s'].mean():.1f} images/s")
