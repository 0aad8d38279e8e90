"""Plain-PyTorch training: one epoch, prediction, a whole stage with checkpoints and resume.

A result belongs to its inputs: every checkpoint records the settings that change the stage's
result and the fingerprints of what it was trained on (``split.csv``, the cache's content, and
for stage 2 the stage-1 checkpoint it started from). A stage whose settings or inputs changed is
refused with a message that names what changed; nothing is reused or overwritten silently.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import os
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn
from tqdm import tqdm

from kvasir_utils import data, models, transforms
from kvasir_utils.augment import DeviceAugment, pad_collate, to_uint8_tensor
from kvasir_utils.config import STAGES, Config, ConfigError, RuntimeConfig, validate_config
from kvasir_utils.dataset import make_loader, split_datasets
from kvasir_utils.errors import KvasirError
from kvasir_utils.history import HISTORY_COLUMNS, SCALAR_TAGS
from kvasir_utils.io import sha256_file, write_bytes_atomic, write_csv_atomic, write_json_atomic
from kvasir_utils.split import read_split

SEED_SCHEME = "SeedSequence([train.seed, stage index, epoch])"


# -- reproducibility and hardware ---------------------------------------------------------
def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices)."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def epoch_seed(seed: int, stage: str, epoch: int) -> int:
    """Each epoch's seed depends only on (seed, stage, epoch), so a resumed run repeats it exactly;
    NumPy's SeedSequence gives independent streams with no collisions between stages or seeds."""
    state = np.random.SeedSequence([seed, STAGES.index(stage), epoch]).generate_state(1, np.uint64)
    return int(state[0] >> np.uint64(1))  # 63 bits: any torch generator accepts it


def augment_generator(seed: int) -> torch.Generator:
    """The device backend's draws for an epoch: a stream of its own, apart from the shuffle's."""
    state = np.random.SeedSequence([seed, 1]).generate_state(1, np.uint64)
    return torch.Generator().manual_seed(int(state[0] >> np.uint64(1)))


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
    deterministic: str = "auto"  # runtime.deterministic as applied
    compile: str = "off"  # runtime.compile: "on" or "off" once a stage has decided (see compile_for)
    augment: str = "pil"  # transforms.backend as resolved for this device (see augment_backend)

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
        layout += " + torch.compile" if self.compile == "on" else ""
        layout += " + augmentation on the device" if self.augment == "device" else ""
        return (f"{name}, {self.precision}{layout}, {self.workers} loader workers, "
                f"deterministic algorithms {self.deterministic}")


def apply_determinism(mode: str, kind: str) -> None:
    """``runtime.deterministic``: ``auto`` asks for deterministic algorithms (and deterministic
    cuDNN on CUDA) and warns where an operation has none; ``on`` makes that an error; ``off``
    lets cuDNN benchmark and pick the fastest kernels (not repeatable on a GPU). On a CPU the
    training here is deterministic either way."""
    deterministic = mode != "off"
    if kind == "cuda":
        if deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS
        torch.backends.cudnn.benchmark = not deterministic
        torch.backends.cudnn.deterministic = deterministic
    torch.use_deterministic_algorithms(deterministic, warn_only=mode == "auto")


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
    apply_determinism(rt.deterministic, kind)
    return Runtime(device, precision, workers, rt.deterministic, rt.compile)


# A stage is compiled under runtime.compile=auto when it trains on at least this many images
# (epochs x training images). Measured on this project's 2-core CPU (bf16): compiling speeds
# training steps up 1.24x (ResNet50) to 1.29x (EfficientNet-B0) and costs 15-40 s per graph, so it
# repays itself after some thousands of images; the paper's stages (5 x 6,400) are well above this,
# the smoke profile's are below it.
COMPILE_MIN_IMAGES = 20_000


def compiler_found() -> bool:
    """torch.compile builds C++ (CPU) or Triton (CUDA) kernels with the system's C compiler."""
    return any(shutil.which(c) for c in (os.environ.get("CXX", "g++"), "c++", "clang++"))


def compile_for(runtime: Runtime, images: int) -> Runtime:
    """``runtime`` with ``compile`` decided for a stage that trains on ``images`` images. ``auto``
    stays off where no C++ compiler is installed (compiling would fail at the first step)."""
    if runtime.compile == "auto":
        long_enough = images >= COMPILE_MIN_IMAGES and runtime.device.type in ("cpu", "cuda")
        return dataclasses.replace(runtime, compile="on" if long_enough and compiler_found() else "off")
    return runtime


