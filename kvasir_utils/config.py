"""Settings: the one typed, validated settings object of a run, and every path the study writes. The schema
holds types and ranges only; the values come from profiles (``profiles.load_profile``), and the paper's protocol
from ``configs/paper.yaml`` alone. A bad value names its key and what is allowed, before anything is downloaded
or trained."""

from __future__ import annotations

import json
from difflib import get_close_matches
from pathlib import Path
from typing import Annotated, Literal, get_origin

from pydantic import BaseModel, ConfigDict, Field, PrivateAttr, ValidationError, field_validator

from kvasir_utils.artefacts import ReportFolder, RunFolder, checked_stage
from kvasir_utils.datasets import DATASETS  # the public datasets the study knows; other: your own
from kvasir_utils.errors import KvasirError

PROJECT_ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = PROJECT_ROOT / "configs"
COUNT_OR_AUTO = Annotated[int, Field(ge=0)] | Literal["auto"]  # a number of workers or images, or auto


class ConfigError(KvasirError):
    """A profile or override that does not fit the schema."""


def cached_name(path: str) -> str:
    """The file name of an image's copy in the resized cache (and in the reports' thumbnails): JPEG."""
    return str(Path(path).with_suffix(".jpg"))


class Section(BaseModel):
    """A block of settings: unknown keys are errors, values are checked when assigned too."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class PathsConfig(Section):
    data: str
    runs: str
    reports: str


class SyntheticConfig(Section):
    images_per_class: int = Field(ge=2)
    seed: int = Field(ge=0, lt=2**32)
    large_fraction: float = Field(ge=0, le=1)
    # kvasir-v2: a zip like Kvasir v2's; hyper-kvasir: a folder tree like HyperKvasir's with its split file
    # (images_per_class: its largest class, the others scaled as in HyperKvasir). The schema's one default:
    # paper.yaml leaves data.synthetic null, and profiles from before the key made Kvasir-shaped archives.
    layout: Literal["kvasir-v2", "hyper-kvasir"] = "kvasir-v2"


class DataConfig(Section):
    name: str = Field(min_length=1)
    dataset: Literal[DATASETS]
    url: str
    mirrors: list[str]
    size: int | None = Field(gt=0)
    sha256: str | None = Field(pattern=r"^[0-9a-fA-F]{64}$")
    classes: list[str]
    expected_per_class: int | None = Field(ge=1)  # None: no count expected (an imbalanced dataset)
    on_unreadable: Literal["error", "skip"]
    on_stray: Literal["error", "skip"]  # images outside any class folder
    synthetic: SyntheticConfig | None


class NearDuplicatesConfig(Section):
    detectors: list[Literal["phash", "features"]] = Field(min_length=1)  # grouped by the union of their pairs
    phash_bits: int = Field(ge=0, le=64)  # Hamming distance of 64-bit perceptual hashes, at most
    features_model: str  # whose pooled features the features detector compares (a train.models name)
    features_threshold: float | None = Field(ge=-1, le=1)  # cosine similarity; None: calibrated on planted copies
    calibration_copies: int = Field(ge=2)  # frames copied video-like to calibrate (and to measure) the detectors
    max_false_partners: float = Field(ge=0)  # features detector unused above this many false partners a frame


class SplitConfig(Section):
    source: Literal["stratified", "file"]
    val_fraction: float = Field(gt=0, lt=1)
    seed: int = Field(ge=0, lt=2**32)
    group_near_duplicates: bool  # beyond the paper: near-duplicate frames kept on one side
    near_duplicates: NearDuplicatesConfig  # how they are found (for the grouping and for the audit)
    file: str | None  # split file: file name, class name, fold index per row (source: file)
    delimiter: str = Field(min_length=1, max_length=1)
    validation_fold: int | None = Field(ge=0)  # None: the paper's single split
    on_unmatched: Literal["error", "skip"]  # split-file rows without an image, images without a row


class CacheConfig(Section):
    short_side: int = Field(ge=16)
    quality: int = Field(ge=1, le=100)
    workers: int = Field(ge=0)


class TransformsConfig(Section):
    # image_size, mean, std: null takes each model's own (``train.models.model_settings``): any models in one profile
    image_size: int | None = Field(ge=16)
    rotation_degrees: float = Field(ge=0, le=180)
    hflip_p: float = Field(ge=0, le=1)
    vflip_p: float = Field(ge=0, le=1)
    brightness: float = Field(ge=0, le=1)
    contrast: float = Field(ge=0, le=1)
    crop_scale: list[float] = Field(min_length=2, max_length=2)
    crop_ratio: list[float] = Field(min_length=2, max_length=2)
    eval_resize: Literal["squash", "center_crop"]
    mask_overlays: Literal["none", "guide_box", "guide_box_and_text"]  # beyond the paper
    mean: list[float] | None = Field(min_length=3, max_length=3)
    std: list[float] | None = Field(min_length=3, max_length=3)
    # where the training augmentations run (train.hardware.augment_backend); not a science setting
    backend: Literal["auto", "pil", "device"]


class StageConfig(Section):
    epochs: int = Field(ge=0)
    trainable: str
    lr: float = Field(gt=0)


class WeightsFile(Section):
    """A model's pretrained weights from a local file (``train.weights_files``)."""

    file: str = Field(min_length=1)  # .pth or .safetensors; a relative path is taken from the project root
    sha256: str | None = Field(default=None, pattern=r"^[0-9a-fA-F]{64}$")  # checked before loading when given


