"""``make gpu-check``: the speed figures a GPU machine owes the README, in one run, to JSON.

1. ``epoch``: one training epoch of generated data at paper scale (6,400 images, the paper's
   settings, stage 1), for each ``transforms.backend`` (pil: the CPU loader; device: batched on the
   GPU): the loader alone (its first batch is the workers' start-up), loader + training step, and
   the training step alone on a batch held on the device, under the runtime the stage would take
   (the runtime probe's choice). ``pipeline_vs_model_only`` is the goal's ratio (>= 0.9).
2. ``protocol``: ``make evaluate`` on 8,000 generated images (both models, 5 + 5 epochs with a
   validation pass each, the evaluation), its wall time and each stage's seconds.
3. ``concurrency``: 1, 2 and 4 processes training at once on the one GPU (each with its share of
   the CPU cores for loader workers), started together; aggregate images/s and the ratio to one.
4. ``sweep``: every model of a sweep (``leakage``; ``--sweep`` names another) timed per stage, and
   the sweep's device-hours from those step times (``bench.sweep_cost``).
It refuses to start where torch sees no GPU, unless ``--cpu`` asks to measure the CPU instead. A part
that fails (on a lent machine, in one call) is recorded in the JSON with its error, the other parts
still run, and the command then exits with an error naming the failed parts.
``--scale small`` runs the same on a few small images (how the tests exercise it on a CPU);
``--parts`` picks some of the four. Writes ``reports/bench/gpu_check.json`` (or ``--out``).
"""

from __future__ import annotations

import dataclasses
import multiprocessing
import subprocess
import time
import traceback
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import torch
import yaml
from torch import nn

from kvasir_utils.analysis.runs import read_history
from kvasir_utils.bench import sweep_cost
from kvasir_utils.bench.timing import train_steps
from kvasir_utils.config import PROJECT_ROOT, Config
from kvasir_utils.data import prepare
from kvasir_utils.errors import KvasirError
from kvasir_utils.files import write_json_atomic
from kvasir_utils.profiles import load_profile
from kvasir_utils.provenance import environment, usable_cores
from kvasir_utils.train import hardware, loop, models, probe, stages

OUT = PROJECT_ROOT / "reports" / "bench" / "gpu_check.json"
WORK = PROJECT_ROOT / "data" / "gpu-check"


@dataclasses.dataclass(frozen=True)
class Scale:
    """Generated images per class, settings on top of the paper profile, and the concurrency part's
    process counts, timed batches a process, seconds to wait (and more a process) for all to start,
    and loader workers a process (None: its share of the CPU cores)."""

    images_per_class: int
    settings: tuple[str, ...] = ()
    counts: tuple[int, ...] = (1, 2, 4)
    batches: int = 100
    settle: float = 20
    per_process: float = 5
    loader_workers: int | None = None
    sweep: str = "leakage"  # the sweep the ``sweep`` part prices
    sweep_steps: int = 20  # timed steps a model and stage


SCALES = {
    "paper": Scale(1000),
    # the least that runs every part: one small model at 32 px (the tests run it on a CPU)
    "small": Scale(8, ("transforms.image_size=32", "cache.short_side=40", "train.batch_size=8",
                       "train.stage1.epochs=1", "train.stage2.epochs=1", "train.models=[mobilenet_v3_small]"),
                   counts=(1, 2), batches=3, settle=0, per_process=0,
                   loader_workers=0,  # a worker's start-up (importing torch) would be most of the time
                   sweep="smoke-leakage", sweep_steps=2),
}
PARTS = ("epoch", "protocol", "concurrency", "sweep")
# The sweep's hours with runs sharing the device use a count's measured speed-up only where its
# processes trained together for at least this share of the timed span (else the sum overstates it).
MIN_OVERLAP = 0.9