def stage_runtime(cfg: Config, runtime: Runtime, stage: str, train_images: int) -> Runtime:
    """The runtime a stage trains with: compiled or not, and where it augments."""
    runtime = compile_for(runtime, cfg.stage_config(stage).epochs * train_images)
    return dataclasses.replace(runtime, augment=augment_backend(cfg.transforms.backend, runtime.device))


def augment_backend(backend: str, device: torch.device) -> str:
    """``transforms.backend`` for this device: auto is ``device`` on a CUDA GPU (where the CPU
    loader can hold the model back), else ``pil`` (on a CPU the PIL path is the faster one)."""
    if backend == "auto":
        return "device" if device.type == "cuda" else "pil"
    return backend


def device_augment(cfg: Config, runtime: Runtime) -> DeviceAugment | None:
    """The device backend's batch augmentation where ``transforms.backend`` resolves to it, else None."""
    use = augment_backend(cfg.transforms.backend, runtime.device) == "device"
    return DeviceAugment(cfg.transforms) if use else None


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA), so a timer measures it."""
    if device.type == "cuda":
        torch.cuda.synchronize()


def compiled(model: nn.Module, runtime: Runtime) -> nn.Module:
    """``torch.compile(model)`` when the runtime says so, else ``model``. The compiled module shares
    ``model``'s parameters; checkpoints keep saving ``model.state_dict()`` (no ``_orig_mod.``)."""
    # static shapes: a last, smaller batch gets a graph of its own instead of turning every later
    # batch onto a dynamic-shape graph (which would make a resumed run take other kernels)
    return torch.compile(model, dynamic=False) if runtime.compile == "on" else model


def to_device(images: torch.Tensor, runtime: Runtime) -> torch.Tensor:
    return images.to(runtime.device, non_blocking=True, memory_format=runtime.memory_format)


def prepare_model(model: nn.Module, runtime: Runtime) -> nn.Module:
    return model.to(runtime.device, memory_format=runtime.memory_format)


# -- one epoch ----------------------------------------------------------------------------
def device_batches(loader, runtime: Runtime, augment=None, generator: torch.Generator | None = None):
    """``(images, targets)`` on the device from ``loader``; with ``augment`` (the device backend)
    the loader gives padded uint8 batches, augmented here with draws from ``generator``."""
    for batch in loader:
        if augment is None:
            images, targets = batch
        else:
            padded, sizes, targets = batch
            images = augment(padded.to(runtime.device, non_blocking=True), sizes, generator)
        yield to_device(images, runtime), targets.to(runtime.device, non_blocking=True)


def train_step(model, criterion, optimizer, images: torch.Tensor, targets: torch.Tensor,
               runtime: Runtime) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimisation step on a batch already on the device; returns the loss and the logits."""
    with runtime.autocast():
        logits = model(images)
        loss = criterion(logits.float(), targets)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return loss, logits


def train_one_epoch(model, criterion, optimizer, loader, runtime: Runtime, frozen_batchnorm: str = "eval",
                    desc: str = "train", augment=None, generator: torch.Generator | None = None) -> dict:
    """One pass over ``loader``; returns mean loss, accuracy, images and seconds. ``augment`` and
    ``generator``: the device backend's augmentation (``augment.DeviceAugment``) and its draws."""
    models.set_train_mode(model, frozen_batchnorm)
    loss_sum = torch.zeros((), device=runtime.device)
    correct = torch.zeros((), device=runtime.device, dtype=torch.long)
    seen, start = 0, time.perf_counter()
    bar = tqdm(device_batches(loader, runtime, augment, generator), desc=desc, unit="batch", leave=False,
               mininterval=2, total=len(loader))
    for step, (images, targets) in enumerate(bar):
        loss, logits = train_step(model, criterion, optimizer, images, targets, runtime)
        loss_sum += loss.detach() * len(targets)
        correct += (logits.argmax(1) == targets).sum()
        seen += len(targets)
        if step % 10 == 0:
            bar.set_postfix(loss=f"{loss_sum.item() / seen:.3f}")
    seconds = time.perf_counter() - start
    return {"loss": loss_sum.item() / seen, "acc": correct.item() / seen, "images": seen, "seconds": seconds}


