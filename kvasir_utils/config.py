"""Profiles: one typed, validated settings object and every path the study writes.

A profile is a YAML file in ``configs/`` (or any path). ``base: <profile>`` inherits another
profile and overrides only what it names. Dotted overrides (``train.stage1.epochs=1``) are
applied last, the way ``make reproduce SET="..."`` and the notebooks' ``OVERRIDES`` pass them.
Types and ranges are checked by pydantic when the profile is loaded, so a bad value stops the
run before anything is downloaded or trained; the readings that depend on a model's layers are
checked by ``models.check_readings``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from kvasir_utils.errors import KvasirError

PROJECT_ROOT = Path(os.environ.get("KVASIR_PROJECT_ROOT", Path(__file__).resolve().parents[1]))
CONFIG_DIR = PROJECT_ROOT / "configs"
STAGES = ("stage1", "stage2")


class ConfigError(KvasirError):
    """A profile or override that does not fit the schema."""


def _checked_stage(stage: str) -> str:
    if stage not in STAGES:
        raise ConfigError(f"unknown stage {stage!r}; expected one of {', '.join(STAGES)}")
    return stage


class Section(BaseModel):
    """A block of settings: unknown keys are errors, values are checked when assigned too."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class PathsConfig(Section):
    data: str = "data"
    runs: str = "runs"
    reports: str = "reports"


class SyntheticConfig(Section):
    images_per_class: int = Field(40, ge=2)
    seed: int = Field(0, ge=0, lt=2**32)
    large_fraction: float = Field(0.1, ge=0, le=1)


class DataConfig(Section):
    name: str = Field("kvasir-v2", min_length=1)
    url: str = ""
    mirrors: list[str] = []
    size: int | None = Field(None, gt=0)
    sha256: str | None = Field(None, pattern=r"^[0-9a-fA-F]{64}$")
    classes: list[str] = []
    expected_per_class: int = Field(1000, ge=1)
    on_unreadable: Literal["error", "skip"] = "error"
    synthetic: SyntheticConfig | None = None


class SplitConfig(Section):
    val_fraction: float = Field(0.2, gt=0, lt=1)
    seed: int = Field(42, ge=0, lt=2**32)
    # Beyond the paper: keep every group of near-duplicate frames on one side of the split.
    group_near_duplicates: bool = False


class CacheConfig(Section):
    short_side: int = Field(256, ge=16)
    quality: int = Field(95, ge=1, le=100)
    workers: int = Field(0, ge=0)


class TransformsConfig(Section):
    image_size: int = Field(224, ge=16)
    rotation_degrees: float = Field(30.0, ge=0, le=180)
    hflip_p: float = Field(0.5, ge=0, le=1)
    vflip_p: float = Field(0.5, ge=0, le=1)
    brightness: float = Field(0.2, ge=0, le=1)
    contrast: float = Field(0.2, ge=0, le=1)
    crop_scale: list[float] = Field([0.08, 1.0], min_length=2, max_length=2)
    crop_ratio: list[float] = Field([0.75, 1.3333333], min_length=2, max_length=2)
    eval_resize: Literal["squash", "center_crop"] = "squash"
    # Beyond the paper: black out the position-guide box (and the burnt-in text) before augmentation.
    mask_overlays: Literal["none", "guide_box", "guide_box_and_text"] = "none"
    mean: list[float] = Field([0.485, 0.456, 0.406], min_length=3, max_length=3)
    std: list[float] = Field([0.229, 0.224, 0.225], min_length=3, max_length=3)
    # Where the training augmentations run: pil (the reference: torchvision on PIL images in the
    # loader), device (kornia/torch on whole batches on the training device: kvasir_utils.augment),
    # auto = device on a CUDA GPU, else pil. Same operations and distributions, other random draws.
    backend: Literal["auto", "pil", "device"] = "auto"


class StageConfig(Section):
    epochs: int = Field(5, ge=0)
    trainable: str = "head"
    lr: float = Field(1e-4, gt=0)


