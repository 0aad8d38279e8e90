"""A sweep file and its members: a base profile, seeds, models and a grid of dotted settings; every
combination is a member, an ordinary run with its own folders. Every member is validated before
anything runs.
"""

from __future__ import annotations

import itertools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pydantic import Field, ValidationError

from kvasir_utils import config, profiles
from kvasir_utils.analysis import paper
from kvasir_utils.analysis.sweeps import DEFAULT_READING
from kvasir_utils.config import Config, ConfigError, Section
from kvasir_utils.errors import KvasirError
from kvasir_utils.files import sha256_text

SWEEP_DIR = config.CONFIG_DIR / "sweeps"
SEED_SETTINGS = {"train.seed": ["train.seed"], "split.seed": ["split.seed"], "both": ["train.seed", "split.seed"],
                 "split.validation_fold": ["split.validation_fold"]}


class Resources(Section):
    cpus: float = Field(1.0, gt=0)
    gpus: float = Field(0.0, ge=0)  # fractions let several members share one GPU


class SweepFile(Section):
    base: str = "paper"
    seeds: list[int] = Field([42], min_length=1)
    # train.seed: the validation set stays fixed and runs are paired by seed (the default);
    # split.seed: another split per seed; both: both vary together; split.validation_fold: the
    # "seeds" are folds, one run validated on each (k-fold cross-validation).
    seed_setting: Literal["train.seed", "split.seed", "both", "split.validation_fold"] = "train.seed"
    models: list[str] | None = Field(None, min_length=1)  # default: the base profile's train.models
    grid: dict[str, list] = {}
    # Named readings instead of a grid: each a set of dotted settings, e.g. the leakage sweep's
    # random: {split.group_near_duplicates: false}; the reading whose settings are the base
    # profile's own is the default the others are compared with.
    readings: dict[str, dict] = {}
    overrides: list[str] = []  # dotted settings for every member, like SET
    resources: Resources = Resources()
    max_retries: int = Field(1, ge=0)
    address: str | None = None  # a Ray cluster; RAY_ADDRESS also works; none: a local instance


@dataclass
class Member:
    name: str
    model: str
    seed: int
    settings: dict  # the grid values of this member
    reading: str  # the settings in words, "profile's reading" when there is no grid
    overrides: list[str]
    cfg: Config

    @property
    def folder(self) -> Path:
        """The member's own runs folder (its run is ``<folder>/<profile>``)."""
        return self.cfg.runs_root

    @property
    def record_path(self) -> Path:
        return self.folder / "member.json"

    @property
    def report_index(self) -> Path:
        return self.cfg.report_dir / "index.html"


@dataclass
class Sweep:
    name: str
    spec: SweepFile
    profile: str  # what to hand to make: a profile name, or an absolute path
    overrides: list[str]  # SET, for every member
    base: Config
    source: Path | None = None  # the sweep file
    members: list[Member] = field(default_factory=list)

    @property
    def run_dir(self) -> Path:
        return self.base.runs_root / "sweeps" / self.name

    @property
    def report_dir(self) -> Path:
        return self.base.reports_root / "sweeps" / self.name

    @property
    def varied_keys(self) -> list[str]:
        """The settings the sweep varies: the grid's keys, or every key of its named readings."""
        return list(dict.fromkeys([*self.spec.grid, *(k for r in self.spec.readings.values() for k in r)]))

    @property
    def default_settings(self) -> dict:
        """The base profile's value of every varied setting: the paper's reading the others are compared with."""
        return {key: paper.setting_value(self.base.to_dict(), key) for key in self.varied_keys}

    def settings_and_readings(self) -> list[tuple[dict, str | None]]:
        """Each reading's settings and its name (None for a grid's combination, named by its settings)."""
        if self.spec.readings:
            return [(settings, name) for name, settings in self.spec.readings.items()]
        return [(dict(zip(self.spec.grid, values)), None) for values in itertools.product(*self.spec.grid.values())]


# -- the sweep file -----------------------------------------------------------------------
def find_sweep_file(name_or_path: str) -> Path:
    """The sweep file a name (``seeds`` -> ``configs/sweeps/seeds.yaml``) or a path names."""
    return profiles.find_yaml(name_or_path, SWEEP_DIR, "sweep")


def _value_text(value) -> str:
    """A grid value as it is written in an override (and in a member's name)."""
    return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))


def folder_name(member_name: str) -> str:
    """A member's folder: its name with what make cannot take in a file name (``:`` in
    ``block:layer4.2``, ``/``, spaces) replaced by ``_``; member.json keeps the name itself."""
    return re.sub(r"[^A-Za-z0-9._=+,@\[\]-]", "_", member_name).replace("[", "(").replace("]", ")")


# Settings a sweep sets for each run itself: a grid over them (or an override of them) would make
# a run claim one model or seed while training another.
OWN_KEYS = {"train.models", "train.seed", "split.seed", "split.validation_fold"}


