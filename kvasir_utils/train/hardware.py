"""How a stage runs on this machine: device, precision and memory format (chosen by ``train.probe``
where left auto), loader workers, determinism, ``torch.compile`` and where the augmentations run.
None of it changes what is computed beyond float rounding (the device augmentation backend draws
other random numbers from the same distributions).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from kvasir_utils.config import Config, RuntimeConfig
from kvasir_utils.errors import KvasirError
from kvasir_utils.provenance import describe_runtime, usable_cores
from kvasir_utils.train.augment import DeviceAugment


def cpu_has_native_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def native_bf16(device: torch.device) -> bool:
    """Whether ``device`` computes in bf16 natively (elsewhere bf16 is emulated, and slower than fp32)."""
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    return device.type == "cpu" and cpu_has_native_bf16()


@dataclass
class Runtime:
    device: torch.device
    precision: str  # "bf16" or "fp32"
    workers: int
    deterministic: str = "auto"  # runtime.deterministic as applied
    compile: str = "off"  # runtime.compile: "on" or "off" once a stage has decided (see compile_for)
    augment: str = "pil"  # transforms.backend as resolved for this device (see augment_backend)
    channels_last: bool = False  # runtime.memory_format; contiguous (False) is the reference
    frozen_chunk: int = 0  # runtime.frozen_chunk as resolved: a compiled step's frozen part on this many images at once
    # the settings given as auto that a probe of the model still has to choose (train.probe.choose);
    # until then they hold the rule used where no model is probed (resolve_runtime)
    pending: tuple[str, ...] = ()
    # what the probe chose and measured, per setting: {"memory_format": {"chose": "channels_last",
    # "ratio": 1.4}}, ratio = the alternative's training steps per second over the reference's
    probe: dict = field(default_factory=dict)

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

    def record(self) -> dict:
        """The runtime as data, as checkpoints and metrics.json keep it (compared field by field)."""
        name = torch.cuda.get_device_name(self.device) if self.device.type == "cuda" else self.device.type
        return {"device": self.device.type, "device_name": name, "precision": self.precision,
                "channels_last": self.channels_last, "compile": self.compile, "augment": self.augment,
                "workers": self.workers, "deterministic": self.deterministic, "probe": self.probe}

    def describe(self) -> str:
        return describe_runtime(self.record())


# What changes a stage's numbers (beyond the settings): a stage resumed under other values of these
# goes on, but not exactly as an uninterrupted run would have. The memory format is one: convolutions
# in channels_last take other kernels, with other rounding. The probe's figures are not.
NUMERIC_FIELDS = ("device", "precision", "channels_last", "compile", "augment")


def apply_determinism(runtime: Runtime) -> Runtime:
    """Set torch's process-wide switches for ``runtime.deterministic`` (called once a runtime is
    resolved, before a model runs; returns the runtime): ``auto`` asks for deterministic algorithms
    (and deterministic cuDNN on CUDA) and warns where an operation has none; ``on`` makes that an
    error; ``off`` lets cuDNN benchmark and pick the fastest kernels (not repeatable on a GPU). On a
    CPU the training here is deterministic either way."""
    mode, deterministic = runtime.deterministic, runtime.deterministic != "off"
    if runtime.device.type == "cuda":
        if deterministic:
            os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS
        torch.backends.cudnn.benchmark = not deterministic
        torch.backends.cudnn.deterministic = deterministic
    torch.use_deterministic_algorithms(deterministic, warn_only=mode == "auto")
    return runtime


# runtime.frozen_chunk: auto on a CPU: a compiled training step runs its frozen part 8 images at a
# time (train.frozen.chunked says what was measured); on a GPU the whole batch (it wants large ones).
FROZEN_CHUNK_CPU = 8


def resolve_runtime(rt: RuntimeConfig) -> Runtime:
    """Turn ``auto`` settings into this machine's device and loader workers (changing nothing:
    ``apply_determinism`` sets torch's switches for the result; ``frozen_chunk: auto`` is
    FROZEN_CHUNK_CPU on a CPU, 0 elsewhere). Precision and memory format given
    as ``auto`` stay ``pending`` for a probe of the model (``train.probe.choose``); until one runs
    they are bf16 with channels_last where the device has native bf16, else fp32 contiguous."""
    if rt.device == "auto":
        kind = "cuda" if torch.cuda.is_available() else "mps" if torch.backends.mps.is_available() else "cpu"
    else:
        kind = rt.device
        if kind == "cuda" and not torch.cuda.is_available():
            raise KvasirError("runtime.device=cuda but no CUDA GPU is visible; use runtime.device=auto")
    device = torch.device(kind)
    precision = ("bf16" if native_bf16(device) else "fp32") if rt.precision == "auto" else rt.precision
    memory_format = {"auto": precision == "bf16", "channels_last": True, "contiguous": False}[rt.memory_format]
    pending = tuple(name for name in ("precision", "memory_format") if getattr(rt, name) == "auto")
    cores = usable_cores()
    if rt.workers != "auto":
        workers = rt.workers
    elif kind == "cpu":
        # The model already uses every core; a loader process would only compete with it.
        workers = 0
    else:
        # On a GPU the loader is the bottleneck (measured on an H100: 8 workers fed ~550 img/s while
        # ResNet50's steps ran at ~2,600 img/s), so use every core but one.
        workers = max(1, min(cores - 1, 16))
    chunk = (FROZEN_CHUNK_CPU if kind == "cpu" else 0) if rt.frozen_chunk == "auto" else rt.frozen_chunk
    return Runtime(device, precision, workers, rt.deterministic, rt.compile, channels_last=memory_format,
                   frozen_chunk=chunk, pending=pending)


def use_runtime(rt: RuntimeConfig) -> Runtime:
    """The runtime ``rt`` resolves to here, with torch's switches set for it: what a notebook or
    command calls before it trains or predicts."""
    return apply_determinism(resolve_runtime(rt))


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
