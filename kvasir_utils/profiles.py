"""Profiles: YAML files of settings, loaded into the one ``config.Config``.

A profile is a YAML file in ``configs/`` (or any path). ``base: <profile>`` inherits another
profile and overrides only what it names; a profile without ``base:`` starts from the paper's
protocol, ``configs/paper.yaml``, the one place the protocol's values are written. Dotted overrides
(``train.stage1.epochs=1``) are applied last, the way ``make reproduce SET="..."`` and the
notebooks' ``OVERRIDES`` pass them. Types and ranges are checked when the profile is loaded, so a
bad value stops the run before anything is downloaded or trained; the readings that depend on a
model's layers are checked by ``train.models.check_readings``.
"""

from __future__ import annotations

import copy
import functools
import json
import os
from pathlib import Path

import yaml

from kvasir_utils.artefacts import LAB_SESSION
from kvasir_utils.config import CONFIG_DIR, Config, ConfigError, validate_config
from kvasir_utils.files import write_json_atomic, write_text_atomic

PROTOCOL = CONFIG_DIR / "paper.yaml"
# data.size, data.sha256 and data.mirrors describe the archive at the profile's data.url.
SOURCE_DETAILS = {"size": None, "sha256": None, "mirrors": []}


def read_yaml(path: Path, what: str = "profile") -> dict:
    """A YAML file that must hold a mapping (a profile, a sweep file); parsed once per version of
    the file (a sweep loads paper.yaml for each of its members), each caller given its own copy."""
    text = Path(path).read_text()
    return copy.deepcopy(_parsed(text, str(path), what))


@functools.lru_cache(maxsize=64)
def _parsed(text: str, path: str, what: str) -> dict:
    try:
        loaded = yaml.safe_load(text) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{what} {path} is not valid YAML: {exc}") from exc
    if not isinstance(loaded, dict):
        raise ConfigError(f"{what} {path} must be a mapping of settings, got {type(loaded).__name__}")
    return loaded


def find_yaml(name_or_path: str | os.PathLike, folder: Path, what: str, relative_to: Path | None = None) -> Path:
    """A name (``smoke`` -> ``<folder>/smoke.yaml``) or a path to a YAML file: the one lookup for
    profiles and sweep files. A relative path is taken from the current folder, or from
    ``relative_to`` (the folder of the file that names it, for ``base:``)."""
    text = str(name_or_path)
    candidate = Path(text).expanduser()
    if relative_to is not None and not candidate.is_absolute():
        candidate = relative_to / candidate
    if text.endswith((".yaml", ".yml")) or candidate.is_file():
        if not candidate.is_file():
            raise ConfigError(f"{what} file {candidate} does not exist")
        return candidate.resolve()
    path = folder / f"{text}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in folder.glob("*.yaml")))
        raise ConfigError(f"unknown {what} {text!r}; known {what}s: {known} (or give the path to a YAML file)")
    return path


def find_profile(name_or_path: str | os.PathLike, relative_to: Path | None = None) -> Path:
    return find_yaml(name_or_path, CONFIG_DIR, "profile", relative_to)


def profile_reference(name_or_path: str | os.PathLike) -> str:
    """What to hand to another process (a notebook kernel runs in ``notebooks/``): a profile's
    name as it is, a path made absolute."""
    path = find_profile(name_or_path)
    return path.stem if path.resolve() == (CONFIG_DIR / f"{path.stem}.yaml").resolve() else str(path)


def deep_merge(base: dict, top: dict) -> dict:
    out = dict(base)
    for key, value in top.items():
        out[key] = deep_merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _load_raw(path: Path, seen: tuple[Path, ...] = ()) -> dict:
    if path in seen:
        raise ConfigError(f"profile {path} inherits itself through 'base'")
    raw = read_yaml(path)
    base = raw.pop("base", None)
    if base is None:
        return raw if path.resolve() == PROTOCOL.resolve() else deep_merge(read_yaml(PROTOCOL), raw)
    try:
        found = find_profile(base, relative_to=path.parent)
    except ConfigError as exc:
        raise ConfigError(f"{path}: base: {exc}") from None
    return deep_merge(_load_raw(found, (*seen, path)), raw)


def with_protocol(values: dict, reference: str | None = None) -> Config:
    """A saved config (in a checkpoint, ``config.yaml``) read with today's protocol filling what it
    lacks, so a setting added since it was saved is no change. ``reference``: the PROFILE the
    command was given (``Config.profile_argument``), for the commands the study suggests."""
    cfg = validate_config(deep_merge({"profile": "paper", "overrides": [], **read_yaml(PROTOCOL)}, values))
    cfg._reference = reference
    return cfg