class LoraSettings(Section):
    """The low-rank adapters of a ``trainable: lora`` stage (peft's LoraConfig)."""

    rank: int = Field(ge=1)
    alpha: float = Field(gt=0)
    dropout: float = Field(ge=0, lt=1)
    target_modules: list[str] = Field(min_length=1)  # module names (or their last part, e.g. qkv)


class TrainConfig(Section):
    models: list[str] = Field(min_length=1)
    weights: str | None
    weights_files: dict[str, WeightsFile]  # per model: its pretrained weights from this file
    lora: LoraSettings
    # Beyond the paper: a model whose stage reading differs from the profile's, {<model>: {stage2: lora}}
    readings_by_model: dict[str, dict[Literal["stage1", "stage2"], str]]
    batch_size: int = Field(ge=1)
    optimizer: Literal["adam"]
    stage1: StageConfig
    stage2: StageConfig
    stage2_init: Literal["fresh_optimizer", "continue_optimizer"]
    frozen_batchnorm: Literal["eval", "train"]
    seed: int = Field(ge=0, lt=2**32)

    @field_validator("weights_files", mode="before")
    @classmethod
    def _bare_paths(cls, value):
        """``{model: path}`` is short for ``{model: {file: path}}``."""
        return {k: {"file": v} if isinstance(v, str) else v for k, v in value.items()} \
            if isinstance(value, dict) else value


class EvalConfig(Section):
    figure1_correct: int = Field(ge=0)
    figure1_incorrect: int = Field(ge=0)
    bootstrap_samples: int = Field(ge=10)
    confidence: float = Field(gt=0, lt=1)
    seed: int = Field(ge=0, lt=2**32)
    min_support: int = Field(ge=1)  # fewer validation images: the class is flagged in the tables


class RuntimeConfig(Section):
    """How to run, never what is computed; no checkpoint compares these (paper.yaml says what each does)."""

    device: Literal["auto", "cpu", "cuda", "mps"]
    precision: Literal["auto", "bf16", "fp32"]
    memory_format: Literal["auto", "contiguous", "channels_last"]
    deterministic: Literal["auto", "on", "off"]
    workers: COUNT_OR_AUTO
    compile: Literal["auto", "on", "off"]
    reuse_frozen: bool
    frozen_chunk: COUNT_OR_AUTO  # 0: whole batches
    offline: bool

    @field_validator("deterministic", "compile", mode="before")
    @classmethod
    def _yaml_on_off(cls, value):
        """YAML reads a bare on/off as true/false: take them as the words."""
        return {True: "on", False: "off"}.get(value, value) if isinstance(value, bool) else value


