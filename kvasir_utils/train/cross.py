"""Cross-dataset evaluation: a run's trained models on another dataset's images, through a class
mapping, after the near-duplicate audit has looked across the two datasets.

The target's data stage runs as its notebook 01 would (download or generate, extract, cache; its
split is not needed: every image of a mapped class is scored, none was trained on). Each target
image is compared with the source run's training images by perceptual hash; those with a
near-identical frame there are marked ``overlap``, so the score is given with and without them.
Predictions go to ``runs/<source profile>/cross/<target profile>/<model>/predictions.csv``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from kvasir_utils import artefacts
from kvasir_utils.analysis import cross_dataset
from kvasir_utils.analysis.runs import read_evaluations
from kvasir_utils.config import Config
from kvasir_utils.data import dataset, duplicates, prepare
from kvasir_utils.data.cache import usable_images
from kvasir_utils.data.split import read_split
from kvasir_utils.files import write_csv_atomic
from kvasir_utils.train import checkpoints, hardware, loop, models, presets


@dataclass
class CrossEvaluation:
    """What ``cross_evaluate`` found: per model its predictions on the target, and the tables."""

    mapping: cross_dataset.ClassMapping
    source_classes: list[str]
    left_out: pd.DataFrame  # target classes without a counterpart, with their images
    mapping_table: pd.DataFrame  # per mapped target class: source class, images, overlap
    summary: pd.DataFrame = None
    predictions: dict[str, pd.DataFrame] = field(default_factory=dict)
    tables: dict[str, dict[str, pd.DataFrame]] = field(default_factory=dict)


def training_overlap(source: Config, target: Config, images: pd.DataFrame) -> pd.Series:
    """True for each target image with a near-identical frame among the source run's training images:
    perceptual hashes within the source profile's ``split.near_duplicates.phash_bits``, as its audit counts."""
    split = read_split(source.run.split, source.classes)
    train = split.loc[split["split"] == "train", "path"]
    pairs = duplicates.cross_pairs(prepare.image_hashes(target, images["path"]), prepare.image_hashes(source, train),
                                   source.split.near_duplicates.phash_bits)
    overlap = pd.Series(False, index=images.index, name="overlap")
    overlap.iloc[pairs["i"].unique()] = True
    return overlap


def predict_target(source: Config, model_name: str, target: Config, images: pd.DataFrame,
                   runtime: hardware.Runtime) -> pd.DataFrame:
    """``images`` (mapped, with ``true``) with the model's ``pred``, ``confidence`` and every source
    class's probability, through the source run's evaluation preset."""
    source = models.for_model(source, model_name)  # a profile that leaves the input to the model: the model's own
    model, runtime = checkpoints.load_trained(source, model_name, runtime)  # as the source run's stages chose
    frame = images.assign(label=images["source_label"])
    preset = presets.eval_preset(source.transforms)
    data = dataset.KvasirDataset(prepare.cache_dir(target), frame, source.classes, preset)
    loader = dataset.make_loader(data, source.train.batch_size, False, runtime.workers, runtime.pin_memory)
    probs, targets, _ = loop.predict(model, loader, runtime, desc=f"{model_name} on {target.profile}")
    scored = images.assign(pred=probs.argmax(1), confidence=probs.max(1))
    return pd.concat([scored, pd.DataFrame(probs, columns=artefacts.probability_columns(source.classes))], axis=1)


def cross_evaluate(source: Config, target: Config, mapping_file=None, model_names: list[str] | None = None,
                   progress: bool = True) -> CrossEvaluation:
    """Score ``source``'s trained models on ``target``'s dataset (see the module's docstring)."""
    default_mapping = cross_dataset.mapping_path(source.data.dataset, target.data.dataset)
    mapping = cross_dataset.read_mapping(mapping_file or default_mapping)
    prepared = prepare.prepare_dataset(target, progress)
    cross_dataset.check_mapping(mapping, source.classes, prepared.classes)
    images, left_out = cross_dataset.map_images(usable_images(prepared.manifest, target.data.on_unreadable), mapping,
                                                source.classes)
    images["overlap"] = training_overlap(source, target, images)
    found = CrossEvaluation(mapping, source.classes, left_out, cross_dataset.mapping_table(images))
    runtime = hardware.use_runtime(source.runtime)
    for name in model_names or source.train.models:
        found.predictions[name] = predict_target(source, name, target, images, runtime)
        write_csv_atomic(found.predictions[name], source.run.cross_predictions(target.profile, name))
        found.tables[name] = cross_dataset.cross_tables(found.predictions[name], source.classes)
    records = {name: record for name, (record, _) in read_evaluations(source, required=False).items()}
    found.summary = cross_dataset.cross_summary(found.predictions, records, source.classes)
    return found