class TrainConfig(Section):
    models: list[str] = Field(["resnet50", "efficientnet_b0"], min_length=1)
    weights: str | None = "IMAGENET1K_V1"
    batch_size: int = Field(32, ge=1)
    optimizer: Literal["adam"] = "adam"
    stage1: StageConfig = StageConfig()
    stage2: StageConfig = StageConfig(trainable="last_tensors:10")
    stage2_init: Literal["fresh_optimizer", "continue_optimizer"] = "fresh_optimizer"
    frozen_batchnorm: Literal["eval", "train"] = "eval"
    seed: int = Field(42, ge=0, lt=2**32)


class EvalConfig(Section):
    figure1_correct: int = Field(8, ge=0)
    figure1_incorrect: int = Field(8, ge=0)
    bootstrap_samples: int = Field(1000, ge=10)
    confidence: float = Field(0.95, gt=0, lt=1)
    seed: int = Field(0, ge=0, lt=2**32)


class RuntimeConfig(Section):
    """How to run, never what is computed; no checkpoint compares these."""

    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    # auto: deterministic algorithms on CUDA, warning where an operation has none; on: an error
    # there instead; off: cuDNN picks the fastest kernels (benchmark mode), not repeatable.
    deterministic: Literal["auto", "on", "off"] = "auto"
    workers: int | Literal["auto"] = "auto"
    # torch.compile for the training stages: on, off, or auto = on for a CPU or CUDA device when a
    # stage trains on at least engine.COMPILE_MIN_IMAGES images (epochs x training images), where
    # the measured speed-up repays the compile time (about 15-40 s per graph on 2 cores).
    compile: Literal["auto", "on", "off"] = "auto"
    # Validation passes reuse what the frozen start of the network gives the validation images
    # (engine.ValidationFeatures: the same bits); false runs every pass whole (make bench --baseline).
    reuse_frozen: bool = True
    offline: bool = False

    @field_validator("deterministic", "compile", mode="before")
    @classmethod
    def _yaml_on_off(cls, value):
        """YAML reads a bare on/off as true/false: take them as the words."""
        return {True: "on", False: "off"}.get(value, value) if isinstance(value, bool) else value


class Config(Section):
    profile: str = "paper"
    overrides: list[str] = []  # the dotted settings this run was given on top of the profile (SET)
    paths: PathsConfig = PathsConfig()
    data: DataConfig = DataConfig()
    split: SplitConfig = SplitConfig()
    cache: CacheConfig = CacheConfig()
    transforms: TransformsConfig = TransformsConfig()
    train: TrainConfig = TrainConfig()
    eval: EvalConfig = EvalConfig()
    runtime: RuntimeConfig = RuntimeConfig()

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
    def split_csv(self) -> Path:
        return self.run_dir / "split.csv"

    @property
    def dataset_record(self) -> Path:
        """The dataset archive the run's split was made from (written by notebook 01 with the split)."""
        return self.run_dir / "dataset.json"

    @property
    def notebook_dir(self) -> Path:
        return self.run_dir / "notebooks"

    def stage_dir(self, model: str, stage: str) -> Path:
        return self.run_dir / model / _checked_stage(stage)

    def eval_dir(self, model: str) -> Path:
        return self.run_dir / model / "eval"

    def stage_config(self, stage: str) -> StageConfig:
        return getattr(self.train, _checked_stage(stage))

    def to_dict(self) -> dict:
        return self.model_dump()

    def science_dict(self) -> dict:
        """Everything that can change a result: the config without paths, runtime and how it was written."""
        return self.model_dump(exclude={"paths": True, "runtime": True, "overrides": True,
                                        "transforms": {"backend"}})  # where it augments: see engine.stage_settings


# -- errors that name the key -------------------------------------------------------------
def _model_in(annotation) -> type[BaseModel] | None:
    options = getattr(annotation, "__args__", (annotation,))
    return next((o for o in options if isinstance(o, type) and issubclass(o, BaseModel)), None)