def _check_spec(sweep_name: str, spec: SweepFile, overrides: list[str]) -> None:
    """Refuse what would silently mislabel runs: grid keys the sweep sets itself, empty value
    lists, negative seeds, and overrides of the model or the varying seed."""
    keys = {key: "grid" for key in spec.grid}
    keys |= {key: "reading" for reading in spec.readings.values() for key in reading}
    problems = [f"{kind} key {key!r} is set by the sweep itself (use `models:`, `seeds:` and `seed_setting:`)"
                for key, kind in keys.items() if key in OWN_KEYS or key.startswith("paths.")]
    problems += [f"grid key {key!r} has no values" for key, values in spec.grid.items() if not values]
    problems += ["give either `grid:` or `readings:`, not both"] if spec.grid and spec.readings else []
    problems += [f"reading {name!r} must be a folder-safe name (letters, digits, - and _)"
                 for name in spec.readings if not re.fullmatch(r"[A-Za-z0-9_-]+", name)]
    problems += [f"seed {seed} is negative" for seed in spec.seeds if seed < 0]
    varying = {"train.models", *SEED_SETTINGS[spec.seed_setting]}
    problems += [f"override {text!r} is replaced by the sweep for every run (use `models:` / `seeds:`)"
                 for text in [*spec.overrides, *overrides] if text.partition("=")[0].strip() in varying]
    if problems:
        raise ConfigError(f"sweep {sweep_name}: " + "; ".join(problems))


def _check_override_text(text: str, where: str) -> None:
    if any(c.isspace() for c in text) or "'" in text:
        raise ConfigError(f"{where}: {text!r} contains a space or a quote; members run through `make ... SET=...`, "
                          "which separates settings by spaces")


def load_sweep(name_or_path: str, overrides: list[str] | None = None) -> Sweep:
    """Read a sweep file and validate every member's settings (as a profile is validated, and
    every model x reading on the meta device) before anything runs: what `make sweep` does."""
    sweep = read_sweep(name_or_path, overrides)
    check_models(sweep)
    return sweep


def check_models(sweep: Sweep) -> None:
    """Every member's models and readings built on the meta device (``train.models.check_profile``);
    a ConfigError names the member and what does not fit."""
    from kvasir_utils.train import models  # imports torch: reading a finished sweep (notebook 06) needs none

    for member in sweep.members:
        try:
            models.check_profile(member.cfg)
        except KvasirError as exc:
            raise ConfigError(f"sweep {sweep.name}, member {member.name}: {exc}") from None


def read_sweep(name_or_path: str, overrides: list[str] | None = None) -> Sweep:
    """A sweep file with every member's settings resolved and validated as a profile is, without
    building its models: what notebook 06 reads a sweep's runs with (``load_sweep`` checks those too)."""
    path = find_sweep_file(name_or_path)
    raw = profiles.read_yaml(path)
    try:
        spec = SweepFile.model_validate(raw)
    except ValidationError as exc:
        error = exc.errors()[0]
        key = ".".join(str(p) for p in error["loc"])
        raise ConfigError(f"sweep {path.name}: setting {key!r} is not valid: {error['msg']}") from None
    overrides = list(overrides or [])
    _check_spec(path.stem, spec, overrides)
    profile = profiles.profile_reference(profiles.find_profile(spec.base, relative_to=path.parent))
    base = profiles.load_profile(profile, [*spec.overrides, *overrides])
    sweep = Sweep(path.stem, spec, profile, overrides, base, source=path)
    for text in [*spec.overrides, *overrides]:
        _check_override_text(text, f"sweep {sweep.name}")
    sweep.members = [_member(sweep, model, seed, settings, reading)
                     for settings, reading in sweep.settings_and_readings()
                     for model in (spec.models or base.train.models) for seed in spec.seeds]
    folders = [m.folder for m in sweep.members]
    if len(set(folders)) != len(folders):
        raise ConfigError(f"sweep {sweep.name}: two runs would share a folder (repeated seeds or grid values?)")
    return sweep


def _member(sweep: Sweep, model: str, seed: int, settings: dict, reading_name: str | None = None) -> Member:
    tag = "fold" if sweep.spec.seed_setting == "split.validation_fold" else "seed"
    described = [reading_name] if reading_name else [f"{k}={_value_text(v)}" for k, v in settings.items()]
    name = "-".join([model, f"{tag}{seed}", *described])
    reading = reading_name or ", ".join(f"{k}={_value_text(v)}" for k, v in settings.items()) or DEFAULT_READING
    folder = folder_name(name)
    own = [f"train.models=[{model}]", *(f"{key}={seed}" for key in SEED_SETTINGS[sweep.spec.seed_setting]),
           *(f"{k}={_value_text(v)}" for k, v in settings.items()),
           f"paths.runs={sweep.run_dir / 'members' / folder}", f"paths.reports={sweep.report_dir / 'members' / folder}"]
    for text in own:
        _check_override_text(text, f"sweep {sweep.name}, member {name}")
    member_overrides = [*sweep.spec.overrides, *sweep.overrides, *own]
    try:
        cfg = profiles.load_profile(sweep.profile, member_overrides)
    except KvasirError as exc:
        raise ConfigError(f"sweep {sweep.name}, member {name}: {exc}") from None
    return Member(name, model, seed, settings, reading, member_overrides, cfg)


def settings_fingerprint(member: Member) -> str:
    """SHA-256 of everything that changes the run's result (its resolved settings, not how they
    were written), so an edited profile or SET makes a finished run count as not done."""
    return sha256_text(json.dumps(member.cfg.science_dict(), sort_keys=True, default=str))
