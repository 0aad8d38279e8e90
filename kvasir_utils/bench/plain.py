"""``make bench``'s (f): stage 1 of the paper's protocol as a user would write it without the study,
the reference that the study's own stage 1 is measured against (docs/performance.md: 1.5x is the goal).

The plain script: torchvision's ``ImageFolder`` on the full-size frames, its standard augmentation
(random resized crop, flip, to tensor, ImageNet normalisation) in a ``DataLoader``, the torchvision
model with every parameter frozen but the new head's, ``model.train()``, Adam on the head, fp32 and
contiguous tensors, on the study's device. None of the study's choices: no resized cache, no probe
of precision or memory format, no compile, BatchNorm not held in eval mode. It is timed as the
study's stage is (``loop.train_one_epoch``): a whole epoch, loader start included, the second.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
import torchvision
from torch import nn
from torchvision import transforms

from kvasir_utils.errors import KvasirError
from kvasir_utils.train.hardware import synchronize
from kvasir_utils.train.models import TORCHVISION_SETTINGS, head_name


def plain_loader(root: Path, classes: list[str], size: int, batch_size: int, workers: int):
    """``ImageFolder`` over ``root`` (a folder per class of full-size frames) with the usual training
    transforms; its class folders must be ``classes``, or the script would train another problem."""
    augment = transforms.Compose([transforms.RandomResizedCrop(size), transforms.RandomHorizontalFlip(),
                                  transforms.ToTensor(),
                                  transforms.Normalize(TORCHVISION_SETTINGS["mean"], TORCHVISION_SETTINGS["std"])])
    dataset = torchvision.datasets.ImageFolder(str(root), transform=augment)
    if dataset.classes != sorted(classes):
        raise KvasirError(f"the plain script's folder {root} holds the classes {dataset.classes}, not the "
                          f"profile's {sorted(classes)}")
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers)


def plain_stage1_images_per_s(root: Path, classes: list[str], model_name: str, size: int, batch_size: int,
                              workers: int, device: torch.device, epochs: int) -> float:
    """Training images per second of the plain script's stage 1 over ``root``: the last of ``epochs``
    whole epochs (the first pays the one-off start-up), as (d)'s stages are read."""
    loader = plain_loader(root, classes, size, batch_size, workers)
    model = torchvision.models.get_model(model_name, num_classes=len(classes))
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    head = model.get_submodule(head_name(model))
    for parameter in head.parameters():
        parameter.requires_grad_(True)
    model.to(device).train()
    optimizer = torch.optim.Adam(head.parameters(), lr=1e-3)
    criterion = nn.CrossEntropyLoss()
    rate = 0.0
    for _ in range(epochs):
        seen, start = 0, time.perf_counter()
        for images, labels in loader:
            images, labels = images.to(device), labels.to(device)
            optimizer.zero_grad()
            criterion(model(images), labels).backward()
            optimizer.step()
            seen += len(labels)
        synchronize(device)
        rate = seen / (time.perf_counter() - start)
    return rate