def check_device(cpu: bool) -> str:
    """The device gpu-check measures: the GPU, or the CPU where ``cpu`` asks; an error where there is
    no GPU and it was not asked."""
    if cpu:
        return "cpu"
    if not torch.cuda.is_available():
        raise KvasirError("make gpu-check measures a GPU, and torch sees none on this machine "
                          "(torch.cuda.is_available() is false): run it where a CUDA GPU is lent, or try its "
                          'small form on this CPU with make gpu-check BENCH="--scale small --cpu" '
                          "(its figures are then this CPU's, not a GPU's)")
    return "cuda"


def write_profile(work: Path, scale: str, device: str = "auto") -> Path:
    """A profile file: the paper's protocol on generated full-size images under ``work``, on ``device``."""
    per_class = SCALES[scale].images_per_class
    profile = {"base": "paper", "paths": {"data": str(work / "data"), "runs": str(work / "runs"),
                                          "reports": str(work / "reports")},
               "data": {"name": f"generated-{scale}", "url": "", "mirrors": [], "size": None,
                        "expected_per_class": per_class,
                        "synthetic": {"layout": "kvasir-v2", "images_per_class": per_class, "seed": 0,
                                      "large_fraction": 0.1}},
               "train": {"weights": None}, "runtime": {"offline": True, "device": device}}
    path = work / f"gpu-check-{scale}.yaml"
    work.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(profile))
    return path


def load(profile: Path, scale: str, extra: list[str] = ()) -> Config:
    return load_profile(str(profile), [*SCALES[scale].settings, *extra])


def prepare_data(cfg: Config) -> None:
    """The data stage and the split (notebook 01's calls), reused when already there."""
    prepared = prepare.prepare_dataset(cfg, progress=True)
    if not cfg.run.split.exists():
        prepare.prepare_split(cfg, prepared)


