"""PyTorch Dataset and DataLoader over the resized cache."""

from __future__ import annotations

import multiprocessing
import sys
from pathlib import Path

import pandas as pd
import torch

from kvasir_utils.config import cached_name
from kvasir_utils.data.images import read_image


class KvasirDataset(torch.utils.data.Dataset):
    """Images of one split part, read from the resized cache, transformed by a preset."""

    def __init__(self, cache_root: Path, frame: pd.DataFrame, classes: list[str], transform=None):
        self.cache_root = Path(cache_root)
        self.paths = [cached_name(p) for p in frame["path"]]
        index = {name: i for i, name in enumerate(classes)}
        self.targets = [index[label] for label in frame["label"]]
        self.transform = transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int):
        image = read_image(self.cache_root / self.paths[i])
        if self.transform is not None:
            image = self.transform(image)
        return image, self.targets[i]


def split_datasets(cache_root: Path, split: pd.DataFrame, classes: list[str], train_transform,
                   eval_transform) -> dict[str, KvasirDataset]:
    """``{"train": ..., "val": ...}`` over the resized cache, in the profile's class order."""
    return {
        "train": KvasirDataset(cache_root, split[split["split"] == "train"], classes, train_transform),
        "val": KvasirDataset(cache_root, split[split["split"] == "val"], classes, eval_transform),
    }


def worker_context(workers: int):
    """How loader workers start: forked where the platform can, whatever started this process. Python's
    default is the start method of the process that builds the loader, which is ``spawn`` inside a
    process that was itself spawned (gpu-check's concurrent runs, the bench's stage processes): each
    worker then starts a new interpreter that imports torch, every epoch (seen on the H200 machine:
    docs/performance.md). Workers only decode and augment on the CPU, which forking allows. Only on
    Linux: on macOS Python holds fork unsafe, and the platform's default (spawn) stays."""
    if workers == 0 or not sys.platform.startswith("linux"):
        return None
    return multiprocessing.get_context("fork")


def make_loader(dataset, batch_size: int, shuffle: bool, workers: int, pin_memory: bool, seed: int = 0,
                collate_fn=None):
    """A DataLoader whose shuffle order depends only on ``seed`` (so a resumed epoch matches), its
    workers forked (``worker_context``)."""
    return torch.utils.data.DataLoader(
        dataset, batch_size=batch_size, shuffle=shuffle, num_workers=workers,
        pin_memory=pin_memory, persistent_workers=False, drop_last=False,
        generator=torch.Generator().manual_seed(seed), collate_fn=collate_fn,
        multiprocessing_context=worker_context(workers),
    )
