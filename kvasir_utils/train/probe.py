"""Precision and memory format chosen for this machine by measurement: a short probe of the model's
own training step (forward, backward and an Adam step on random images at the stage's image size and
a batch of at most ``PROBE_BATCH``, or the stage's on a CUDA GPU, on its device), the alternative
alternated with the reference over a few rounds after a warm-up (``train.paired``). What it measured
is kept in one file per machine's data folder, so a second stage or run does not measure again. A
setting given explicitly is never probed.

Two questions, in this order: bf16 autocast against fp32 (only where the device has native bf16;
elsewhere bf16 is emulated and fp32 stays), both contiguous unless the memory format is given; then
channels_last against contiguous, at the precision chosen (on oneDNN and cuDNN the memory format's
gain depends on the precision).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import time
from pathlib import Path

import torch
from filelock import FileLock
from torch import nn

from kvasir_utils import artefacts
from kvasir_utils.config import Config
from kvasir_utils.files import write_json_atomic
from kvasir_utils.provenance import cpu_model, isa_limits
from kvasir_utils.train import loop, models
from kvasir_utils.train.hardware import Runtime, native_bf16, prepare_model, synchronize, to_device
from kvasir_utils.train.paired import paired_ratio

# A choice other than the reference (fp32, contiguous) is kept where its training steps run at least
# this much faster: a paired median of a few rounds moves by a few percent on a shared machine
# (identical settings read 1.00 +- 0.05, docs/performance.md), and rounding that changes for less
# than that is not worth it.
MIN_GAIN = 1.05
# Per question: one warm-up step of each, then five rounds of one step each (the median of five
# ratios), at a batch of at most PROBE_BATCH images: a kernel's speed per image barely changes above
# it on a CPU, and the stage's batch of 32 at 224 px made a probe of ResNet50 take minutes on 2 cores.
ROUNDS, WARMUP, PROBE_BATCH = 5, 1, 8
# On a CUDA GPU the probe runs at the stage's own batch (a GPU's speed per image depends on the batch,
# and a batch of 8 measures kernel launches), two warm-up steps (the first allocates, and picks cuDNN's
# kernels where its benchmark is on) and rounds of five steps: a step takes milliseconds there.
GPU_WARMUP, GPU_STEPS = 2, 5


def probe_plan(device: torch.device, stage_batch: int) -> tuple[int, int, int]:
    """The probe's batch, steps a round and warm-up steps on ``device`` for a stage of ``stage_batch``."""
    if device.type == "cuda":
        return stage_batch, GPU_STEPS, GPU_WARMUP
    return min(stage_batch, PROBE_BATCH), 1, WARMUP


def pays(pair: dict) -> bool:
    """The alternative is kept where its median gain reaches MIN_GAIN and no round found it slower:
    on a loaded machine two identical settings' single rounds read 0.72-1.40x, and a choice made on
    noise would be cached; with every round faster, identical settings pass once in 32 probes."""
    return pair["ratio"] >= MIN_GAIN and pair["low"] >= 1.0


def why_not(pair: dict | None) -> str | None:
    """Why an alternative that was measured was not kept, in words for the pages (None: it was, or
    it was not measured)."""
    if pair is None or pays(pair):
        return None
    if pair["ratio"] < MIN_GAIN:
        return f"below the {MIN_GAIN:.2f}x it must gain"
    return f"but slower in one of its {pair.get('rounds', ROUNDS)} rounds ({pair['low']:.2f}x), so not surely faster"


def probe_file(cfg: Config) -> Path:
    """Where this machine's measurements are kept: the data folder (``paths.data``), which every
    profile and sweep member on the machine shares and which holds only what the machine derived."""
    return cfg.dataset_dir.parent / artefacts.RUNTIME_PROBE


def machine(device: torch.device) -> str:
    """What the measurement is of: the CPU model (with its instruction-set limits, where any is set),
    torch's threads and version, and the GPU if any."""
    gpu = f", {torch.cuda.get_device_name(device)}" if device.type == "cuda" else ""
    limits = f" under {isa_limits()}" if isa_limits() else ""
    return f"{cpu_model()}{limits} ({torch.get_num_threads()} threads){gpu}, torch {torch.__version__}"


def training_step(model: nn.Module, runtime: Runtime, frozen_batchnorm: str):
    """A training step of a copy of ``model`` under ``runtime`` (the model itself is not touched), as
    ``step(images, targets)``: the stage's trainable parameters, Adam, cross-entropy."""
    net = models.set_train_mode(prepare_model(copy.deepcopy(model), runtime), frozen_batchnorm)
    params = [p for p in net.parameters() if p.requires_grad] or list(net.parameters())
    optimizer, criterion = loop.adam(params, 1e-4), nn.CrossEntropyLoss()

    def step(images, targets):
        loop.train_step(net, criterion, optimizer, to_device(images, runtime), targets.to(runtime.device), runtime)

    return step


