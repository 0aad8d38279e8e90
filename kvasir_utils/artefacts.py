"""A run's artefacts: every folder and file name the study writes, in one place.

A run folder (``runs/<profile>/``) and a report folder (``reports/<profile>/``) are laid out here and nowhere else;
so are the names of the tables and figures the notebooks save and the pages read back, the probability columns of
``predictions.csv``, the stage that delivers the trained model, and the two typed records a run writes (the
checkpoint, ``metrics.json``). Everything else asks here for a path. It imports only the study's error type.

```
runs/<profile>/
  config.yaml  settings.yaml  source.yaml  dataset.json  split.csv  notebooks/  (the second and third: make's stamps)
  <model>/stage1/  checkpoint.pt  history.csv  tensorboard/  weights.json
  <model>/stage2/  (the same, without weights.json)
  <model>/eval/    predictions.csv  metrics.json
  cross/<target profile>/<model>/predictions.csv
reports/<profile>/
  index.html  html/  tables/<name>.{csv,md,tex}  figures/<name>.{png,svg}
  models/<model>/  predict/<name>/
  notebooks/<executed>.ipynb  files/<model>/{predictions.csv,metrics.json}  (copies: the folder stands alone)
```
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from kvasir_utils.errors import KvasirError

STAGES = ("stage1", "stage2")

# -- file names ---------------------------------------------------------------------------
SETTINGS = "config.yaml"  # the resolved settings of the run (profile + SET), saved by notebook 01
SETTINGS_STAMP = "settings.yaml"  # what changes results, rewritten only when it changes: make's stamp for notebook 01
SOURCE_STAMP = "source.yaml"  # the local files and folders the dataset is read from, as make's stamp for notebook 01
DATASET = "dataset.json"  # the dataset the split was made from: its source and classes
SPLIT = "split.csv"
LAB_SESSION = ".lab-session.json"  # beside the notebooks: the profile `make lab PROFILE=...` opened them with
NEAR_DUPLICATES = "near_duplicates.csv"  # the dataset's near-duplicate pairs, by detector (notebook 01)
NEAR_DUPLICATE_DETECTORS = "near_duplicates.json"  # each detector's threshold and how it did on planted copies
CHECKPOINT = "checkpoint.pt"
HISTORY = "history.csv"
TENSORBOARD = "tensorboard"
WEIGHTS = "weights.json"  # the pretrained weights stage 1 started from
METRICS = "metrics.json"
PREDICTIONS = "predictions.csv"
SKIPPED = "skipped.csv"  # a prediction's files that could not be read
PREDICT_RECORD = "predict.json"  # what a prediction was made with
RUNTIME_PROBE = "runtime-probe.json"  # under paths.data: this machine's runtime measurements (train.probe)

PROBABILITY_PREFIX = "p_"


class ArtefactError(KvasirError):
    """A run's file that is not in the layout this version writes, or a name that is not one of the run's."""


def checked_stage(stage: str) -> str:
    if stage not in STAGES:
        raise ArtefactError(f"unknown stage {stage!r}; expected one of {', '.join(STAGES)}")
    return stage


def final_stage(stage2_epochs: int) -> str:
    """The stage whose checkpoint is the trained model: stage 2, unless it trains 0 epochs."""
    return STAGES[1] if stage2_epochs > 0 else STAGES[0]


# -- predictions.csv's probability columns ------------------------------------------------
def probability_column(class_name: str) -> str:
    return f"{PROBABILITY_PREFIX}{class_name}"


def probability_columns(classes: list[str]) -> list[str]:
    """``predictions.csv``'s columns of each class's probability, in the classes' order."""
    return [probability_column(c) for c in classes]


def classes_of(columns) -> list[str]:
    """The classes, in their order, of a table with probability columns (``predictions.csv``)."""
    return [str(c).removeprefix(PROBABILITY_PREFIX) for c in columns if str(c).startswith(PROBABILITY_PREFIX)]


# -- model names as folders ----------------------------------------------------------------
TIMM_PREFIX = "timm:"  # train.models: torchvision names as they are, timm models as timm:<name>


