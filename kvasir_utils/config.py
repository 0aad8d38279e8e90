"""Profiles: one typed, validated settings object and every path the study writes.

A profile is a YAML file in ``configs/`` (or any path). ``base: <profile>`` inherits another
profile and overrides only what it names. Dotted overrides (``train.stage1.epochs=1``) are
applied last, the way ``make reproduce SET="..."`` and the notebooks' ``OVERRIDES`` pass them.
"""

from __future__ import annotations

import dataclasses
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Union

import yaml

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


@dataclass
class PathsConfig:
    data: str = "data"
    runs: str = "runs"
    reports: str = "reports"


@dataclass
class SyntheticConfig:
    images_per_class: int = 40
    seed: int = 0
    large_fraction: float = 0.1


@dataclass
class DataConfig:
    name: str = "kvasir-v2"
    url: str = ""
    mirrors: list[str] = field(default_factory=list)
    size: int | None = None
    sha256: str | None = None
    classes: list[str] = field(default_factory=list)
    expected_per_class: int = 1000
    on_unreadable: Literal["error", "skip"] = "error"
    synthetic: SyntheticConfig | None = None


@dataclass
class SplitConfig:
    val_fraction: float = 0.2
    seed: int = 42


@dataclass
class CacheConfig:
    short_side: int = 256
    quality: int = 95
    workers: int = 0


@dataclass
class TransformsConfig:
    image_size: int = 224
    rotation_degrees: float = 30.0
    hflip_p: float = 0.5
    vflip_p: float = 0.5
    brightness: float = 0.2
    contrast: float = 0.2
    crop_scale: list[float] = field(default_factory=lambda: [0.08, 1.0])
    crop_ratio: list[float] = field(default_factory=lambda: [0.75, 1.3333333])
    eval_resize: Literal["squash", "center_crop"] = "squash"
    mean: list[float] = field(default_factory=lambda: [0.485, 0.456, 0.406])
    std: list[float] = field(default_factory=lambda: [0.229, 0.224, 0.225])


@dataclass
class StageConfig:
    epochs: int = 5
    trainable: str = "head"
    lr: float = 1e-4


@dataclass
class TrainConfig:
    models: list[str] = field(default_factory=lambda: ["resnet50", "efficientnet_b0"])
    weights: str | None = "IMAGENET1K_V1"
    batch_size: int = 32
    optimizer: Literal["adam"] = "adam"
    stage1: StageConfig = field(default_factory=StageConfig)
    stage2: StageConfig = field(default_factory=lambda: StageConfig(trainable="last_tensors:10"))
    stage2_init: Literal["fresh_optimizer", "continue_optimizer"] = "fresh_optimizer"
    frozen_batchnorm: Literal["eval", "train"] = "eval"
    seed: int = 42


@dataclass
class EvalConfig:
    figure1_correct: int = 8
    figure1_incorrect: int = 8
    bootstrap_samples: int = 1000
    confidence: float = 0.95
    seed: int = 0


@dataclass
class RuntimeConfig:
    """How to run, never what is computed; excluded from the science fingerprint."""

    device: Literal["auto", "cpu", "cuda", "mps"] = "auto"
    precision: Literal["auto", "bf16", "fp32"] = "auto"
    workers: int | Literal["auto"] = "auto"
    offline: bool = False