@torch.inference_mode()
def predict(model, loader, runtime: Runtime, desc: str = "predict",
            features: ValidationFeatures | None = None) -> tuple[np.ndarray, np.ndarray, float]:
    """Softmax probabilities and targets for every image of ``loader``, plus the seconds it took.
    With ``features`` (a stage that trains only the head) the frozen body's features are reused."""
    if features is not None:
        return features.predict(loader, runtime, desc)
    model.eval()
    probs, targets_all, start = [], [], time.perf_counter()
    for images, targets in tqdm(loader, desc=desc, unit="batch", leave=False, mininterval=2):
        with runtime.autocast():
            logits = model(to_device(images, runtime))
        probs.append(torch.softmax(logits.float(), dim=1).cpu())
        targets_all.append(targets)
    seconds = time.perf_counter() - start
    return torch.cat(probs).numpy(), torch.cat(targets_all).numpy(), seconds


class ValidationFeatures:
    """The validation passes of a stage that freezes the start of the network. Every pass runs
    ``model(x)``'s operations split in two (``models.split_frozen``): the frozen part's outputs for
    the validation images are computed on the first pass and kept (up to ``max_bytes``), and later
    passes run only the rest while the frozen part's weights and buffers are unchanged, checked bit
    for bit against a copy at every pass (BatchNorm statistics that move,
    ``train.frozen_batchnorm=train``, are noticed and recomputed). The results are the same bits as
    whole forward passes; a stage that trains only the head then pays one linear layer a pass."""

    def __init__(self, model: nn.Module, max_bytes: int = 4 * 2**30):
        self.parts = models.split_frozen(model)
        self.max_bytes = max_bytes
        self.saved: dict[str, torch.Tensor] | None = None
        self.batches: list[tuple[tuple[torch.Tensor, ...], torch.Tensor]] = []
        self.source = None  # (loader, precision, device) the kept outputs came from
        self.keep = True  # false once the frozen part changed between passes: keeping would not pay
        self.computed = 0  # passes that ran the frozen part (for the tests and the bench)

    @classmethod
    def for_model(cls, model: nn.Module) -> ValidationFeatures | None:
        """None for a model with nothing frozen at its start (or that torch.fx cannot trace)."""
        features = cls(model)
        return features if features.parts is not None else None

    def _frozen_state(self) -> dict[str, torch.Tensor]:
        return self.parts[0].state_dict()

    def _unchanged(self, source) -> bool:
        if self.saved is None or source != self.source:
            return False
        state = self._frozen_state()
        same = state.keys() == self.saved.keys() and all(torch.equal(v, self.saved[k]) for k, v in state.items())
        self.keep = same  # BatchNorm statistics that move (frozen_batchnorm=train): stop keeping
        return same

    @torch.inference_mode()
    def predict(self, loader, runtime: Runtime, desc: str) -> tuple[np.ndarray, np.ndarray, float]:
        prefix, suffix = self.parts
        prefix.eval()
        suffix.eval()
        start, probs = time.perf_counter(), []
        source = (id(loader), runtime.precision, runtime.device)
        if self._unchanged(source):
            for values, _ in self.batches:
                with runtime.autocast():
                    probs.append(torch.softmax(suffix(*values).float(), dim=1).cpu())
            targets = torch.cat([t for _, t in self.batches])
            return torch.cat(probs).numpy(), targets.numpy(), time.perf_counter() - start
        self.batches, self.saved, self.source = [], None, source  # free what was kept before
        kept, batches, targets = 0, [] if self.keep else None, []
        for images, batch_targets in tqdm(loader, desc=desc, unit="batch", leave=False, mininterval=2):
            with runtime.autocast():
                values = prefix(to_device(images, runtime))
                probs.append(torch.softmax(suffix(*values).float(), dim=1).cpu())
            targets.append(batch_targets)
            tensors = all(isinstance(v, torch.Tensor) for v in values)
            kept += sum(v.numel() * v.element_size() for v in values) if tensors else self.max_bytes + 1
            if batches is not None and kept <= self.max_bytes:
                batches.append((values, batch_targets))
            else:
                batches = None  # too large to keep: every pass runs whole
        self.computed += 1
        self.batches = batches or []
        self.saved = {k: v.clone() for k, v in self._frozen_state().items()} if batches else None
        return torch.cat(probs).numpy(), torch.cat(targets).numpy(), time.perf_counter() - start