def model_folder(name: str) -> str:
    """A model's folder and file-name form: its name with ``timm:`` written ``timm-``
    (``timm:vit_small_patch14_dinov2.lvd142m`` -> ``timm-vit_small_patch14_dinov2.lvd142m``), since a
    colon is not allowed in Windows paths and reads as a drive or a URL scheme; a torchvision name is
    its own folder. The one place the two forms are tied."""
    if "/" in name or "\\" in name:
        raise ArtefactError(f"model name {name!r} has a path separator; name a torchvision model or timm:<name>")
    return name.replace(":", "-", 1) if name.startswith(TIMM_PREFIX) else name


def model_named(names: list[str], given: str) -> str | None:
    """The model of ``names`` that ``given`` names, by its full or folder name (``MODEL=`` takes either), else None."""
    return next((name for name in names if given in (name, model_folder(name))), None)


# -- folders ------------------------------------------------------------------------------
@dataclass(frozen=True)
class RunFolder:
    """``runs/<profile>/``: what a run trains and evaluates."""

    root: Path

    @property
    def settings(self) -> Path:
        return self.root / SETTINGS

    @property
    def settings_stamp(self) -> Path:
        return self.root / SETTINGS_STAMP

    @property
    def source_stamp(self) -> Path:
        return self.root / SOURCE_STAMP

    @property
    def dataset_record(self) -> Path:
        return self.root / DATASET

    @property
    def split(self) -> Path:
        return self.root / SPLIT

    @property
    def near_duplicates(self) -> tuple[Path, Path]:
        """The near-duplicate pairs and their detectors' record (``duplicates.NearDuplicates.read``)."""
        return self.root / NEAR_DUPLICATES, self.root / NEAR_DUPLICATE_DETECTORS

    @property
    def notebooks(self) -> Path:
        """The executed notebooks: the Makefile's stamps."""
        return self.root / "notebooks"

    def executed_notebook(self, name: str, model: str | None = None) -> Path:
        """An executed notebook (a model's by its path-safe folder name): the Makefile's stamp."""
        return self.notebooks / (f"{name}-{model_folder(model)}.ipynb" if model else f"{name}.ipynb")

    def stage_dir(self, model: str, stage: str) -> Path:
        return self.root / model_folder(model) / checked_stage(stage)

    def checkpoint(self, model: str, stage: str) -> Path:
        return self.stage_dir(model, stage) / CHECKPOINT

    def checkpoints(self) -> list[Path]:
        """Every stage checkpoint of every model in the run."""
        return sorted(self.root.glob(f"*/stage*/{CHECKPOINT}"))

    def history(self, model: str, stage: str) -> Path:
        return self.stage_dir(model, stage) / HISTORY

    def tensorboard(self, model: str, stage: str) -> Path:
        return self.stage_dir(model, stage) / TENSORBOARD

    def weights_record(self, model: str) -> Path:
        return self.stage_dir(model, STAGES[0]) / WEIGHTS

    def eval_dir(self, model: str) -> Path:
        return self.root / model_folder(model) / "eval"

    def metrics(self, model: str) -> Path:
        return self.eval_dir(model) / METRICS

    def predictions(self, model: str) -> Path:
        return self.eval_dir(model) / PREDICTIONS

    def cross_dir(self, target_profile: str) -> Path:
        """Predictions of this run's models on another profile's dataset (``make cross-evaluate``)."""
        return self.root / "cross" / target_profile

    def cross_predictions(self, target_profile: str, model: str) -> Path:
        return self.cross_dir(target_profile) / model_folder(model) / PREDICTIONS


@dataclass(frozen=True)
class ReportFolder:
    """``reports/<profile>/`` (or a sweep's report folder): what readers open."""

    root: Path

    @property
    def index(self) -> Path:
        return self.root / "index.html"

    @property
    def html(self) -> Path:
        return self.root / "html"

    @property
    def tables(self) -> Path:
        return self.root / "tables"

    @property
    def figures(self) -> Path:
        return self.root / "figures"

    def table(self, name: str, suffix: str = ".csv") -> Path:
        return self.tables / f"{name}{suffix}"

    def figure(self, name: str, suffix: str = ".png") -> Path:
        return self.figures / f"{name}{suffix}"

    def error_browser(self, model: str) -> Path:
        """Every validation image of ``model`` with its prediction (the error browser)."""
        return self.root / f"browser-{model_folder(model)}.html"

    @property
    def splits(self) -> Path:
        """``make splits``: the dataset's random and near-duplicate-grouped split files and their README."""
        return self.root / "splits"

    def notebook_page(self, notebook: str) -> Path:
        """An executed notebook as a page (``notebook``: its stamp's name, e.g. ``04_evaluate-resnet50``)."""
        return self.html / f"{notebook}.html"

    def notebook_copy(self, name: str) -> Path:
        """A copy of an executed notebook (``name``: its file name), so the pages link inside the folder."""
        return self.root / "notebooks" / name

    def run_file(self, model: str, name: str) -> Path:
        """A copy of a file of ``model``'s run (``PREDICTIONS``, ``METRICS``) that the index links."""
        return self.root / "files" / model_folder(model) / name

    def cross_dir(self, target_profile: str) -> Path:
        """The tables of this run's models on another profile's dataset (``make cross-evaluate``)."""
        return self.root / "cross" / target_profile

    def model_dir(self, model: str) -> Path:
        """The trained model as a deliverable: its card (``model_card.md``) and ``export/`` (ONNX)."""
        return self.root / "models" / model_folder(model)

    def predict_dir(self, name: str) -> Path:
        """What ``make predict NAME=...`` wrote: predictions.csv, skipped.csv, predict.json, the gallery."""
        return self.root / "predict" / name