def _dotted_key(loc: tuple) -> tuple[str, type[BaseModel] | None]:
    """pydantic's error location -> (``train.stage1.lr``, the section class the key is under).
    Union members' tags in the location (``'int'``, ``"literal['auto']"``) are not settings."""
    parts, inner, section = [], Config, None
    for part in loc:
        if isinstance(part, int):
            parts[-1] += f"[{part}]"
        elif inner is not None and (part in inner.model_fields or part == loc[-1]):
            parts.append(part)
            section = inner
            inner = _model_in(inner.model_fields[part].annotation) if part in inner.model_fields else None
    return ".".join(parts), section


def _config_error(exc: ValidationError) -> ConfigError:
    """The first failing setting, with what is allowed (all its union alternatives together)."""
    errors = exc.errors()
    key, section = _dotted_key(errors[0]["loc"])
    if errors[0]["type"] == "extra_forbidden":
        where = key.rpartition(".")[0] or "the top level"
        return ConfigError(f"unknown setting {key!r}; allowed under {where}: {', '.join(section.model_fields)}")
    same = [e for e in errors if _dotted_key(e["loc"])[0] == key]
    reasons = "; or ".join(dict.fromkeys(e["msg"] for e in same))
    return ConfigError(f"setting {key!r} = {errors[0]['input']!r} is not valid: {reasons}")


def validate_config(values: dict) -> Config:
    """Build a Config from plain data (a profile, a saved config.yaml), checking every key."""
    try:
        cfg = Config.model_validate(values)
    except ValidationError as exc:
        raise _config_error(exc) from None
    _check_together(cfg)
    return cfg


def _check_together(cfg: Config) -> None:
    """Rules that involve more than one setting."""
    checks = [
        (cfg.cache.short_side >= cfg.transforms.image_size, "cache.short_side",
         f"at least transforms.image_size ({cfg.transforms.image_size}) so crops never upsample"),
        (len(cfg.data.classes) >= 2, "data.classes", "at least two class folder names"),
        (len(set(cfg.data.classes)) == len(cfg.data.classes), "data.classes", "names without repeats"),
        (len(set(cfg.train.models)) == len(cfg.train.models), "train.models", "names without repeats"),
        (cfg.train.stage1.epochs >= 1, "train.stage1.epochs", "at least 1 (stage 1 trains the new head)"),
        (bool(cfg.data.url) or cfg.data.synthetic is not None, "data.url",
         "an http(s):// or file:// address or a local path (or data.synthetic for generated data)"),
        (cfg.runtime.workers == "auto" or cfg.runtime.workers >= 0, "runtime.workers", "'auto' or >= 0"),
        (0 < cfg.transforms.crop_scale[0] <= cfg.transforms.crop_scale[1] <= 1, "transforms.crop_scale",
         "[low, high] with 0 < low <= high <= 1"),
        (0 < cfg.transforms.crop_ratio[0] <= cfg.transforms.crop_ratio[1], "transforms.crop_ratio",
         "[low, high] with 0 < low <= high"),
    ]
    for ok, key, expected in checks:
        if not ok:
            raise ConfigError(f"setting {key!r} is not valid: expected {expected}")


# -- loading ------------------------------------------------------------------------------
def _read_yaml(path: Path) -> dict:
    try:
        loaded = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"profile {path} is not valid YAML: {exc}") from exc
    if not isinstance(loaded, dict):
        raise ConfigError(f"profile {path} must be a mapping of settings, got {type(loaded).__name__}")
    return loaded


def _deep_merge(base: dict, top: dict) -> dict:
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = value
    return out