def evaluate(model, loader, runtime: Runtime, desc: str = "val", features: ValidationFeatures | None = None) -> dict:
    """Mean cross-entropy loss and accuracy on ``loader``."""
    probs, targets, seconds = predict(model, loader, runtime, desc, features)
    probs_t, targets_t = torch.from_numpy(probs), torch.from_numpy(targets)
    loss = nn.functional.nll_loss(torch.log(probs_t.clamp_min(1e-12)), targets_t).item()
    acc = (probs_t.argmax(1) == targets_t).float().mean().item()
    return {"loss": loss, "acc": acc, "images": len(targets), "seconds": seconds}


# -- checkpoints: what a stage was trained with, and on -----------------------------------
def save_checkpoint(path: Path, **state) -> Path:
    """One format for every checkpoint, written atomically (serialised first, so a disk without
    room for it is named with the size it needs before anything is written)."""
    buffer = io.BytesIO()
    torch.save(state, buffer)
    return write_bytes_atomic(path, buffer.getvalue())


def load_checkpoint(path: Path) -> dict:
    if not path.exists():
        raise KvasirError(f"no checkpoint at {path}; run the stage that writes it first")
    return torch.load(path, map_location="cpu", weights_only=True)


def stage_settings(config: dict, stage: str) -> dict:
    """The settings a stage's result depends on: the classes, the split, how the cache is made,
    the presets, and the training settings of this stage and the ones before it. Not which other
    models run (``train.models``), how many processes build the cache, paths or runtime."""
    later = STAGES[STAGES.index(stage) + 1:]
    train = {k: v for k, v in config["train"].items()
             if k != "models" and k not in later and not any(k.startswith(f"{s}_") for s in later)}
    return {"data.classes": config["data"]["classes"], "split": config["split"],
            "cache": {k: config["cache"][k] for k in ("short_side", "quality")},
            # the backend as resolved is part of the runtime the checkpoint records ("auto" differs by device)
            "transforms": {k: v for k, v in config["transforms"].items() if k != "backend"}, "train": train}


def _changed_keys(old, new, prefix="") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        return [k for key in sorted(set(old) | set(new))
                for k in _changed_keys(old.get(key), new.get(key), f"{prefix}{key}.")]
    return [] if old == new else [prefix.rstrip(".")]


def _as_current_schema(saved: dict) -> dict:
    """A saved config with today's defaults filled in, so a setting added since is not a change."""
    with contextlib.suppress(ConfigError):
        return validate_config(saved).to_dict()
    return saved


def stage_inputs(cfg: Config, model_name: str, stage: str) -> dict[str, str]:
    """Fingerprints of what ``stage`` trains on: the split and the cache, and for a later stage
    the checkpoint of the stage before it."""
    inputs = data.input_fingerprints(cfg)
    if stage != STAGES[0]:
        previous = STAGES[STAGES.index(stage) - 1]
        path = cfg.stage_dir(model_name, previous) / "checkpoint.pt"
        if not path.exists():
            raise KvasirError(f"{previous} of {model_name} has no checkpoint ({path}); run it first")
        inputs[f"{previous} checkpoint"] = sha256_file(path)
    return inputs


def check_checkpoint(checkpoint: dict, cfg: Config, inputs: dict[str, str], path: Path) -> None:
    """Refuse a checkpoint made with other settings or from other inputs (nothing is overwritten)."""
    stage = checkpoint["stage"]
    changed = _changed_keys(stage_settings(_as_current_schema(checkpoint["config"]), stage),
                            stage_settings(cfg.to_dict(), stage))
    recorded = checkpoint.get("inputs")
    if recorded is None:
        changed.append("inputs (the checkpoint predates input fingerprints)")
    else:
        changed += [f"{name} (SHA-256 {recorded.get(name, 'none')[:12]} then, {digest[:12]} now)"
                    for name, digest in inputs.items() if recorded.get(name) != digest]
    if checkpoint.get("seed_scheme") != SEED_SCHEME:
        changed.append("the seeding scheme (an earlier version of the study)")
    if changed:
        raise KvasirError(
            f"the checkpoint {path} was made from other settings or data: {'; '.join(changed)} changed. "
            f"Nothing was overwritten. Delete {path.parent} to retrain it (`make clean PROFILE={cfg.profile}` "
            f"deletes every run of the profile), or keep it and give this run its own folder: "
            f"SET=\"... paths.runs=<another folder>\"."
        )


def final_stage(cfg: Config) -> str:
    """The last stage that trains (stage 2 unless its epochs are 0)."""
    return "stage2" if cfg.train.stage2.epochs > 0 else "stage1"