# -- table and figure names (reports/<profile>/tables/<name>.csv, figures/<name>.png) --------
class Table:
    """The names the notebooks save tables under and the pages and model cards read back."""

    CLASS_COUNTS = "class_counts"  # 01
    COMPARISON = "comparison"  # 05
    MCNEMAR = "mcnemar"  # 05
    GUIDE_BOX_RATES = "guide_box_rates"  # 07
    BOX_IN_TRAINING = "table1_with_and_without_the_box"  # 07, once the masked profile is evaluated
    NEAR_DUPLICATES = "near_duplicates"  # 07
    NEAR_DUPLICATE_DETECTORS = "near_duplicate_detectors"  # 01: each detector measured on planted copies
    NEAR_DUPLICATE_PAIRS = "near_duplicate_pairs"  # 07: pairs by detector, and across the split
    VALIDATION_IMAGES = "validation_images"  # 07: each validation image's flags (the error browser)
    AUDIT_HEADLINE = "audit_headline"  # 07
    # a sweep's (notebook 06), in the sweep's report folder
    SWEEP_RUNS = "runs"
    SWEEP_SUMMARY = "summary"
    SWEEP_PER_CLASS_F1 = "per_class_f1"
    SWEEP_PAIRED = "paired"
    SWEEP_ABLATION = "ablation"
    SWEEP_LEAKAGE = "leakage"  # a leakage sweep's: per backbone and split, accuracy across seeds
    SWEEP_SURVIVAL = "leakage_paired"  # each honest split against the random one, paired by seed
    # saved without an index column (their rows are numbered, not named)
    UNINDEXED = frozenset({GUIDE_BOX_RATES, NEAR_DUPLICATES, VALIDATION_IMAGES})

    # per model: "{model folder}_<kind>", written by notebooks 04 and 07 and the model card
    MODEL_KINDS = ("table1", "averages", "table1_vs_paper", "table2", "roc_auc", "guide_box_masked",
                   "accuracy_by_near_duplicate", "accuracy_by_region")

    @staticmethod
    def of_model(model: str, kind: str) -> str:
        return _of_model(model, kind, Table.MODEL_KINDS, "table")


class Figure:
    """The names the notebooks save figures under (``report.outputs.CAPTIONS`` captions them)."""

    DATASET_RESOLUTIONS = "dataset_resolutions"  # 01
    DATASET_SAMPLES = "dataset_samples"  # 01
    GUIDE_BOX_RATES = "audit_guide_box_rates"  # 07
    SWEEP_ACCURACY = "accuracy_per_run"  # 06
    # per model: "{model}_<kind>", the kinds in the order the model's page shows them
    MODEL_KINDS = ("figure1_predictions", "figure2_curves", "figure3_gradcam", "confusion", "roc", "f1_vs_paper",
                   "reliability", "stage1_curves", "stage2_curves")  # the last two: notebooks 02 and 03's

    @staticmethod
    def of_model(model: str, kind: str) -> str:
        return _of_model(model, kind, Figure.MODEL_KINDS, "figure")


def _of_model(model: str, kind: str, kinds: tuple[str, ...], what: str) -> str:
    """The name of one model's table or figure of ``kind``: its folder name, then the kind."""
    if kind not in kinds:
        raise ArtefactError(f"unknown {what} kind {kind!r}; expected one of {', '.join(kinds)}")
    return f"{model_folder(model)}_{kind}"