class Config(Section):
    """One run's settings, each from a profile, each profile from ``configs/paper.yaml`` (the one place
    the protocol's values are written) and what it changes. The schema holds types and ranges."""

    profile: str
    overrides: list[str]  # the dotted settings this run was given on top of the profile (SET)
    paths: PathsConfig
    data: DataConfig
    split: SplitConfig
    cache: CacheConfig
    transforms: TransformsConfig
    train: TrainConfig
    eval: EvalConfig
    runtime: RuntimeConfig
    _reference: str | None = PrivateAttr(None)  # the PROFILE a command takes: profiles.load_profile sets it

    def __eq__(self, other) -> bool:  # the settings alone: how the profile was named is not one of them
        return isinstance(other, Config) and self.model_dump() == other.model_dump()

    @property
    def profile_argument(self) -> str:  # what `make ... PROFILE=` takes: the profile's name or its file's path
        return self._reference or self.profile

    @property
    def generated_data(self) -> bool:
        """True when the images come from kvasir_utils.synthetic, not from Kvasir."""
        return self.data.synthetic is not None

    # -- paths: the one place that knows where things live -------------------------------
    @staticmethod
    def _resolve(value: str) -> Path:
        path = Path(value).expanduser()
        return path if path.is_absolute() else PROJECT_ROOT / path

    @property
    def dataset_dir(self) -> Path:
        return self._resolve(self.paths.data) / self.data.name

    @property
    def runs_root(self) -> Path:
        return self._resolve(self.paths.runs)

    @property
    def reports_root(self) -> Path:
        return self._resolve(self.paths.reports)

    @property
    def run_dir(self) -> Path:
        return self.runs_root / self.profile

    @property
    def report_dir(self) -> Path:
        return self.reports_root / self.profile

    @property
    def run(self) -> RunFolder:
        """The run's folder and every file in it (``artefacts.RunFolder``)."""
        return RunFolder(self.run_dir)

    @property
    def report(self) -> ReportFolder:
        """The run's report folder and every file in it (``artefacts.ReportFolder``)."""
        return ReportFolder(self.report_dir)

    @property
    def split_file(self) -> Path | None:
        """The split file a ``split.source: file`` split is read from (None: generated with the data)."""
        return self._resolve(self.split.file) if self.split.file else None

    @property
    def classes(self) -> list[str]:
        """The classes in table order: ``data.classes``, or the class folders notebook 01 found (dataset.json)."""
        if self.data.classes:
            return list(self.data.classes)
        try:
            return list(json.loads(self.run.dataset_record.read_text())["classes"])
        except (OSError, ValueError, KeyError):
            raise ConfigError(f"data.classes is empty, so the classes are the class folders notebook 01 finds, and it "
                              f"has not run for this profile ({self.run.dataset_record} is missing): run `make data "
                              f"PROFILE={self.profile_argument}` first, or list the classes in data.classes") from None

    def stage_config(self, stage: str) -> StageConfig:
        return getattr(self.train, checked_stage(stage))

    def to_dict(self) -> dict:
        return self.model_dump()

    def science_dict(self) -> dict:
        """What can change a result (no paths, runtime, SET): the notebooks' stamps and sweep records compare it."""
        return self.model_dump(exclude={"paths": True, "runtime": True, "overrides": True,
                                        "transforms": {"backend"},  # where it augments: the runtime
                                        "cache": {"workers"}})  # how many processes build the same cache


# -- errors that name the key -------------------------------------------------------------
def _model_in(annotation) -> type[BaseModel] | None:
    options = getattr(annotation, "__args__", (annotation,))
    return next((o for o in options if isinstance(o, type) and issubclass(o, BaseModel)), None)


def _dotted_key(loc: tuple) -> tuple[str, type[BaseModel] | None]:
    """pydantic's error location -> (``train.stage1.lr``, its section class); union tags are not keys."""
    parts, inner, section = [], Config, None
    for part in loc:
        if isinstance(part, int):
            parts[-1] += f"[{part}]"
        elif inner is not None and (part in inner.model_fields or part == loc[-1]):
            parts.append(part)
            section = inner
            inner = _model_in(inner.model_fields[part].annotation) if part in inner.model_fields else None
    return ".".join(parts), section


def _switched_on_section(loc: tuple) -> tuple[str, type[BaseModel]] | None:
    """The innermost section on the way to ``loc`` that may be null (``data.synthetic``, off in paper.yaml)."""
    found, parts, inner = None, [], Config
    for part in loc:
        field = inner.model_fields.get(part) if inner is not None and isinstance(part, str) else None
        if field is None:
            break
        parts.append(part)
        inner = _model_in(field.annotation)
        if inner is not None and type(None) in getattr(field.annotation, "__args__", ()):
            found = (".".join(parts), inner)
    return found


_BOUNDS = {"ge": ">=", "gt": ">", "le": "<=", "lt": "<"}
_KINDS = {int: "an integer", float: "a number", str: "text", bool: "true or false"}


def _allowed(name: str, field) -> str:
    """``seed (an integer >= 0, < 4294967296)``, ``layout (kvasir-v2 | hyper-kvasir; default kvasir-v2)``."""
    annotation = field.annotation
    kind = " | ".join(map(str, annotation.__args__)) if get_origin(annotation) is Literal else \
        _KINDS.get(annotation, str(annotation))
    bounds = [f"{sign} {getattr(m, bound)}" for m in field.metadata for bound, sign in _BOUNDS.items()
              if hasattr(m, bound)]
    default = "" if field.is_required() else f"; default {field.default}"
    return f"{name} ({', '.join([kind, *bounds])}{default})"