def finished_checkpoint(cfg: Config, model_name: str, stage: str) -> dict:
    """A finished stage's checkpoint, checked against today's settings and inputs."""
    path = cfg.stage_dir(model_name, stage) / "checkpoint.pt"
    checkpoint = load_checkpoint(path)
    if checkpoint["epoch"] < cfg.stage_config(stage).epochs:
        raise KvasirError(f"{stage} of {model_name} is not finished ({path}); run it first")
    check_checkpoint(checkpoint, cfg, stage_inputs(cfg, model_name, stage), path)
    return checkpoint


def load_trained_model(cfg: Config, model_name: str) -> nn.Module:
    """The model as it ended training, after checking it was trained on today's split and cache."""
    checkpoint = finished_checkpoint(cfg, model_name, final_stage(cfg))
    model = models.build_model(model_name, len(cfg.data.classes), weights=None)
    model.load_state_dict(checkpoint["model"])
    return model


# -- a whole stage ------------------------------------------------------------------------
def carry_adam_state(optimizer: torch.optim.Optimizer, order: list[str], previous: dict) -> int:
    """Give each parameter the previous stage's Adam moments for the parameter of the same name
    (Adam keeps state by position, and the stages train different parameters). Returns how many
    parameters received state; the others start fresh."""
    by_name = {previous["optimizer_params"][int(i)]: s for i, s in previous["optimizer"]["state"].items()}
    state = optimizer.state_dict()
    state["state"] = {i: by_name[name] for i, name in enumerate(order) if name in by_name}
    optimizer.load_state_dict(state)
    return len(state["state"])


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
    runtime = stage_runtime(cfg, runtime, stage, len(loaders["train"].dataset))
    augment = device_augment(cfg, runtime)
    inputs = stage_inputs(cfg, model_name, stage)
    resumed = load_checkpoint(path) if path.exists() else None
    if resumed is not None:
        check_checkpoint(resumed, cfg, inputs, path)
        if resumed["epoch"] < stage_cfg.epochs and resumed.get("runtime", "").split(", ")[1:2] != \
                runtime.describe().split(", ")[1:2]:
            print(f"warning: {path.parent.name} of {model_name} started as '{resumed.get('runtime')}' and goes on as "
                  f"'{runtime.describe()}'; the rest of it will not repeat an uninterrupted run exactly (other "
                  f"rounding, or other augmentation draws)")
    previous = None
    if resumed is None and stage != STAGES[0]:
        previous = finished_checkpoint(cfg, model_name, STAGES[STAGES.index(stage) - 1])
    if resumed or previous:
        model.load_state_dict((resumed or previous)["model"])
    history, start = (resumed["history"], resumed["epoch"]) if resumed else ([], 0)
    prepare_model(model, runtime)
    net = compiled(model, runtime)
    features = ValidationFeatures.for_model(model) if cfg.runtime.reuse_frozen else None
    order = resumed["optimizer_params"] if resumed else trainable
    params = dict(model.named_parameters())
    optimizer = torch.optim.Adam([params[n] for n in order], lr=stage_cfg.lr)
    if resumed is not None:
        optimizer.load_state_dict(resumed["optimizer"])
    elif previous is not None and cfg.train.stage2_init == "continue_optimizer":
        carry_adam_state(optimizer, order, previous)
    criterion = nn.CrossEntropyLoss()
    offset = sum(cfg.stage_config(s).epochs for s in STAGES[: STAGES.index(stage)])
    if start >= stage_cfg.epochs:
        return pd.DataFrame(history, columns=HISTORY_COLUMNS)  # finished: reused as it is
    if stage == STAGES[0] and start == 0:
        record_weights(cfg, model_name, out)
    writer = SummaryWriter(log_dir=str(out / "tensorboard"), purge_step=offset + start + 1)
    try:
        for epoch in range(start + 1, stage_cfg.epochs + 1):
            seed = epoch_seed(cfg.train.seed, stage, epoch)
            seed_everything(seed)
            loaders["train"].generator.manual_seed(seed)
            desc = f"{model_name} {stage} epoch {epoch}/{stage_cfg.epochs}"
            fit = train_one_epoch(net, criterion, optimizer, loaders["train"], runtime,
                                  cfg.train.frozen_batchnorm, desc, augment, augment_generator(seed))
            val = evaluate(net, loaders["val"], runtime, desc=f"{desc} val", features=features)
            row = {"epoch": epoch, "global_epoch": offset + epoch, "train_loss": fit["loss"], "train_acc": fit["acc"],
                   "val_loss": val["loss"], "val_acc": val["acc"], "seconds": fit["seconds"] + val["seconds"],
                   "images_per_s": fit["images"] / fit["seconds"],
                   "val_images_per_s": val["images"] / val["seconds"], "lr": stage_cfg.lr}
            history.append(row)
            for tag, column in SCALAR_TAGS.items():
                writer.add_scalar(tag, row[column], row["global_epoch"])
            writer.flush()
            save_checkpoint(path, model=model.state_dict(), optimizer=optimizer.state_dict(), epoch=epoch,
                            history=history, config=cfg.to_dict(), model_name=model_name, stage=stage,
                            trainable=trainable, optimizer_params=order, inputs=inputs,
                            seed_scheme=SEED_SCHEME, runtime=runtime.describe())
            write_csv_atomic(pd.DataFrame(history, columns=HISTORY_COLUMNS), out / "history.csv")
            if on_epoch_end is not None:
                on_epoch_end(row)
    finally:
        writer.close()
    return pd.DataFrame(history, columns=HISTORY_COLUMNS)