def find_profile(name_or_path: str | os.PathLike, relative_to: Path | None = None) -> Path:
    """A profile name (``paper``, ``smoke``) or a path to a YAML file of the same form.

    A relative path is taken from the current folder, or from ``relative_to`` (the folder of
    the file that names it, for ``base:``)."""
    text = str(name_or_path)
    candidate = Path(text).expanduser()
    if relative_to is not None and not candidate.is_absolute():
        candidate = relative_to / candidate
    if text.endswith((".yaml", ".yml")) or candidate.is_file():
        if not candidate.is_file():
            raise ConfigError(f"profile file {candidate} does not exist")
        return candidate.resolve()
    path = CONFIG_DIR / f"{text}.yaml"
    if not path.is_file():
        known = sorted(p.stem for p in CONFIG_DIR.glob("*.yaml"))
        raise ConfigError(
            f"unknown profile {text!r}; known profiles: {', '.join(known)} "
            f"(or give the path to a YAML file)"
        )
    return path


def profile_reference(name_or_path: str | os.PathLike) -> str:
    """What to hand to another process (a notebook kernel runs in ``notebooks/``): a profile's
    name as it is, a path made absolute."""
    path = find_profile(name_or_path)
    return path.stem if path == CONFIG_DIR / f"{name_or_path}.yaml" else str(path)


def _load_raw(path: Path, seen: tuple[Path, ...] = ()) -> dict:
    if path in seen:
        raise ConfigError(f"profile {path} inherits itself through 'base'")
    raw = _read_yaml(path)
    base = raw.pop("base", None)
    if base is None:
        return raw
    return _deep_merge(_load_raw(find_profile(base, relative_to=path.parent), (*seen, path)), raw)


def parse_override(text: str) -> tuple[list[str], object]:
    """``"train.stage1.epochs=1"`` -> (["train", "stage1", "epochs"], 1)."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {text!r} must look like dotted.key=value")
    return key.strip().split("."), yaml.safe_load(value) if value.strip() else None


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    out = _deep_merge({}, raw)
    for text in overrides:
        keys, value = parse_override(text)
        node = out
        for key in keys[:-1]:
            child = node.get(key)
            node[key] = child = dict(child) if isinstance(child, dict) else {}
            node = child
        node[keys[-1]] = value
    return out


# data.size, data.sha256 and data.mirrors describe the archive at the profile's data.url.
SOURCE_DETAILS = {"size": None, "sha256": None, "mirrors": []}


def _clear_source_details(raw: dict, overrides: list[str]) -> None:
    """An override of data.url points at another archive: the profile's size, checksum and
    mirrors no longer apply, so they are cleared unless the same overrides set them."""
    keys = {".".join(parse_override(o)[0]) for o in overrides}
    if "data.url" in keys:
        raw["data"].update({k: v for k, v in SOURCE_DETAILS.items() if f"data.{k}" not in keys})


def load_profile(name_or_path: str | os.PathLike = "paper", overrides: list[str] | None = None) -> Config:
    """Load a profile by name or path, apply dotted overrides, validate every key and range.

    Overriding ``data.url`` clears ``data.size``, ``data.sha256`` and ``data.mirrors`` (they
    describe the profile's own archive) unless the overrides set them too.
    """
    path = find_profile(name_or_path)
    overrides = list(overrides or [])
    raw = apply_overrides(_load_raw(path), overrides)
    _clear_source_details(raw, overrides)
    for key in ("profile", "overrides"):
        if key in raw:
            raise ConfigError(f"'{key}' is set by the study itself (the file's name, the SET given); remove it")
    raw["profile"] = path.stem
    raw["overrides"] = overrides
    return validate_config(raw)


def masked_twin(cfg: Config) -> str | None:
    """The profile that repeats this one with the guide box masked (``<profile>-masked``, e.g.
    ``paper-masked``), if there is one and this profile masks nothing itself."""
    name = f"{cfg.profile}-masked"
    if cfg.transforms.mask_overlays != "none" or not (CONFIG_DIR / f"{name}.yaml").exists():
        return None
    return name


def save_config(cfg: Config, path: Path) -> Path:
    """Write the resolved config as YAML, atomically."""
    from kvasir_utils.io import write_text_atomic

    return write_text_atomic(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))
