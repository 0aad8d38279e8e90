"""``make bench``: how long the paper's protocol takes on this machine, measured, not guessed.

The projection comes from the real thing, in one run: the data stage (copy, extraction, cache)
per image, and every model's stages through ``fit_stage`` with the real loaders and the validation
pass, on generated full-size JPEGs at the paper profile's settings (ImageNet weights are left out:
the same network trains at the same speed from random weights), compiled as the protocol's stages
would be (``runtime.compile``, from an empty compile cache), each stage in a fresh process as each
notebook is. Each stage runs two epochs on a slice of images: the second gives the steady rates,
the first's excess the one-off cost (compiling). Validation reuses the frozen part's outputs after
the first pass (``frozen.ValidationFeatures``). The
protocol (8,000 images, 20 epochs of both models with a validation pass each, the final
evaluation) is projected from those. (e) puts it beside a floor: the protocol's forward passes at
this machine's dense matrix-multiply peak.
Component figures are kept as diagnostics, as ratios measured side by side:
  (a) loader_cache_vs_full        train loader reading the resized cache / decoding the originals
  (b) <model>_auto_vs_fp32        training step with precision ``auto`` / ``fp32``
  (c) pipeline_vs_model_only      loader + step / step on tensors already in memory
  (f) stage1_vs_plain_script      the first model's stage 1 through fit_stage (d) / the same stage as a
                                  plain script (``plain``: ImageFolder on as many full-size frames, fp32),
                                  each its second epoch's training rate; measured minutes apart, not paired
Writes reports/bench/bench.json (or ``--out``). ``--scale small`` runs every part of it on a few
tiny images with one small model, uncompiled: how the tests exercise it; its figures are not the
protocol's.
"""

from __future__ import annotations

import copy
import dataclasses
import math
import multiprocessing
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import pandas as pd
import torch

from kvasir_utils.analysis.runs import HISTORY_COLUMNS
from kvasir_utils.artefacts import STAGES
from kvasir_utils.bench.plain import plain_stage1_images_per_s
from kvasir_utils.bench.timing import step_function, step_throughput
from kvasir_utils.config import PROJECT_ROOT, Config, cached_name
from kvasir_utils.data import prepare, synthetic
from kvasir_utils.data.cache import build_cache
from kvasir_utils.data.dataset import KvasirDataset, make_loader
from kvasir_utils.data.extract import extract_archive
from kvasir_utils.data.images import read_image
from kvasir_utils.data.layout import find_classes
from kvasir_utils.errors import KvasirError
from kvasir_utils.files import write_json_atomic
from kvasir_utils.profiles import load_profile
from kvasir_utils.provenance import describe_cpu, environment
from kvasir_utils.train import flops, frozen, hardware, models, presets, stages
from kvasir_utils.train.paired import paired_ratio

OUT = PROJECT_ROOT / "reports" / "bench" / "bench.json"
# Epochs of each measured stage and of the plain script: the first pays the one-off costs, the last is timed.
TIMED_EPOCHS = 2


@dataclasses.dataclass(frozen=True)
class Scale:
    """How much ``make bench`` measures: generated images per class for the component figures
    (a)-(c) and for the measured stages (80% of them train), timed steps per component figure, the
    side of the matrices that measure the peak, and settings on top of the paper profile."""

    images_per_class: int
    steps: int
    stage_images: int
    matmul_size: int = 2048
    settings: tuple[str, ...] = ()
    rounds: int = 5  # paired A/B figures: rounds that alternate the two settings (train.paired.paired_ratio)


SCALES = {
    "paper": Scale(images_per_class=16, steps=4, stage_images=40),
    # every part on the least that runs it: one small model at 32 px, uncompiled (compiling alone takes
    # minutes), 6 images a class for the stages (the stratified split needs one validation image a class)
    "small": Scale(images_per_class=4, steps=2, stage_images=6, matmul_size=256, rounds=3,
                   settings=("train.models=[mobilenet_v3_small]", "transforms.image_size=32", "cache.short_side=40",
                             "train.batch_size=8", "runtime.compile=off", "runtime.workers=0")),
}


def scale_named(name: str, **given: int | None) -> Scale:
    """The scale ``name`` with any of its numbers replaced by those ``given`` (None keeps the scale's)."""
    if name not in SCALES:
        raise KvasirError(f"unknown bench scale {name!r}: use one of {', '.join(SCALES)}")
    return dataclasses.replace(SCALES[name], **{k: v for k, v in given.items() if v is not None})