def record_weights(cfg: Config, model_name: str, folder: Path) -> Path:
    """``weights.json`` beside stage 1's checkpoint: the pretrained weights file this run started
    from and its SHA-256, taken when it was loaded (the provenance reports it from here)."""
    record = None
    if cfg.train.weights is not None:
        path = models.weights_file(model_name, cfg.train.weights)
        record = {"weights": cfg.train.weights, "file": path.name,
                  "sha256": sha256_file(path) if path.exists() else None}
    return write_json_atomic(folder / "weights.json", record)


# -- what the notebooks call --------------------------------------------------------------
def make_loaders(cfg: Config, runtime: Runtime, split: pd.DataFrame | None = None) -> dict:
    """Train and val loaders over the resized cache, with the paper's presets (split read from
    ``runs/<profile>/split.csv`` unless given)."""
    if split is None:
        split = read_split(cfg.split_csv, cfg.data.classes)
    device = augment_backend(cfg.transforms.backend, runtime.device) == "device"
    train = to_uint8_tensor(cfg.transforms) if device else transforms.train_preset(cfg.transforms)
    datasets = split_datasets(data.cache_dir(cfg), split, cfg.data.classes, train,
                              transforms.eval_preset(cfg.transforms))
    return {name: make_loader(ds, cfg.train.batch_size, name == "train", runtime.workers, runtime.pin_memory,
                              cfg.train.seed, pad_collate if device and name == "train" else None)
            for name, ds in datasets.items()}


def model_for_stage(cfg: Config, model_name: str, stage: str) -> nn.Module:
    """The model a stage starts from, frozen as the stage says. Stage 1 loads the pretrained
    weights; later stages load the previous stage's weights inside ``fit_stage``."""
    seed_everything(cfg.train.seed)
    weights = cfg.train.weights if stage == STAGES[0] else None
    model = models.build_model(model_name, len(cfg.data.classes), weights, cfg.runtime.offline)
    models.set_trainable(model, cfg.stage_config(stage).trainable)
    return model


@dataclass
class StageRun:
    """One stage of one model, ready to train: what notebooks 02 and 03 share."""

    cfg: Config
    model_name: str
    stage: str
    runtime: Runtime
    model: nn.Module

    def describe(self) -> str:
        split = read_split(self.cfg.split_csv, self.cfg.data.classes)
        runtime = stage_runtime(self.cfg, self.runtime, self.stage, int((split["split"] == "train").sum()))
        return (f"{self.model_name}, {self.stage} (trainable: {self.cfg.stage_config(self.stage).trainable}) "
                f"on {runtime.describe()}")

    def fit(self) -> pd.DataFrame:
        loaders = make_loaders(self.cfg, self.runtime)
        return fit_stage(self.model, self.cfg, self.model_name, self.stage, loaders, self.runtime)


def start_stage(cfg: Config, model_name: str, stage: str) -> StageRun:
    """Resolve the runtime and build the model as ``stage`` starts it."""
    return StageRun(cfg, model_name, stage, resolve_runtime(cfg.runtime), model_for_stage(cfg, model_name, stage))


def throughput_summary(history: pd.DataFrame) -> str:
    return (f"time per epoch: {history['seconds'].mean():.1f} s, "
            f"training throughput: {history['images_per_s'].mean():.1f} images/s")