@dataclasses.dataclass(frozen=True)
class Stage1:
    """Stage 1 of the profile's first model, ready to time (``_stage1``): the model in training mode
    (frozen BatchNorm layers as the stage keeps them), its optimizer, the runtime the stage would
    train with (the probe's choice of precision and memory format on this machine, measured once),
    the training loader and the augmentation on the device where the backend puts it there. Eager,
    not compiled."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    runtime: hardware.Runtime
    loader: torch.utils.data.DataLoader
    augment: object

    def batches(self, epoch: int):
        """The training batches on the device, augmented as epoch ``epoch`` draws them."""
        return iter(loop.device_batches(self.loader, self.runtime, self.augment, loop.augment_generator(epoch)))

    def train(self, batches, steps: int) -> float:
        """Images per second of training steps on ``batches`` (``bench.timing.train_steps``)."""
        return train_steps(self.model, self.optimizer, nn.CrossEntropyLoss(), self.runtime, batches, steps)


def _stage1(cfg: Config) -> Stage1:
    name = cfg.train.models[0]
    model = stages.model_for_stage(cfg, name, "stage1")
    runtime = probe.choose(hardware.use_runtime(cfg.runtime), model, name, cfg)
    model = models.set_train_mode(hardware.prepare_model(model, runtime), cfg.train.frozen_batchnorm)
    optimizer = loop.adam([p for p in model.parameters() if p.requires_grad], cfg.train.stage1.lr)
    return Stage1(model, optimizer, runtime, stages.make_loaders(cfg, runtime)["train"],
                  hardware.device_augment(cfg, runtime))


def epoch_figures(cfg: Config, max_batches: int | None = None) -> dict:
    """Loader alone, loader + step and step alone over one epoch (or ``max_batches``) of stage 1."""
    stage = _stage1(cfg)
    device = stage.runtime.device
    limit = max_batches or len(stage.loader)

    start, first, seen = time.perf_counter(), None, 0
    for step, (_, targets) in enumerate(stage.batches(0)):
        if first is None:
            hardware.synchronize(device)
            first = time.perf_counter() - start
        seen += len(targets)
        if step + 1 >= limit:
            break
    hardware.synchronize(device)
    loader_rate = seen / (time.perf_counter() - start)

    batches = stage.batches(1)
    images, targets = next(batches)
    pipeline = stage.train(batches, limit - 1)
    model_only = stage.train(iter([(images, targets)] * (limit - 1)), limit - 1)
    return {"backend": hardware.augment_backend(cfg.transforms.backend, device), "runtime": stage.runtime.describe(),
            "batches": limit,
            "loader_images_per_s": loader_rate, "loader_first_batch_s": first,
            "pipeline_images_per_s": pipeline, "model_only_images_per_s": model_only,
            "pipeline_vs_model_only": pipeline / model_only}


def run_protocol(profile: Path, scale: str) -> dict:
    """``make evaluate`` for the generated profile (notebooks 01-04 of both models): wall time."""
    settings = " ".join(SCALES[scale].settings)
    start = time.perf_counter()
    done = subprocess.run(["make", "--no-print-directory", "evaluate", f"PROFILE={profile}", f"SET={settings}"],
                          cwd=PROJECT_ROOT, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise KvasirError(f"make evaluate failed (exit {done.returncode}):\n{done.stderr[-3000:]}")
    cfg = load(profile, scale)
    stages = {name: read_history(cfg, name)[["stage", "epoch", "seconds", "val_acc"]].to_dict("records")
              for name in cfg.train.models}
    return {"wall_seconds": seconds, "minutes": seconds / 60, "stages": stages}


def _one_of_many(profile: str, scale: str, workers: int, batches: int, start_at: float) -> dict:
    stage = _stage1(load(Path(profile), scale, [f"runtime.workers={workers}"]))
    stage.train(stage.batches(0), 2)  # warm-up
    time.sleep(max(0.0, start_at - time.time()))
    start = time.time()
    rate = stage.train(stage.batches(1), min(len(stage.loader), batches))
    return {"images_per_s": rate, "started": start, "ended": time.time()}


def concurrency(profile: Path, scale: str):
    """Aggregate training images/s of 1, 2 and 4 processes (the scale's counts) sharing the device,
    started together ``settle`` seconds (and ``per_process`` seconds a process) after they are
    launched, once each has built its model; as (count, figures) pairs, each count's when it is
    measured. The runtime probe runs here first, so the processes find its choice made."""
    cores = usable_cores()
    counts, batches = SCALES[scale].counts, SCALES[scale].batches
    _stage1(load(profile, scale))  # the probe's choice made here; the model is dropped at once
    if torch.cuda.is_available():  # and its memory given back to the processes below
        torch.cuda.empty_cache()
    one = None
    for count in counts:
        workers = SCALES[scale].loader_workers
        workers = max(1, (cores - 1) // count) if workers is None else workers
        context = multiprocessing.get_context("spawn")
        with ProcessPoolExecutor(count, mp_context=context) as pool:
            start_at = time.time() + SCALES[scale].settle + SCALES[scale].per_process * count
            runs = [pool.submit(_one_of_many, str(profile), scale, workers, batches, start_at) for _ in range(count)]
            results = [r.result() for r in runs]
        span = max(r["ended"] for r in results) - min(r["started"] for r in results)
        together = min(r["ended"] for r in results) - max(r["started"] for r in results)
        aggregate = sum(r["images_per_s"] for r in results)
        one = one or aggregate
        yield str(count), {"processes": count, "loader_workers_each": workers,
                           "images_per_s_each": [r["images_per_s"] for r in results],
                           "aggregate_images_per_s": aggregate, "vs_one": aggregate / one,
                           # the share of the timed span in which every process trained: near 1, they
                           # shared the device throughout; lower, some ran alone and the sum overstates
                           "overlap": max(0.0, together) / span if span > 0 else 1.0}


def sweep_overrides(device: str, work: Path) -> list[str]:
    """The settings the ``sweep`` part reads a sweep with: on ``device``, its folders under ``work``
    (only the runtime probe's measurements are written, beside the generated data). Its models are
    timed from random weights whatever the sweep sets (``sweep_cost.model_rates``)."""
    return [f"runtime.device={device}", f"paths.data={work / 'data'}",
            f"paths.runs={work / 'sweep-runs'}", f"paths.reports={work / 'sweep-reports'}"]


def scale_named(scale: str) -> Scale:
    if scale not in SCALES:
        raise KvasirError(f"unknown gpu-check scale {scale!r}: use one of {', '.join(SCALES)}")
    return SCALES[scale]


def run(scale: str, parts: list[str], out: Path = OUT, work: Path = WORK, cpu: bool = False,
        sweep: tuple[str, list] | None = None, sweep_steps: int | None = None) -> dict:
    """The ``parts`` of gpu-check at ``scale`` on the GPU (or the CPU where ``cpu`` asks), written to
    ``out`` as JSON before the first part and after each figure; generated data and runs go under
    ``work`` (reused by a second run).
    ``sweep``: the name and (run, model, settings) runs of the sweep the ``sweep`` part prices, read with
    ``sweep_overrides`` (the run layer reads sweep files), timed over ``sweep_steps`` steps (default:
    the scale's)."""
    spec = scale_named(scale)
    if sweep_steps is not None and sweep_steps < 1:
        raise KvasirError(f"--sweep-steps {sweep_steps}: time at least 1 step a model and stage")
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        raise KvasirError(f"unknown gpu-check part(s) {', '.join(unknown)}: use some of {', '.join(PARTS)}")
    device = check_device(cpu)
    if "sweep" in parts:  # refused before anything is measured
        if sweep is None:
            raise KvasirError("gpu-check's sweep part needs the sweep's runs (python -m kvasir_utils gpu-check "
                              "reads them)")
        sweep_cost.check_priceable(*sweep)
    ordered = [p for p in PARTS if p in parts]
    # "pending": the parts not measured yet, "finished": the command ran to its end (a run killed or
    # interrupted, generating its data included, leaves both saying so; no earlier run's file stays)
    results: dict = {"machine": environment(), "device": device, "scale": scale, "profile": None,
                     "parts": parts, "pending": list(ordered), "failed": [], "finished": False}
    write_json_atomic(out, results)
    profile = None
    if set(parts) - {"sweep"}:  # the parts on generated data
        profile = write_profile(work, scale, device)
        prepare_data(load(profile, scale))
        results["profile"] = str(profile)

    def sweep_price() -> dict:
        epoch, shared = results.get("epoch", {}), results.get("concurrency", {})
        loader = epoch.get(hardware.augment_backend("auto", torch.device(device)), {})
        shared = {count: entry["vs_one"] for count, entry in shared.items()
                  if isinstance(entry, dict) and entry.get("overlap", 0) >= MIN_OVERLAP}
        return sweep_cost.estimate(*sweep, sweep_steps or spec.sweep_steps, loader.get("loader_images_per_s"), shared)

    measures = {"epoch": lambda: ((backend, epoch_figures(load(profile, scale, [f"transforms.backend={backend}"])))
                                  for backend in ("pil", "device")),
                "protocol": lambda: run_protocol(profile, scale).items(),
                "concurrency": lambda: concurrency(profile, scale),
                "sweep": lambda: sweep_price().items()}
    for part in ordered:
        measure_part(results, part, measures[part], out)
    results["finished"] = True
    write_json_atomic(out, results)
    print(f"wrote {out}")
    if results["failed"]:
        raise KvasirError(f"gpu-check's part(s) {', '.join(results['failed'])} failed; {out} records each "
                          "error and the figures of the parts that ran")
    return results


def measure_part(results: dict, part: str, measure, out: Path) -> None:
    """``results[part]`` from ``measure()``'s (key, figures) pairs, written to ``out`` as each comes,
    with its error and traceback added where it fails (the part is then listed in
    ``results["failed"]``, its figures so far kept): on a lent machine one call must bring back every
    figure that was measured."""
    figures = results[part] = {}
    try:
        for key, value in measure():
            figures[key] = value
            write_json_atomic(out, results)
    except Exception as error:  # noqa: BLE001 - recorded and reported at the end; Ctrl-C still stops
        figures |= {"error": f"{type(error).__name__}: {error}", "traceback": traceback.format_exc()}
        results["failed"].append(part)
        print(f"gpu-check: the {part} part failed ({type(error).__name__}: {error}); the other parts go on")
    results["pending"].remove(part)
    write_json_atomic(out, results)