def parse_override(text: str) -> tuple[list[str], object]:
    """``"train.stage1.epochs=1"`` -> (["train", "stage1", "epochs"], 1)."""
    key, sep, value = text.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {text!r} must look like dotted.key=value")
    try:
        parsed = copy.deepcopy(_value(value)) if value.strip() else None
    except yaml.YAMLError as exc:
        problem = str(getattr(exc, "problem", None) or exc).strip()
        raise ConfigError(f"override {text!r}: its value is not YAML ({problem}). Given in SET, mind that make "
                          "splits SET at spaces: write a list or a mapping without them "
                          "(train.models=[resnet50,efficientnet_b0])") from None
    return key.strip().split("."), parsed


@functools.lru_cache(maxsize=1024)
def _value(text: str):
    """An override's value as YAML reads it, parsed once per text (a sweep repeats them per member)."""
    return yaml.safe_load(text)


def apply_overrides(raw: dict, overrides: list[str]) -> dict:
    out = deep_merge({}, raw)
    for text in overrides:
        keys, value = parse_override(text)
        node = out
        for key in keys[:-1]:
            child = node.get(key)
            node[key] = child = dict(child) if isinstance(child, dict) else {}
            node = child
        node[keys[-1]] = value
    return out


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
    if path.parent.resolve() != CONFIG_DIR.resolve() and (CONFIG_DIR / f"{path.stem}.yaml").exists():
        raise ConfigError(f"the profile file {path} has the name of the study's own profile {path.stem} "
                          f"(configs/{path.stem}.yaml); a profile's runs and reports are named by its file name "
                          f"(runs/{path.stem}/), so the two would share them: rename the file, e.g. to "
                          f"{path.stem}-mine.yaml")
    overrides = list(overrides or [])
    raw = apply_overrides(_load_raw(path), overrides)
    _clear_source_details(raw, overrides)
    for key in ("profile", "overrides"):
        if key in raw:
            raise ConfigError(f"'{key}' is set by the study itself (the file's name, the SET given); remove it")
    cfg = validate_config({**raw, "profile": path.stem, "overrides": overrides})
    cfg._reference = profile_reference(path)
    return cfg


def masked_profile(cfg: Config) -> str | None:
    """The profile that repeats this one with the guide box masked (``<profile>-masked``, e.g.
    ``paper-masked``), if there is one and this profile masks nothing itself."""
    name = f"{cfg.profile}-masked"
    if cfg.transforms.mask_overlays != "none" or not (CONFIG_DIR / f"{name}.yaml").exists():
        return None
    return name


def save_config(cfg: Config, path: Path) -> Path:
    """Write the resolved config as YAML, atomically."""
    return write_text_atomic(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))


def notebook_profile(profile: str | None, overrides: list[str], folder: Path | None = None) -> tuple[str, list[str]]:
    """The profile and overrides a notebook runs with: those papermill passes (``PROFILE``); for a
    notebook run by hand in JupyterLab (``PROFILE = None``), those ``make lab PROFILE=... SET=...``
    opened it with (``artefacts.LAB_SESSION`` in the notebook's folder, the kernel's working folder),
    then the notebook's own ``OVERRIDES``; else the paper's protocol."""
    if profile is not None:
        return profile, list(overrides)
    session = Path(folder or Path.cwd()) / LAB_SESSION
    if not session.exists():
        return "paper", list(overrides)
    found = json.loads(session.read_text())
    return found["profile"], [*found["overrides"], *overrides]


def write_lab_session(profile: str, overrides: list[str], folder: Path) -> Path:
    """``make lab``: the profile (checked here) that notebooks run by hand in ``folder`` take."""
    load_profile(profile, overrides)
    return write_json_atomic(Path(folder) / LAB_SESSION,
                             {"profile": profile_reference(profile), "overrides": list(overrides)})


def with_model_settings(cfg: Config, transforms: dict, trainable: dict) -> Config:
    """``cfg`` with one model's own input (``transforms``: image_size, mean, std) and stage readings
    (``trainable``: {stage: reading}) laid over it; ``cfg`` itself where nothing differs. Training
    (``train.models.for_model``) and the model card (from metrics.json) both read settings this way."""
    update = {}
    transforms = {k: v for k, v in transforms.items() if getattr(cfg.transforms, k) != v}
    if transforms:
        update["transforms"] = cfg.transforms.model_copy(update=transforms)
    trainable = {stage: r for stage, r in trainable.items() if cfg.stage_config(stage).trainable != r}
    if trainable:
        update["train"] = cfg.train.model_copy(update={
            stage: cfg.stage_config(stage).model_copy(update={"trainable": r}) for stage, r in trainable.items()})
    return cfg.model_copy(update=update) if update else cfg