def loader_throughput(loader, passes: int = 1) -> float:
    """Images per second for iterating ``loader`` (decode + augment + collate)."""
    seen, start = 0, time.perf_counter()
    for _ in range(passes):
        for images, _ in loader:
            seen += len(images)
    return seen / (time.perf_counter() - start)


def decode_throughput(folder: Path, images: pd.DataFrame) -> float:
    """Images per second for decoding alone (no augmentation), one process."""
    start = time.perf_counter()
    for path in images["path"]:
        read_image(folder / cached_name(path))
    return len(images) / (time.perf_counter() - start)


def run(scale: Scale, out: Path = OUT, baseline: bool = False) -> dict:
    """Every figure of ``make bench`` at ``scale``, written to ``out`` as JSON."""
    # the protocol being measured: its presets, batch size, models, cache size
    cfg = load_profile("paper", list(scale.settings))
    classes, batch_size, size = cfg.data.classes, cfg.train.batch_size, cfg.transforms.image_size
    images_per_class, steps, stage_images = scale.images_per_class, scale.steps, scale.stage_images
    needed = math.ceil(2 * batch_size / len(classes))
    if images_per_class < needed:
        raise KvasirError(f"--images-per-class {images_per_class} is too few to time the loader: "
                          f"use at least {needed} (two batches of {batch_size})")
    runtime = hardware.use_runtime(cfg.runtime)
    fp32 = hardware.use_runtime(cfg.runtime.model_copy(update={"precision": "fp32"}))
    results: dict = {"machine": environment(), "scale": dataclasses.asdict(scale),
                     "runtime_auto": runtime.describe(), "batch_size": batch_size}
    machine = results["machine"]
    cores = f"{machine['usable_cores']} of its {machine['cpu_count']} cores" \
        if machine["usable_cores"] != machine["cpu_count"] else f"{machine['cpu_count']} cores"
    print(f"on {describe_cpu(machine)}, {cores}; auto: {runtime.describe()}")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        archive = synthetic.make_archive(tmp / "k.zip", classes, images_per_class, seed=0, large_fraction=0.1)
        found = find_classes(extract_archive(archive, tmp / "images", progress=False), classes)
        root, images = found.root, found.images
        start = time.perf_counter()
        build_cache(root, images, tmp / "cache", cfg.cache.short_side, progress=False)
        results["cache_build_images_per_s"] = len(images) / (time.perf_counter() - start)

        preset = presets.train_preset(cfg.transforms)

        def loader(folder):
            dataset = KvasirDataset(folder, images, classes, preset)
            return make_loader(dataset, batch_size, True, runtime.workers, runtime.pin_memory)

        full = loader_throughput(loader(root))
        cached = loader_throughput(loader(tmp / "cache"))
        results["loader_images_per_s"] = {"cache": cached, "full_size": full}
        results["loader_cache_vs_full"] = cached / full
        print(f"(a) loader with the paper's augmentation: cache {cached:.1f} img/s, full-size {full:.1f} img/s "
              f"-> {cached / full:.2f}x")
        decode = {name: decode_throughput(folder, images) for name, folder in (("cache", tmp / "cache"),
                                                                                ("full_size", root))}
        results["decode_images_per_s"] = decode
        results["decode_cache_vs_full"] = decode["cache"] / decode["full_size"]
        print(f"    decoding alone: cache {decode['cache']:.1f} img/s, full-size {decode['full_size']:.1f} img/s "
              f"-> {results['decode_cache_vs_full']:.2f}x")

        batch = torch.randn(batch_size, 3, size, size)
        targets = torch.randint(0, len(classes), (batch_size,))
        throughput = {}
        for name in cfg.train.models:
            # paired: the two settings alternate over rounds after a warm-up (train.paired), each on a copy
            # of one model, so that the two sides differ in their settings only (two models built apart
            # start from other random weights), as the runtime probe's do
            model = models.build_model(name, len(classes))
            pair = paired_ratio(step_function(copy.deepcopy(model), runtime), step_function(copy.deepcopy(model), fp32),
                                batch, targets, lambda: hardware.synchronize(runtime.device), rounds=scale.rounds,
                                steps=steps)
            throughput[name] = {"auto": pair["a_images_per_s"], "fp32": pair["b_images_per_s"]}
            results[f"{name}_auto_vs_fp32"] = pair["ratio"]
            results[f"{name}_auto_vs_fp32_spread"] = [pair["low"], pair["high"]]
            same = " (the same runtime here: this ratio is the bench's own noise)" \
                if runtime.describe() == fp32.describe() else ""
            print(f"(b) {name} train step (all layers), auto against fp32 alternated over {pair['rounds']} rounds: "
                  f"auto {pair['a_images_per_s']:.1f} img/s, fp32 {pair['b_images_per_s']:.1f} img/s -> median "
                  f"{pair['ratio']:.2f}x (rounds {pair['low']:.2f}-{pair['high']:.2f}){same}")
        results["train_step_images_per_s"] = throughput

        # (c) the same model, measured back to back: in-memory batches, then the real loader
        name = cfg.train.models[0]  # ResNet50 in the paper profile
        model = models.build_model(name, len(classes))
        pipeline_steps = min(steps, len(images) // batch_size - 1)
        model_only = step_throughput(model, runtime, batch, targets, pipeline_steps)
        pipeline = step_throughput(model, runtime, batch, targets, pipeline_steps, loader=loader(tmp / "cache"))
        results["pipeline_images_per_s"] = {"loader_and_step": pipeline, "model_only": model_only}
        results["pipeline_vs_model_only"] = pipeline / model_only
        print(f"(c) {name} loader+step {pipeline:.1f} img/s vs model only {model_only:.1f} img/s "
              f"-> {results['pipeline_vs_model_only']:.2f}")
        # (f)'s reference: as many full-size frames as (d)'s stages train on, two epochs, the second timed
        per_class = math.ceil(stage_images * (1 - cfg.split.val_fraction))
        plain_archive = synthetic.make_archive(tmp / "plain.zip", classes, per_class, seed=1, large_fraction=0.1)
        plain_root = find_classes(extract_archive(plain_archive, tmp / "plain", progress=False), classes).root
        plain = plain_stage1_images_per_s(plain_root, classes, name, size, batch_size, runtime.workers,
                                          runtime.device, TIMED_EPOCHS)
        results["plain_script"] = {"images": per_class * len(classes), "epochs": TIMED_EPOCHS,
                                   "workers": runtime.workers}
    if baseline:
        print(f"(d0) baseline: the same stages eager, every validation pass whole, {stage_images} images per class:")
        before = measure_stages(stage_images, baseline=True, settings=scale.settings)
        results["baseline"] = {"projection": project_protocol(cfg, before), "measured": before}
    print(f"(d) the paper profile's stages through fit_stage, {stage_images} generated images per class:")
    measured = measure_stages(stage_images, settings=scale.settings)
    results["projection"] = project_protocol(cfg, measured)
    if baseline:
        results["baseline"]["protocol_minutes"] = minutes = results["baseline"]["projection"]["protocol_minutes"]
        results["speedup_vs_baseline"] = minutes / results["projection"]["protocol_minutes"]
        print(f"    baseline {minutes:.1f} min -> {results['projection']['protocol_minutes']:.1f} min: "
              f"{results['speedup_vs_baseline']:.2f}x")
    results["protocol_minutes"] = results["projection"]["protocol_minutes"]
    results["measured"] = measured
    peak = peak_gflops(torch.bfloat16 if runtime.precision == "bf16" else torch.float32, runtime.device,
                       scale.matmul_size)
    results["compute_bound"] = bound = compute_bound(cfg, measured, peak)
    print(f"(e) dense {runtime.precision} matrix multiply: {peak:.0f} GFLOP/s; the protocol's forward passes alone "
          f"at that rate: {bound['protocol_floor_minutes']:.1f} minutes; each stage runs at "
          + ", ".join(f"{k} {v:.0%}" for k, v in bound["stage_fraction_of_peak"].items()) + " of it by its "
          "forward pass, " + ", ".join(f"{k} {v:.0%}" for k, v in bound["stage_work_fraction_of_peak"].items())
          + " by the arithmetic of its training step (the backward pass through what it trains too)")
    study = next(row["measured_images_per_s"] for row in measured["stages"]
                 if row["model"] == name and row["stage"] == STAGES[0])
    results["plain_script_images_per_s"] = {"study_stage1": study, "plain_script": plain}
    results["stage1_vs_plain_script"] = study / plain
    print(f"(f) {name} stage 1, second epoch: the study (d) {study:.1f} img/s against a plain script (ImageFolder "
          f"on the full-size frames, torchvision transforms, fp32, model.train()) {plain:.1f} img/s -> "
          f"{study / plain:.2f}x (the goal: 1.5x, docs/performance.md)")
    write_json_atomic(out, results)
    print(f"wrote {out}")
    return results


def measure_stages(images_per_class: int, epochs: int = TIMED_EPOCHS, progress: bool = False, baseline: bool = False,
                   settings: tuple[str, ...] = ()) -> dict:
    """The data stage and every model's stages of the paper profile (with ``settings``), run for
    real on a slice of generated full-size images, compiled as the protocol's stages would be
    (``runtime.compile`` decided for 5 x 6,400 images); per stage and epoch: images, seconds and
    rates of training and validation."""
    from torch._inductor.runtime.cache_dir_utils import temporary_cache_dir  # private: imported where used

    paper = load_profile("paper", list(settings))
    train_images = paper.data.expected_per_class * len(paper.data.classes) * (1 - paper.split.val_fraction)
    protocol_runtime = hardware.resolve_runtime(paper.runtime)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        archive = synthetic.make_archive(tmp / "generated.zip", paper.data.classes, images_per_class, seed=0,
                                         large_fraction=0.1)
        overrides = [*settings, f"paths.data={tmp / 'data'}", f"paths.runs={tmp / 'runs'}",
                     f"paths.reports={tmp / 'reports'}", f"data.url={archive}",
                     f"data.expected_per_class={images_per_class}", "train.weights=null",
                     f"train.stage1.epochs={epochs}", f"train.stage2.epochs={epochs}", "runtime.offline=true"]
        start = time.perf_counter()
        cfg = load_profile("paper", overrides)
        prepared = prepare.prepare_dataset(cfg, progress=progress)
        data_seconds = (time.perf_counter() - start) / len(prepared.manifest)
        parts = prepare.prepare_split(cfg, prepared)
        n_train, n_val = int((parts["split"] == "train").sum()), int((parts["split"] == "val").sum())
        stages = []
        # compiled graphs are measured cold (a first run's cost), not from inductor's cache of earlier runs
        with temporary_cache_dir(str(tmp / "inductor")):
            for name in cfg.train.models:
                for stage in STAGES:
                    images = paper.stage_config(stage).epochs * int(train_images)
                    decided = hardware.compile_for(protocol_runtime, images)
                    before = ["runtime.compile=off", "runtime.reuse_frozen=false", "transforms.backend=pil"]
                    how = before if baseline else [f"runtime.compile={decided.compile}"]
                    run_cfg = load_profile("paper", overrides + how)
                    # a fresh process per stage, as each notebook is: compiling's start-up is paid each time
                    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
                        stages.append(pool.submit(measure_stage, run_cfg, name, stage, n_train, n_val).result())
    return {"data_stage_seconds_per_image": data_seconds, "stages": stages,
            "images_per_class": images_per_class, "timed_epoch": epochs}


def measure_stage(cfg: Config, name: str, stage: str, n_train: int, n_val: int) -> dict:
    """One stage run for real (``stages.start_stage``): its seconds per epoch and last rates."""
    history = stages.start_stage(cfg, name, stage).fit()[HISTORY_COLUMNS]
    model = models.build_model(name, len(cfg.data.classes))
    models.set_trainable(model, cfg.stage_config(stage).trainable)
    last = history.iloc[-1]
    reuses = cfg.runtime.reuse_frozen and frozen.ValidationFeatures.for_model(model) is not None
    row = {"model": name, "stage": stage, "trainable": cfg.stage_config(stage).trainable,
           "compile": cfg.runtime.compile, "reuses_val_features": reuses,
           "train_images": n_train, "val_images": n_val,
           "train_seconds": [n_train / r for r in history["images_per_s"]],
           "val_seconds": [n_val / r for r in history["val_images_per_s"]],
           "measured_images_per_s": float(last["images_per_s"]), "val_images_per_s": float(last["val_images_per_s"]),
           "first_val_images_per_s": float(history["val_images_per_s"].iloc[0])}
    print(f"    {name} {stage} (compile {cfg.runtime.compile}): train {row['measured_images_per_s']:.1f} img/s, "
          f"validation {row['val_images_per_s']:.1f} img/s (first pass {row['first_val_images_per_s']:.1f}); "
          f"epoch 1 took {history['seconds'].iloc[0]:.1f} s, epoch {len(history)} {history['seconds'].iloc[-1]:.1f} s")
    return row


def stage_seconds(row: dict, epochs: int, train: int, val: int) -> float:
    """One stage's projected wall time: the last (steady) epoch's rates for every epoch, plus the
    first epoch's one-off cost (compiling) measured as its excess over a steady epoch. A stage that
    reuses the validation features pays one full validation pass (the first) and then the head."""
    train_extra = max(0.0, row["train_seconds"][0] - row["train_seconds"][-1])
    seconds = train_extra + epochs * train / row["measured_images_per_s"]
    if row.get("reuses_val_features"):
        return seconds + val / row["first_val_images_per_s"] + (epochs - 1) * val / row["val_images_per_s"]
    val_extra = max(0.0, row["val_seconds"][0] - row["val_seconds"][-1])
    return seconds + val_extra + epochs * val / row["val_images_per_s"]


def split_sizes(cfg: Config) -> tuple[int, int]:
    """The protocol's training and validation images: the profile's expected images, split as
    scikit-learn's train_test_split rounds (validation up)."""
    images = cfg.data.expected_per_class * len(cfg.data.classes)
    val = math.ceil(images * cfg.split.val_fraction)
    return images - val, val


def project_protocol(cfg: Config, measured: dict) -> dict:
    """Wall time of the profile's protocol on this machine from the measured rates: the data stage,
    every stage's epochs (training and a validation pass each) and the final evaluation per model
    (one full pass, not compiled). Not included: notebook start-up (a few seconds per notebook) and
    the audit (notebook 07)."""
    train, val = split_sizes(cfg)
    images = train + val
    total = images * measured["data_stage_seconds_per_image"]
    rows = []
    for row in measured["stages"]:
        epochs = cfg.stage_config(row["stage"]).epochs
        seconds = stage_seconds(row, epochs, train, val)
        rows.append({**row, "epochs": epochs, "seconds": seconds})
        total += seconds
    evaluation = {}
    for name in cfg.train.models:  # notebook 04: one more full pass over the validation images
        first = next(r for r in rows if r["model"] == name)
        evaluation[name] = val / first.get("first_val_images_per_s", first["val_images_per_s"])
        total += evaluation[name]
    frame = pd.DataFrame(rows)[["model", "stage", "measured_images_per_s", "val_images_per_s", "epochs", "seconds"]]
    print(frame.round(1).to_string(index=False))
    print(f"projected paper protocol ({images:,} images, data stage, both stages of every model, evaluation): "
          f"{total / 60:.1f} minutes")
    return {"stages": rows, "evaluation_seconds": evaluation, "total_hours": total / 3600,
            "protocol_minutes": total / 60}


def peak_gflops(dtype: torch.dtype, device: torch.device, size: int = 2048, repeats: int = 10) -> float:
    """The device's dense matrix-multiply rate (GFLOP/s) in ``dtype``: what convolutions can reach
    at best."""
    a, b = (torch.randn(size, size, dtype=dtype, device=device) for _ in range(2))
    for _ in range(2):
        a @ b
    hardware.synchronize(device)
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    hardware.synchronize(device)
    return 2 * size**3 * repeats / (time.perf_counter() - start) / 1e9


def compute_bound(cfg: Config, measured: dict, peak: float) -> dict:
    """The floor under the protocol's time on this machine: its forward passes (every training
    image of every epoch, one full validation pass per stage, the evaluation) at the dense
    matrix-multiply peak, with nothing else (no backward pass, loading or optimiser). And how close
    each measured stage runs to that peak: by its forward pass alone (``fraction_of_peak``, issue
    27's figure), and by the arithmetic its training step does (``work_fraction_of_peak``: the
    backward pass through what the stage trains too, ``train.flops.training_gflops``)."""
    train, val = split_sizes(cfg)
    size, classes = cfg.transforms.image_size, len(cfg.data.classes)
    forward = {name: flops.forward_gflops(models.build_model(name, classes), size) for name in cfg.train.models}
    unweighted = models.random_init(cfg)
    seconds = 0.0
    for row in measured["stages"]:
        epochs = cfg.stage_config(row["stage"]).epochs
        full_val_passes = 1 if row.get("reuses_val_features") else epochs
        seconds += (epochs * train + full_val_passes * val) * forward[row["model"]] / peak
        row["fraction_of_peak"] = row["measured_images_per_s"] * forward[row["model"]] / peak
        row["training_gflops_per_image"] = flops.training_gflops(
            models.stage_model(unweighted, row["model"], row["stage"]), size, cfg.train.frozen_batchnorm)
        row["work_fraction_of_peak"] = row["measured_images_per_s"] * row["training_gflops_per_image"] / peak
    seconds += sum(val * forward[name] / peak for name in cfg.train.models)
    return {"peak_gflops": peak, "forward_gflops_per_image": forward, "protocol_floor_minutes": seconds / 60,
            "stage_fraction_of_peak": {f"{r['model']} {r['stage']}": r["fraction_of_peak"]
                                       for r in measured["stages"]},
            "stage_work_fraction_of_peak": {f"{r['model']} {r['stage']}": r["work_fraction_of_peak"]
                                            for r in measured["stages"]}}