# -- typed records ------------------------------------------------------------------------
CHECKPOINT_FORMAT = 2  # bumped when the checkpoint's fields change (2: the runtime as a dict, this field)


@dataclass
class Checkpoint:
    """One stage's checkpoint, after every epoch: enough to resume it exactly and to check that it
    belongs to today's settings and inputs. Saved as a plain dict (``torch.save``, read back with
    ``weights_only=True``); ``train.checkpoints`` writes and reads it."""

    model: dict  # the state dict
    optimizer: dict
    epoch: int  # epochs finished
    history: list[dict]  # history.csv's rows so far
    config: dict  # the run's settings
    model_name: str
    stage: str
    trainable: list[str]
    optimizer_params: list[str]  # the optimizer's parameters by name, in its order
    inputs: dict[str, str]  # fingerprints of what it trained on (split, cache, previous checkpoint)
    seed_scheme: int
    runtime: dict  # train.hardware.Runtime.record()
    format: int = CHECKPOINT_FORMAT

    def to_dict(self) -> dict:
        return {"format": self.format, **{k: v for k, v in self.__dict__.items() if k != "format"}}

    @classmethod
    def from_dict(cls, saved: dict, path: Path, profile: str) -> Checkpoint:
        """The record of a loaded checkpoint; one of another format is refused with the remedy."""
        if saved.get("format") != CHECKPOINT_FORMAT:
            raise ArtefactError(
                f"the checkpoint {path} was written by another version of the study (checkpoint format "
                f"{saved.get('format', 1)}, this version reads {CHECKPOINT_FORMAT}). Nothing was overwritten. "
                f"Retrain it with this version: delete {path.parent} (`make clean PROFILE={profile}` deletes "
                f"every run of the profile), or use the study's version that wrote it.")
        return cls(**saved)


class Metrics(BaseModel):
    """``metrics.json``: a model's headline numbers on the validation set (notebook 04), and what
    they were made with. Written and read only through ``metrics_json`` and ``read_metrics``."""

    model_config = ConfigDict(extra="forbid")

    accuracy: float
    macro_precision: float
    macro_recall: float
    micro_f1: float
    mcc: float
    macro_mcc: float
    micro_mcc: float
    macro_f1: float
    weighted_f1: float
    macro_auc: float
    images: int
    parameters: int
    trainable_parameters: dict[str, int]  # per stage: what its reading trains (0 for a stage of no epoch)
    gflops: float
    train_seconds: float
    inference_images_per_s: float
    ece: float
    brier: float
    stage_val_acc: dict[str, float]
    fine_tuning_gain: float  # nan without a stage 2
    runtime: dict[str, Any]
    provenance: dict[str, Any]
    environment: dict[str, Any]
    generated_data: bool
    # what this model was trained with where the profile leaves it to the model or names it per model:
    # {"transforms": {image_size, mean, std}, "trainable": {stage1, stage2}} (empty in older files)
    model_settings: dict[str, Any] = {}


def metrics_json(record: dict) -> str:
    """``record`` checked against ``Metrics`` and written as metrics.json's text."""
    try:
        checked = Metrics.model_validate(record)
    except ValidationError as exc:  # the writer and the record disagree: a defect of the study, not of a run
        raise ArtefactError(f"the metrics record does not have the fields metrics.json needs: {_first(exc)}") from None
    return json.dumps(checked.model_dump(), indent=2, default=str) + "\n"


def read_metrics(path: Path) -> dict:
    """A metrics.json, checked against ``Metrics`` (so one of another version is named, not misread)."""
    path = Path(path)
    try:
        return Metrics.model_validate(json.loads(path.read_text())).model_dump()
    except ValidationError as exc:
        run, folder = path.parents[2], path.parents[1].name  # runs/<profile>/<model folder>/eval/metrics.json
        stamp = RunFolder(run).notebooks / f"04_evaluate-{folder}.ipynb"
        raise ArtefactError(f"{path} was written by another version of the study ({_first(exc)}): evaluate the "
                            f"model again with this one: delete {stamp} and run `make evaluate PROFILE={run.name}` "
                            f"(it reruns notebook 04 only)") from None


def _first(exc: ValidationError) -> str:
    first = exc.errors()[0]
    return f"{'.'.join(str(part) for part in first['loc'])}: {first['msg']}"
