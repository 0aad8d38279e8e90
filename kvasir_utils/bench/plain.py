"""``make bench``'s (f): stage 1 of the paper's protocol as a user would write it without the study,
the reference the study's own stage 1 is measured against (the goal: 1.5x on every CPU).

The plain script: torchvision's ``ImageFolder`` on the full-size frames, its standard augmentation
(random resized crop, flip, to tensor, ImageNet normalisation) in a ``DataLoader``, the torchvision
model with every parameter frozen but the new head's, ``model.train()``, Adam on the head, fp32 and
contiguous tensors, on the study's device. None of the study's choices: no resized cache, no probe of precision or memory
format, no compile, BatchNorm not held in eval mode.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import torch
import torchvision
from torch import nn
from torchvision import transforms

from kvasir_utils.bench.timing import images_per_second
from kvasir_utils.train.models import TORCHVISION_SETTINGS, head_name


def plain_loader(root: Path, size: int, batch_size: int, workers: int) -> torch.utils.data.DataLoader:
    """``ImageFolder`` over ``root`` (a folder per class of full-size frames) with the usual training transforms."""
    augment = transforms.Compose([transforms.RandomResizedCrop(size), transforms.RandomHorizontalFlip(),
                                  transforms.ToTensor(),
                                  transforms.Normalize(TORCHVISION_SETTINGS["mean"], TORCHVISION_SETTINGS["std"])])
    dataset = torchvision.datasets.ImageFolder(str(root), transform=augment)
    return torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=True, num_workers=workers,
                                       drop_last=True)


def plain_stage1_images_per_s(root: Path, model_name: str, size: int, batch_size: int, steps: int,
                              workers: int, device: torch.device) -> float:
    """Training images per second of the plain script's stage 1 (``steps`` timed batches after one
    untimed), the loader started again at each pass over ``root`` as a script's epochs do."""
    loader = plain_loader(root, size, batch_size, workers)
    model = torchvision.models.get_model(model_name, num_classes=len(loader.dataset.classes))
    for parameter in model.parameters():
        parameter.requires_grad_(False)
    head = model.get_submodule(head_name(model))
    for parameter in head.parameters():
        parameter.requires_grad_(True)
    model.to(device).train()
    optimizer = torch.optim.Adam(head.parameters(), lr=1e-3)
    criterion = nn.CrossEntropyLoss()

    def step(images, labels):
        images, labels = images.to(device), labels.to(device)
        optimizer.zero_grad()
        criterion(model(images), labels).backward()
        optimizer.step()

    batches = itertools.chain.from_iterable(loader for _ in itertools.count())
    return images_per_second(step, batches, steps, device)