def measure(model: nn.Module, alternative: Runtime, reference: Runtime, image_size: int, stage_batch: int,
            classes: int, frozen_batchnorm: str = "eval") -> dict:
    """The alternative's training steps per second over the reference's (``paired_ratio``), on random
    images, as ``probe_plan`` says for the device; torch's random state is left as it was."""
    device = reference.device
    batch_size, steps, warmup = probe_plan(device, stage_batch)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(0)
        images = torch.randn(batch_size, 3, image_size, image_size)
        targets = torch.randint(0, classes, (batch_size,))
        pair = paired_ratio(training_step(model, alternative, frozen_batchnorm),
                            training_step(model, reference, frozen_batchnorm), images, targets,
                            lambda: synchronize(device), rounds=ROUNDS, steps=steps, warmup=warmup)
    return {key: round(value, 4) if isinstance(value, float) else value for key, value in pair.items()}


def layout(channels_last: bool) -> str:
    return "channels_last" if channels_last else "contiguous"


def read_probes(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return {}  # none yet, or unreadable: measured again and written whole


def choose(runtime: Runtime, model: nn.Module, model_name: str, cfg: Config, path: Path | None = None) -> Runtime:
    """``runtime`` with the settings it left ``pending`` chosen for ``model`` on this machine: measured
    once (under a lock, so concurrent runs wait for one probe) and kept in ``path`` (``probe_file``),
    keyed by what the figure depends on. The choice and its figure go into ``runtime.probe``."""
    if not runtime.pending:
        return runtime
    cfg = models.for_model(cfg, model_name)  # the model's own image size where the profile leaves it
    path = path or probe_file(cfg)
    path.parent.mkdir(parents=True, exist_ok=True)
    batch = probe_plan(runtime.device, cfg.train.batch_size)[0]
    sizes = f"{model_name}, {cfg.transforms.image_size} px, batch {batch}"
    with FileLock(f"{path}.lock"):
        known = read_probes(path)
        before = dict(known)

        def ratio(alternative: Runtime, reference: Runtime, question: str) -> dict:
            key = f"{question} | {sizes} | {runtime.device.type} | {machine(runtime.device)}"
            if key not in known:
                known[key] = measure(model, alternative, reference, cfg.transforms.image_size, cfg.train.batch_size,
                                     len(cfg.classes), cfg.train.frozen_batchnorm) | {
                    "measured": time.strftime("%Y-%m-%d %H:%M:%S")}
            return known[key]

        chosen, found = runtime, {}
        if "precision" in runtime.pending:
            given = runtime.channels_last and "memory_format" not in runtime.pending
            fp32 = dataclasses.replace(runtime, precision="fp32", channels_last=given)
            pair = ratio(dataclasses.replace(fp32, precision="bf16"), fp32, f"bf16 vs fp32, {layout(given)}") \
                if native_bf16(runtime.device) else None  # emulated bf16 is slower: not measured
            chosen = dataclasses.replace(chosen, precision="bf16" if pair and pays(pair) else "fp32")
            found["precision"] = {"chose": chosen.precision, "ratio": pair and pair["ratio"], "why_not": why_not(pair)}
        if "memory_format" in runtime.pending:
            contiguous = dataclasses.replace(chosen, channels_last=False)
            pair = ratio(dataclasses.replace(contiguous, channels_last=True), contiguous,
                         f"channels_last vs contiguous, {chosen.precision}")
            chosen = dataclasses.replace(contiguous, channels_last=pays(pair))
            found["memory_format"] = {"chose": layout(chosen.channels_last), "ratio": pair["ratio"],
                                      "why_not": why_not(pair)}
        if known != before:
            write_json_atomic(path, known)
    return dataclasses.replace(chosen, pending=(), probe=found)


def adopt(runtime: Runtime, record: dict) -> Runtime:
    """``runtime`` with the settings it left ``pending`` taken from the runtime record a model was
    trained under (its checkpoint's): a trained model is evaluated and used as its stages chose, with
    no probe of a training step and nothing written (the data folder may be read-only or elsewhere).
    bf16 is taken only where this device has it natively; a record without the setting (a checkpoint
    from before the probe) leaves resolve_runtime's rule."""
    if not runtime.pending:
        return runtime
    chosen = runtime
    recorded = record.get("precision")
    if "precision" in runtime.pending and (recorded == "fp32" or (recorded == "bf16" and native_bf16(runtime.device))):
        chosen = dataclasses.replace(chosen, precision=recorded)
    if "memory_format" in runtime.pending and "channels_last" in record:
        chosen = dataclasses.replace(chosen, channels_last=bool(record["channels_last"]))
    return dataclasses.replace(chosen, pending=(), probe=record.get("probe") or {})
