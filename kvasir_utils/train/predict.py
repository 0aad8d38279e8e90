"""The trained model put to use: a finished checkpoint with the settings it was trained with,
predicting new images exactly as notebook 04 predicts the validation images.

A new image takes the validation images' path: the cache's resize and JPEG copy
(``data.cache.cache_copy``), the eval preset (with the overlay mask where the model was trained
with one), and the batch step evaluation uses (``train.loop.predict_batch``), on the device and in
the precision training resolved. Each image also gets the guide-box flag and its nearest training
image by perceptual hash (both on the cached copy, as notebook 07 computes them), and for the
gallery the Grad-CAM map of the predicted class.
"""

from __future__ import annotations

import io
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from PIL import Image
from tqdm import tqdm

from kvasir_utils.artefacts import (
    STAGES,
    Checkpoint,
    RunFolder,
    final_stage,
    model_folder,
    model_named,
    probability_columns,
)
from kvasir_utils.config import Config
from kvasir_utils.data import duplicates, layout, overlays, prepare, sources
from kvasir_utils.data.cache import MANIFEST, cache_copy
from kvasir_utils.data.images import iter_cached
from kvasir_utils.data.split import read_split
from kvasir_utils.errors import KvasirError
from kvasir_utils.files import is_utf8_name, shown_name
from kvasir_utils.profiles import with_protocol
from kvasir_utils.train import checkpoints, explain, hardware, loop, presets

# Why a file whose name is not UTF-8 is skipped: its name cannot be written into predictions.csv or the page
NOT_UTF8 = "its name is not valid UTF-8, so it cannot be named in the table: rename it (e.g. convmv -f latin1 -t utf8)"

# Why an archive given among the images is skipped, and what to do instead
ARCHIVE_SUFFIXES = (*sources.ARCHIVE_SUFFIXES, ".7z", ".rar")  # those the study reads, and two it does not
ARCHIVE = "an archive, not an image: unpack it and give the folder (IMAGES=<the unpacked folder>)"

# predictions.csv of a prediction, besides one ``p_<class>`` column per class
COLUMNS = ["file", "predicted", "probability", "guide_box", "train_near_duplicate", "train_near_duplicate_distance"]


def check_model(cfg: Config, model_name: str) -> str:
    """The profile's model that ``model_name`` names (its full name or its folder name, e.g.
    ``timm:convnext_tiny`` or ``timm-convnext_tiny``); refused with the profile's models otherwise."""
    found = model_named(cfg.train.models, model_name)
    if found is None:
        raise KvasirError(f"MODEL={model_name!r} is not a model of profile {cfg.profile}; its models: "
                          f"{', '.join(cfg.train.models)} (a timm model's folder name, timm-<name>, works too)")
    return found


def latest_checkpoint(run_folder: Path, model_name: str) -> Path | None:
    """The checkpoint of the furthest stage the model has reached in ``run_folder`` (``runs/<profile>``);
    whether that stage delivers the model is ``artefacts.final_stage``'s to say, from its settings."""
    run = RunFolder(Path(run_folder))
    found = [run.checkpoint(model_name, stage) for stage in STAGES if run.checkpoint(model_name, stage).exists()]
    return found[-1] if found else None


def _go_on(cfg: Config) -> str:
    overrides = f' SET="{" ".join(cfg.overrides)}"' if cfg.overrides else ""
    return f"make reproduce PROFILE={cfg.profile_argument}{overrides}"


def load_finished(run_folder: Path, model_name: str, profile: str | None = None) -> tuple[Checkpoint, Config, Path]:
    """The model's final checkpoint, the settings it recorded (read with today's protocol filling
    what it lacks) and its path; refused with the remedy when it is missing, of another checkpoint
    format, or unfinished (its last stage has fewer epochs than its settings ask)."""
    path = latest_checkpoint(run_folder, model_name)
    if path is None:
        raise KvasirError(f"no trained {model_name} in {run_folder} (no checkpoint under {model_folder(model_name)}/): "
                          "train it first (make reproduce PROFILE=...), or check PROFILE, MODEL and "
                          "SET=\"paths.runs=...\"")
    profile = profile or Path(run_folder).name  # the PROFILE the command was given, where the caller knows it
    checkpoint = checkpoints.load_checkpoint(path, profile)
    cfg = with_protocol(checkpoint.config, profile)
    stage, final = checkpoint.stage, final_stage(cfg.train.stage2.epochs)
    epochs = cfg.stage_config(stage).epochs
    if stage != final or checkpoint.epoch < epochs:
        missing = f"; {final} has not started" if stage != final else ""
        raise KvasirError(
            f"{model_name} in {run_folder} is not finished: {stage} has trained {checkpoint.epoch} of its {epochs} "
            f"epochs{missing} ({path}). A model in the middle of training is not the study's model. Finish it: "
            f"`{_go_on(cfg)}` goes on from its last epoch.")
    return checkpoint, cfg, path