def _missing_error(key: str, loc: tuple, values: dict) -> ConfigError:
    """A missing key is paper.yaml's to give, unless its section is null there: then what turns it on."""
    switched = _switched_on_section(loc)
    if switched is None:
        return ConfigError(f"setting {key!r} is missing: a profile gives only what it changes and takes the rest "
                           f"from configs/paper.yaml, which must give every setting")
    section, model = switched
    name = key.rpartition(".")[2]
    setting = [o for o in values.get("overrides") or [] if f"{o.partition('=')[0].strip()}.".startswith(section + ".")]
    who = (f"the SET that turns it on ({' '.join(setting)})" if setting else
           f"profile {values.get('profile')!r} (or the profile it names in base:), which turns it on,")
    keys = "; ".join(_allowed(n, f) for n, f in model.model_fields.items())
    return ConfigError(f"setting {key!r} is missing: configs/paper.yaml leaves {section} null (off), so {who} "
                       f"must give {_allowed(name, model.model_fields[name])}. The keys of {section}: {keys}")


def _config_error(exc: ValidationError, values: dict) -> ConfigError:
    """The first failing setting, what is allowed (all union alternatives); a misspelt key first."""
    errors = sorted(exc.errors(), key=lambda e: e["type"] != "extra_forbidden")
    key, section = _dotted_key(errors[0]["loc"])
    if errors[0]["type"] == "missing":
        return _missing_error(key, errors[0]["loc"], values)
    if errors[0]["type"] == "extra_forbidden":
        where, _, name = key.rpartition(".")
        near = [f"{where}.{m}".lstrip(".") for m in get_close_matches(name, section.model_fields, 1)]
        hint = f" (did you mean {near[0]!r}?)" if near else ""
        return ConfigError(f"unknown setting {key!r}{hint}; allowed under {where or 'the top level'}: "
                           f"{', '.join(section.model_fields)}")
    same = [e for e in errors if _dotted_key(e["loc"])[0] == key]
    reasons = "; or ".join(dict.fromkeys(e["msg"] for e in same))
    return ConfigError(f"setting {key!r} = {errors[0]['input']!r} is not valid: {reasons}")


def validate_config(values: dict) -> Config:
    """Build a Config from plain data (a profile, a saved config.yaml), checking every key."""
    try:
        cfg = Config.model_validate(values)
    except ValidationError as exc:
        raise _config_error(exc, values) from None
    _check_together(cfg)
    return cfg


def _check_together(cfg: Config) -> None:
    """Rules that involve more than one setting (generated HyperKvasir-shaped data brings its own split file)."""
    generates_split = cfg.data.synthetic is not None and cfg.data.synthetic.layout == "hyper-kvasir"
    checks = [
        (cfg.transforms.image_size is None or cfg.cache.short_side >= cfg.transforms.image_size, "cache.short_side",
         f"at least transforms.image_size ({cfg.transforms.image_size}) so crops never upsample"),
        (len(cfg.data.classes) != 1, "data.classes", "at least two class folder names, or [] for every one found"),
        (len(set(cfg.data.classes)) == len(cfg.data.classes), "data.classes", "names without repeats"),
        (len(set(cfg.train.models)) == len(cfg.train.models), "train.models", "names without repeats"),
        (cfg.train.stage1.epochs >= 1, "train.stage1.epochs", "at least 1 (stage 1 trains the new head)"),
        (bool(cfg.data.url) or cfg.data.synthetic is not None, "data.url",
         "an http(s):// or file:// address or a local path (or data.synthetic for generated data)"),
        (cfg.split.source == "file" or cfg.split.file is None, "split.file",
         "null unless split.source is file (a stratified split reads no file)"),
        (cfg.split.source == "stratified" or cfg.split.file is not None or generates_split, "split.file",
         "the path of the split file (CSV) when split.source is file"),
        (cfg.split.source == "stratified" or not cfg.split.group_near_duplicates, "split.group_near_duplicates",
         "false when split.source is file (the file decides every image's side)"),
        (cfg.split.source == "stratified" or cfg.split.validation_fold is not None, "split.validation_fold",
         "the fold of the split file that is validation (an integer) when split.source is file"),
        (0 < cfg.transforms.crop_scale[0] <= cfg.transforms.crop_scale[1] <= 1, "transforms.crop_scale",
         "[low, high] with 0 < low <= high <= 1"),
        (0 < cfg.transforms.crop_ratio[0] <= cfg.transforms.crop_ratio[1], "transforms.crop_ratio",
         "[low, high] with 0 < low <= high"),
    ]
    for ok, key, expected in checks:
        if not ok:
            raise ConfigError(f"setting {key!r} is not valid: expected {expected}")
