"""``make bench``: throughput of the pieces that decide how long the paper's protocol takes.

Measured in one run, on generated full-size JPEGs, and reported as ratios (this machine's
absolute speed varies from run to run; ratios measured side by side hold better):
  (a) loader_cache_vs_full        train loader reading the resized cache / decoding the originals
  (b) <model>_auto_vs_fp32        training step with precision ``auto`` / ``fp32``
  (c) pipeline_vs_model_only      loader + step / step on tensors already in memory
plus a projection of the paper protocol's wall time on this machine. Writes reports/bench/bench.json.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch
from torch import nn

from kvasir_utils import engine, models, synthetic, transforms
from kvasir_utils.cache import build_cache, cached_name
from kvasir_utils.config import PROJECT_ROOT, STAGES, Config, RuntimeConfig, load_profile
from kvasir_utils.dataset import KvasirDataset, make_loader, read_image
from kvasir_utils.environment import environment
from kvasir_utils.errors import KvasirError
from kvasir_utils.extract import extract_archive, find_class_root, scan_images
from kvasir_utils.io import write_json_atomic


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


def step_throughput(model, runtime, batch: torch.Tensor, targets: torch.Tensor, steps: int,
                    loader=None, train: bool = True) -> float:
    """Images per second of training steps (or inference when ``train`` is false), on ``batch``
    held in memory, or on batches from ``loader`` when given. One warm-up step is not timed."""
    model = engine.prepare_model(model, runtime)
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.Adam(params, lr=1e-4) if train else None
    criterion = nn.CrossEntropyLoss()
    batches = iter(loader) if loader is not None else None

    def one_step():
        images, labels = next(batches) if batches is not None else (batch, targets)
        images, labels = engine.to_device(images, runtime), labels.to(runtime.device)
        if not train:
            with torch.inference_mode(), runtime.autocast():
                model(images)
            return len(labels)
        with runtime.autocast():
            loss = criterion(model(images).float(), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return len(labels)

    models.set_train_mode(model) if train else model.eval()
    one_step()
    if runtime.device.type == "cuda":
        torch.cuda.synchronize()
    seen, start = 0, time.perf_counter()
    for _ in range(steps):
        seen += one_step()
    if runtime.device.type == "cuda":
        torch.cuda.synchronize()
    return seen / (time.perf_counter() - start)


def run(images_per_class: int, steps: int, out: Path) -> dict:
    cfg = load_profile("paper")  # the protocol being measured: its presets, batch size, models, cache size
    classes, batch_size, size = cfg.data.classes, cfg.train.batch_size, cfg.transforms.image_size
    needed = math.ceil(2 * batch_size / len(classes))
    if images_per_class < needed:
        raise KvasirError(f"--images-per-class {images_per_class} is too few to time the loader: "
                          f"use at least {needed} (two batches of {batch_size})")
    runtime = engine.resolve_runtime(RuntimeConfig())
    fp32 = engine.resolve_runtime(RuntimeConfig(precision="fp32"))
    results: dict = {"machine": environment(), "runtime_auto": runtime.describe(), "batch_size": batch_size}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        archive = synthetic.make_archive(tmp / "k.zip", classes, images_per_class, seed=0, large_fraction=0.1)
        root = find_class_root(extract_archive(archive, tmp / "images", progress=False), classes)
        images = scan_images(root, classes)
        start = time.perf_counter()
        build_cache(root, images, tmp / "cache", cfg.cache.short_side, progress=False)
        results["cache_build_images_per_s"] = len(images) / (time.perf_counter() - start)

        preset = transforms.train_preset(cfg.transforms)

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
            throughput[name] = {}
            for label, rt in (("auto", runtime), ("fp32", fp32)):
                model = models.build_model(name, len(classes))
                throughput[name][label] = step_throughput(model, rt, batch, targets, steps)
            ratio = throughput[name]["auto"] / throughput[name]["fp32"]
            results[f"{name}_auto_vs_fp32"] = ratio
            print(f"(b) {name} train step (all layers): auto {throughput[name]['auto']:.1f} img/s, "
                  f"fp32 {throughput[name]['fp32']:.1f} img/s -> {ratio:.2f}x")
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
        results["projection"] = project_paper_protocol(cfg, runtime, batch, targets, steps, results)
    write_json_atomic(out, results)
    print(f"wrote {out}")
    return results


def project_paper_protocol(cfg: Config, runtime, batch, targets, steps: int, measured: dict) -> dict:
    """Projected wall time of the profile on this machine, from measured stage throughputs."""
    images = cfg.data.expected_per_class * len(cfg.data.classes)
    val = math.ceil(images * cfg.split.val_fraction)  # as scikit-learn's train_test_split rounds
    split = {"train": images - val, "val": val}
    total = images / measured["cache_build_images_per_s"]
    rows = []
    for name in cfg.train.models:
        model = models.build_model(name, len(cfg.data.classes))
        infer = step_throughput(model, runtime, batch, targets, steps, train=False)
        seconds = 0.0
        for stage in STAGES:
            stage_cfg = cfg.stage_config(stage)
            model = models.build_model(name, len(cfg.data.classes))
            models.set_trainable(model, stage_cfg.trainable)
            rate = step_throughput(model, runtime, batch, targets, steps) * measured["pipeline_vs_model_only"]
            stage_seconds = stage_cfg.epochs * (split["train"] / rate + split["val"] / infer)
            rows.append({"model": name, "stage": stage, "train_images_per_s": rate, "seconds": stage_seconds})
            seconds += stage_seconds
        total += seconds + split["val"] / infer
    frame = pd.DataFrame(rows)
    print(frame.round(1).to_string(index=False))
    print(f"projected paper protocol (cache build, both models, both stages, evaluation): {total / 3600:.2f} h")
    return {"stages": rows, "total_hours": total / 3600}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--images-per-class", type=int, default=16, help="generated full-size images per class")
    parser.add_argument("--steps", type=int, default=4, help="timed training steps per measurement")
    parser.add_argument("--out", type=Path, default=PROJECT_ROOT / "reports" / "bench" / "bench.json")
    args = parser.parse_args(argv)
    try:
        run(args.images_per_class, args.steps, args.out)
    except KvasirError as exc:
        sys.exit(f"error: {exc}")


if __name__ == "__main__":
    main()