def image_files(images: Path) -> list[Path]:
    """Every file under ``images`` (a folder, searched recursively, hidden files left out), or the
    one file given; whether each is an image is found out when it is read."""
    images = Path(images).expanduser()
    if images.is_file():
        return [images]
    if not images.is_dir():
        raise KvasirError(f"{images} does not exist: give IMAGES=<a folder of images, or one image file>")
    files = sorted(Path(folder) / name for folder, _, names in layout.walk_folders(images)  # linked folders too
                   for name in names if not name.startswith(".") and (Path(folder) / name).is_file())
    if not files:
        raise KvasirError(f"{images} holds no files: give IMAGES=<a folder of images, or one image file>")
    return files


@dataclass
class PredictedBatch:
    """One batch of ``Predictor.predict_files``: predictions.csv's rows of the images that could be
    read, their cached copies and Grad-CAM overlays, and the files that could not be read."""

    table: pd.DataFrame
    views: list[Image.Image]
    overlays: list[np.ndarray]
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file, why)


@dataclass
class Predictor:
    """A trained model ready to predict: ``Predictor.from_run(cfg.run_dir, "resnet50")``."""

    cfg: Config  # the settings the model was trained with, as its checkpoint recorded them
    model_name: str
    model: torch.nn.Module  # on the runtime's device, in eval mode
    runtime: hardware.Runtime
    checkpoint: Path
    run_folder: Path
    _training: tuple[list[str], np.ndarray] | None = field(default=None, repr=False)

    @classmethod
    def from_run(cls, run_folder: Path, model_name: str, runtime: hardware.Runtime | None = None,
                 profile: str | None = None) -> Predictor:
        """Load ``model_name``'s finished checkpoint from ``run_folder`` (``runs/<profile>``), on
        ``runtime`` or on the device and precision its settings resolve to on this machine (what they
        leave to a probe, taken from the checkpoint's record: ``train.probe.adopt``)."""
        checkpoint, cfg, path = load_finished(Path(run_folder), model_name, profile)
        runtime = hardware.apply_determinism(runtime or hardware.resolve_runtime(cfg.runtime))
        model, runtime = checkpoints.restore_trained(cfg, model_name, checkpoint, runtime)  # as the stages chose
        return cls(cfg, model_name, model.eval(), runtime, path, Path(run_folder))

    @property
    def classes(self) -> list[str]:
        return self.cfg.classes

    def view(self, image: Image.Image) -> Image.Image:
        """``image`` as the cache holds an image: resized, JPEG-encoded and decoded again (RGB)."""
        with Image.open(io.BytesIO(cache_copy(image, self.cfg.cache.short_side, self.cfg.cache.quality))) as cached:
            return cached.convert("RGB")

    def read(self, path: Path) -> Image.Image:
        """An image file's cached copy, decoded as the cache decodes it (JPEG at a reduced scale)."""
        with Image.open(path) as image:
            return self.view(image)

    def probabilities(self, views: list[Image.Image]) -> np.ndarray:
        """Softmax probabilities of cached copies, in batches of ``train.batch_size``, exactly as
        the evaluation computes them."""
        preset, size = presets.eval_preset(self.cfg.transforms), self.cfg.train.batch_size
        if not views:
            return np.zeros((0, len(self.classes)), np.float32)
        with torch.inference_mode():
            return torch.cat([loop.predict_batch(self.model, torch.stack([preset(v) for v in views[i:i + size]]),
                                                 self.runtime) for i in range(0, len(views), size)]).numpy()

    def training_hashes(self) -> tuple[list[str], np.ndarray] | None:
        """The training images' paths and perceptual hashes (of their cached copies, computed once),
        or None where the run's split or cache is not on this machine."""
        cache = prepare.cache_dir(self.cfg)
        split_csv = RunFolder(self.run_folder).split
        if self._training is None and split_csv.exists() and (cache / MANIFEST).exists():
            split = read_split(split_csv, self.classes)
            paths = split.loc[split["split"] == "train", "path"].tolist()
            self._training = paths, duplicates.perceptual_hashes(iter_cached(cache, paths))
        return self._training

    def table(self, files: list[str], views: list[Image.Image]) -> pd.DataFrame:
        """predictions.csv's rows for cached copies: the predicted class and its probability, every
        class's probability, the guide-box flag and the nearest training image within the run profile's
        ``split.near_duplicates.phash_bits`` (empty when there is none, or no training set to compare)."""
        probs = self.probabilities(views)
        frame = pd.DataFrame({"file": files, "predicted": [self.classes[i] for i in probs.argmax(1)],
                              "probability": probs.max(1)})
        frame = pd.concat([frame, pd.DataFrame(probs, columns=probability_columns(self.classes))], axis=1)
        frame["guide_box"] = [overlays.has_guide_box(v) for v in views]
        training = self.training_hashes()
        near, distance = [None] * len(views), [None] * len(views)
        if training is not None and views:
            index, bits = duplicates.nearest(duplicates.perceptual_hashes(views), training[1])
            close = bits <= self.cfg.split.near_duplicates.phash_bits  # the run's own threshold, as notebook 07's
            near = [training[0][i] if c else None for i, c in zip(index, close)]
            distance = [int(b) if c else None for b, c in zip(bits, close)]
        frame["train_near_duplicate"] = pd.Series(near, dtype="string")
        frame["train_near_duplicate_distance"] = pd.Series(distance, dtype="Int64")
        return frame[[*COLUMNS[:3], *probability_columns(self.classes), *COLUMNS[3:]]]

    def predict(self, images: Iterable[Image.Image | str | Path]) -> pd.DataFrame:
        """predictions.csv's rows for PIL images or image paths (``file``: the path, or ``image <i>``)."""
        images = list(images)
        views = [self.view(x) if isinstance(x, Image.Image) else self.read(Path(x)) for x in images]
        names = [f"image {i}" if isinstance(x, Image.Image) else str(x) for i, x in enumerate(images)]
        return self.table(names, views)

    def gradcam(self, views: list[Image.Image], targets: list[int]) -> list[np.ndarray]:
        """Grad-CAM of class ``targets`` on what the model saw of each cached copy (uint8 RGB)."""
        view, preset = presets.eval_view(self.cfg.transforms), presets.eval_preset(self.cfg.transforms)
        tensors = torch.stack([preset(v) for v in views])
        return explain.gradcam_overlays(self.model, [view(v) for v in views], tensors, targets)

    def predict_files(self, files: list[Path], root: Path, gradcam: bool = True,
                      progress: bool = True) -> Iterator[PredictedBatch]:
        """Predict ``files`` (named relative to ``root`` in the table) a batch at a time; a file that
        cannot be read as an image is skipped and named with the reason."""
        bar = tqdm(total=len(files), desc=f"{self.model_name} predict", unit="img", disable=not progress,
                   mininterval=1)
        with bar:
            for start in range(0, len(files), self.cfg.train.batch_size):
                chunk = files[start:start + self.cfg.train.batch_size]
                names, views, skipped = [], [], []
                for path in chunk:
                    name = path.relative_to(root).as_posix()
                    if not is_utf8_name(name):  # it could be read, but not named in the table or the page
                        skipped.append((shown_name(name), NOT_UTF8))
                        continue
                    try:
                        views.append(self.read(path))
                        names.append(name)
                    except Exception as exc:  # noqa: BLE001 - whatever the decoder says is the reason
                        skipped.append((name, ARCHIVE if path.name.lower().endswith(ARCHIVE_SUFFIXES)
                                        else f"{type(exc).__name__}: {exc}"))
                table = self.table(names, views)
                targets = [self.classes.index(c) for c in table["predicted"]]
                cams = self.gradcam(views, targets) if gradcam and views else []
                bar.update(len(chunk))
                yield PredictedBatch(table, views, cams, skipped)
