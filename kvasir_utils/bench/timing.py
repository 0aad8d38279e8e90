"""One step timer for ``make bench`` and ``make gpu-check``: images per second of training (or
inference) steps, the first an untimed warm-up, the device synchronised around the timed part. Paired
A/B figures (the two settings alternated over rounds) are ``train.paired.paired_ratio``, which the
runtime probe shares.
"""

from __future__ import annotations

import itertools
import time

import torch
from torch import nn

from kvasir_utils.errors import KvasirError
from kvasir_utils.train import hardware, loop, models


def images_per_second(step, batches, steps: int, device: torch.device) -> float:
    """Time ``steps`` calls of ``step(images, targets)`` on ``batches``, after one untimed warm-up call."""
    if steps < 1:
        raise KvasirError("too few batches to time a step: use more images (at least 2 batches)")
    batches = iter(batches)
    step(*next(batches))
    hardware.synchronize(device)
    seen, start = 0, time.perf_counter()
    for images, targets in itertools.islice(batches, steps):
        step(images, targets)
        seen += len(targets)
    hardware.synchronize(device)
    return seen / (time.perf_counter() - start)


def train_steps(model, optimizer, criterion, runtime: hardware.Runtime, batches, steps: int) -> float:
    """Images per second of training steps on ``batches`` (on the device already): warm-up + ``steps - 1``."""
    def step(images, targets):
        loop.train_step(model, criterion, optimizer, images, targets, runtime)

    return images_per_second(step, batches, steps - 1, runtime.device)


def step_throughput(model, runtime: hardware.Runtime, batch: torch.Tensor, targets: torch.Tensor, steps: int,
                    loader=None, train: bool = True) -> float:
    """Images per second of training steps (or inference when ``train`` is false) on ``batch`` held
    in memory, or on batches from ``loader`` when given."""
    source = loader if loader is not None else itertools.repeat((batch, targets))
    return images_per_second(step_function(model, runtime, train), source, steps, runtime.device)


def step_function(model, runtime: hardware.Runtime, train: bool = True):
    """One training (or inference) step of ``model`` under ``runtime``, as ``step(images, labels)``."""
    model = hardware.prepare_model(model, runtime)
    models.set_train_mode(model) if train else model.eval()
    optimizer = loop.adam([p for p in model.parameters() if p.requires_grad], 1e-4) if train else None
    criterion = nn.CrossEntropyLoss()

    def step(images, labels):
        images, labels = hardware.to_device(images, runtime), labels.to(runtime.device)
        if train:
            loop.train_step(model, criterion, optimizer, images, labels, runtime)
        else:
            with torch.inference_mode(), runtime.autocast():
                model(images)

    return step