@dataclass
class Config:
    profile: str = "paper"
    paths: PathsConfig = field(default_factory=PathsConfig)
    data: DataConfig = field(default_factory=DataConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    cache: CacheConfig = field(default_factory=CacheConfig)
    transforms: TransformsConfig = field(default_factory=TransformsConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)

    @property
    def generated_data(self) -> bool:
        """True when the images come from kvasir_utils.synthetic, not from Kvasir."""
        return self.data.synthetic is not None

    # -- paths: the one place that knows where things live -------------------------------
    def _resolve(self, value: str) -> Path:
        path = Path(value).expanduser()
        return path if path.is_absolute() else PROJECT_ROOT / path

    @property
    def dataset_dir(self) -> Path:
        return self._resolve(self.paths.data) / self.data.name

    @property
    def run_dir(self) -> Path:
        return self._resolve(self.paths.runs) / self.profile

    @property
    def report_dir(self) -> Path:
        return self._resolve(self.paths.reports) / self.profile

    @property
    def split_csv(self) -> Path:
        return self.run_dir / "split.csv"

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
        return dataclasses.asdict(self)

    def science_dict(self) -> dict:
        """Everything that changes a result: the config without paths and runtime."""
        out = self.to_dict()
        for key in ("paths", "runtime"):
            out.pop(key)
        return out


# -- building typed objects from plain data, with errors that name the key ----------------
def _type_name(tp) -> str:
    origin = typing.get_origin(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    if origin in (Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is list:
        return f"list of {_type_name(typing.get_args(tp)[0])}"
    if tp is type(None):
        return "null"
    if dataclasses.is_dataclass(tp):
        return "a mapping"
    return tp.__name__


def _coerce(value, tp, key: str):
    origin = typing.get_origin(tp)
    if origin is Literal:
        if value in typing.get_args(tp):
            return value
    elif origin in (Union, types.UnionType):
        for option in typing.get_args(tp):
            try:
                return _coerce(value, option, key)
            except ConfigError:
                continue
    elif origin is list:
        if isinstance(value, (list, tuple)):
            (inner,) = typing.get_args(tp)
            return [_coerce(v, inner, f"{key}[{i}]") for i, v in enumerate(value)]
    elif dataclasses.is_dataclass(tp):
        if isinstance(value, dict):
            return _build(tp, value, key)
    elif tp is type(None):
        if value is None:
            return None
    elif tp is bool:
        if isinstance(value, bool):
            return value
    elif tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    elif tp is str and isinstance(value, str):
        return value
    raise ConfigError(f"setting {key!r} = {value!r} is not valid: expected {_type_name(tp)}")


def _build(cls, values: dict, prefix: str = ""):
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    unknown = sorted(set(values) - set(names))
    if unknown:
        where = f"{prefix}." if prefix else ""
        raise ConfigError(
            f"unknown setting '{where}{unknown[0]}'; allowed under "
            f"{prefix or 'the top level'}: {', '.join(names)}"
        )
    kwargs = {}
    for name in names:
        if name in values:
            kwargs[name] = _coerce(values[name], hints[name], f"{prefix}.{name}".lstrip("."))
    return cls(**kwargs)


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


def find_profile(name_or_path: str | os.PathLike) -> Path:
    """A profile name (``paper``, ``smoke``) or a path to a YAML file of the same form."""
    text = str(name_or_path)
    candidate = Path(text).expanduser()
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


def _load_raw(path: Path, seen: tuple[Path, ...] = ()) -> dict:
    if path in seen:
        raise ConfigError(f"profile {path} inherits itself through 'base'")
    raw = _read_yaml(path)
    base = raw.pop("base", None)
    if base is None:
        return raw
    return _deep_merge(_load_raw(find_profile(base), (*seen, path)), raw)


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
    """Load a profile by name or path, apply dotted overrides, validate every key.

    Overriding ``data.url`` clears ``data.size``, ``data.sha256`` and ``data.mirrors`` (they
    describe the profile's own archive) unless the overrides set them too.
    """
    path = find_profile(name_or_path)
    overrides = list(overrides or [])
    raw = apply_overrides(_load_raw(path), overrides)
    _clear_source_details(raw, overrides)
    if "profile" in raw:
        raise ConfigError("'profile' is the file's name and cannot be set; copy the YAML under a new name")
    raw["profile"] = path.stem
    cfg = _build(Config, raw)
    _check_values(cfg)
    return cfg


def config_from_dict(values: dict) -> Config:
    """Rebuild a saved config (a checkpoint's, say) with the same validation."""
    return _build(Config, values)


def _check_values(cfg: Config) -> None:
    checks = [
        (0 < cfg.split.val_fraction < 1, "split.val_fraction", "a fraction between 0 and 1"),
        (cfg.train.batch_size > 0, "train.batch_size", "a positive integer"),
        (cfg.transforms.image_size >= 16, "transforms.image_size", "at least 16 pixels"),
        (cfg.cache.short_side >= cfg.transforms.image_size, "cache.short_side",
         f"at least transforms.image_size ({cfg.transforms.image_size}) so crops never upsample"),
        (len(cfg.data.classes) >= 2, "data.classes", "at least two class folder names"),
        (len(set(cfg.data.classes)) == len(cfg.data.classes), "data.classes", "names without repeats"),
        (bool(cfg.train.models), "train.models", "at least one torchvision model name"),
        (all(s.epochs >= 0 for s in (cfg.train.stage1, cfg.train.stage2)), "train.stageN.epochs", ">= 0"),
        (bool(cfg.data.url) or cfg.data.synthetic is not None, "data.url",
         "an http(s):// or file:// address or a local path (or data.synthetic for generated data)"),
        (cfg.runtime.workers == "auto" or cfg.runtime.workers >= 0, "runtime.workers", "'auto' or >= 0"),
    ]
    for ok, key, expected in checks:
        if not ok:
            raise ConfigError(f"setting {key!r} is not valid: expected {expected}")


def save_config(cfg: Config, path: Path) -> Path:
    """Write the resolved config as YAML, atomically."""
    from kvasir_utils.io import write_text_atomic

    return write_text_atomic(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))
