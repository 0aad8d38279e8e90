"""Many runs as one: a sweep file, its members as Ray tasks, and their results gathered.

A sweep file (``configs/sweeps/<name>.yaml``) names a base profile, seeds, models and a grid of
dotted settings; every combination is a member. A member is an ordinary run: ``make evaluate``
(notebooks 01-04 and the HTML report) with its own overrides and its own run and report folders,
so it has the files, stamps and HTML report of a single run, skips what it finished and resumes
what was interrupted. Members run as
Ray tasks with their resources: on a local Ray instance started by ``ray.init()`` by default, or
on an existing cluster through ``RAY_ADDRESS`` (or ``address:`` in the file), with no change.
"""

from __future__ import annotations

import itertools
import json
import os
import re
import signal
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
from pydantic import Field, ValidationError

from kvasir_utils import config, metrics, models, paper, stats
from kvasir_utils.config import Config, ConfigError, Section
from kvasir_utils.errors import KvasirError
from kvasir_utils.io import sha256_text, write_json_atomic

SWEEP_DIR = config.CONFIG_DIR / "sweeps"
SEED_SETTINGS = {"train.seed": ["train.seed"], "split.seed": ["split.seed"], "both": ["train.seed", "split.seed"]}
METRICS = ["accuracy", "macro_f1", "macro_auc"]
DEFAULT_READING = "profile's reading"
PAIRED_COLUMNS = ["first", "second", "reading", "metric", "mean_difference", "sd", "ci_low", "ci_high", "n",
                  "paired_t_p", "sign_test_p", "seeds", "mcnemar_p_per_seed"]
ABLATION_COLUMNS = ["model", "reading", "default", "mean", "n", "difference_to_default", "ci_low", "ci_high",
                    "paired_n", "paired_t_p", "sign_test_p"]


class Resources(Section):
    cpus: float = Field(1.0, gt=0)
    gpus: float = Field(0.0, ge=0)  # fractions let several members share one GPU


class SweepFile(Section):
    base: str = "paper"
    seeds: list[int] = Field([42], min_length=1)
    # train.seed: the validation set stays fixed and runs are paired by seed (the default);
    # split.seed: another split per seed; both: both vary together.
    seed_setting: Literal["train.seed", "split.seed", "both"] = "train.seed"
    models: list[str] | None = Field(None, min_length=1)  # default: the base profile's train.models
    grid: dict[str, list] = {}
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
    def default_settings(self) -> dict:
        """The base profile's value of every grid setting: the paper's reading the others are compared with."""
        return {key: paper.setting_value(self.base.to_dict(), key) for key in self.spec.grid}


# -- the sweep file -----------------------------------------------------------------------
def find_sweep(name_or_path: str) -> Path:
    candidate = Path(name_or_path).expanduser()
    if candidate.suffix in (".yaml", ".yml") or candidate.is_file():
        if not candidate.is_file():
            raise ConfigError(f"sweep file {candidate} does not exist")
        return candidate.resolve()
    path = SWEEP_DIR / f"{name_or_path}.yaml"
    if not path.is_file():
        known = ", ".join(sorted(p.stem for p in SWEEP_DIR.glob("*.yaml")))
        raise ConfigError(f"unknown sweep {name_or_path!r}; known sweeps: {known} (or give the path to a YAML file)")
    return path


def _value_text(value) -> str:
    """A grid value as it is written in an override (and in a member's name)."""
    return value if isinstance(value, str) else json.dumps(value, separators=(",", ":"))


def folder_name(member_name: str) -> str:
    """A member's folder: its name with what make cannot take in a file name (``:`` in
    ``block:layer4.2``, ``/``, spaces) replaced by ``_``; member.json keeps the name itself."""
    return re.sub(r"[^A-Za-z0-9._=+,@\[\]-]", "_", member_name).replace("[", "(").replace("]", ")")


# Settings a sweep sets for each run itself: a grid over them (or an override of them) would make
# a run claim one model or seed while training another.
OWN_KEYS = {"train.models", "train.seed", "split.seed"}


def _check_spec(sweep_name: str, spec: SweepFile, overrides: list[str]) -> None:
    """Refuse what would silently mislabel runs: grid keys the sweep sets itself, empty value
    lists, negative seeds, and overrides of the model or the varying seed."""
    problems = [f"grid key {key!r} is set by the sweep itself (use `models:`, `seeds:` and `seed_setting:`)"
                for key in spec.grid if key in OWN_KEYS or key.startswith("paths.")]
    problems += [f"grid key {key!r} has no values" for key, values in spec.grid.items() if not values]
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
    every model x reading on the meta device) before anything runs."""
    path = find_sweep(name_or_path)
    raw = config._read_yaml(path)
    try:
        spec = SweepFile.model_validate(raw)
    except ValidationError as exc:
        error = exc.errors()[0]
        key = ".".join(str(p) for p in error["loc"])
        raise ConfigError(f"sweep {path.name}: setting {key!r} is not valid: {error['msg']}") from None
    overrides = list(overrides or [])
    _check_spec(path.stem, spec, overrides)
    profile = config.profile_reference(config.find_profile(spec.base, relative_to=path.parent))
    base = config.load_profile(profile, [*spec.overrides, *overrides])
    sweep = Sweep(path.stem, spec, profile, overrides, base, source=path)
    for text in [*spec.overrides, *overrides]:
        _check_override_text(text, f"sweep {sweep.name}")
    sweep.members = [_member(sweep, model, seed, dict(zip(spec.grid, values)))
                     for values in itertools.product(*spec.grid.values())
                     for model in (spec.models or base.train.models) for seed in spec.seeds]
    folders = [m.folder for m in sweep.members]
    if len(set(folders)) != len(folders):
        raise ConfigError(f"sweep {sweep.name}: two runs would share a folder (repeated seeds or grid values?)")
    return sweep


def _member(sweep: Sweep, model: str, seed: int, settings: dict) -> Member:
    name = "-".join([model, f"seed{seed}", *(f"{k}={_value_text(v)}" for k, v in settings.items())])
    reading = ", ".join(f"{k}={_value_text(v)}" for k, v in settings.items()) or DEFAULT_READING
    folder = folder_name(name)
    own = [f"train.models=[{model}]", *(f"{key}={seed}" for key in SEED_SETTINGS[sweep.spec.seed_setting]),
           *(f"{k}={_value_text(v)}" for k, v in settings.items()),
           f"paths.runs={sweep.run_dir / 'members' / folder}", f"paths.reports={sweep.report_dir / 'members' / folder}"]
    for text in own:
        _check_override_text(text, f"sweep {sweep.name}, member {name}")
    member_overrides = [*sweep.spec.overrides, *sweep.overrides, *own]
    try:
        cfg = config.load_profile(sweep.profile, member_overrides)
        models.check_profile(cfg)
    except KvasirError as exc:
        raise ConfigError(f"sweep {sweep.name}, member {name}: {exc}") from None
    return Member(name, model, seed, settings, reading, member_overrides, cfg)


# -- records ------------------------------------------------------------------------------
def read_record(member: Member) -> dict | None:
    try:
        return json.loads(member.record_path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def settings_fingerprint(member: Member) -> str:
    """SHA-256 of everything that changes the run's result (its resolved settings, not how they
    were written), so an edited profile or SET makes a finished run count as not done."""
    return sha256_text(json.dumps(member.cfg.science_dict(), sort_keys=True, default=str))


def is_finished(member: Member) -> bool:
    """Finished under exactly these settings, with its evaluation on disk."""
    record = read_record(member)
    return (bool(record) and record.get("status") == "finished"
            and record.get("settings_sha256") == settings_fingerprint(member)
            and (member.cfg.eval_dir(member.model) / "metrics.json").exists())


def write_record(sweep: Sweep, member: Member, status: str, error: str, node: dict | None, seconds: float,
                 attempts: int) -> Path:
    return write_json_atomic(member.record_path, {
        "sweep": sweep.name, "member": member.name, "settings": member.settings, "model": member.model,
        "seed": member.seed, "seed_setting": sweep.spec.seed_setting, "reading": member.reading,
        "status": status, "error": error, "node": node, "seconds": round(seconds, 1), "attempts": attempts,
        "overrides": member.overrides, "settings_sha256": settings_fingerprint(member),
        "report": str(member.report_index),
    })


# -- one member, inside a Ray task ----------------------------------------------------------
class MemberFailed(RuntimeError):
    """A member's run ended with an error; Ray retries the task, then the driver records it."""

    def __init__(self, message: str, node: dict, attempts: int):
        super().__init__(message)
        self.node, self.attempts = node, attempts

    def __reduce__(self):
        return MemberFailed, (str(self), self.node, self.attempts)


def _last_error(log: Path) -> str:
    """The reason the last attempt gave (its last ``error:`` line, else its last line)."""
    text = log.read_text(errors="replace")
    attempt = text[text.rfind("=== sweep run "):].splitlines()[1:]
    lines = [line.strip() for line in attempt if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    return (errors or lines or ["no output"])[-1].removeprefix("error:").strip()


def _die_with_parent():
    """For the member's make: a function that, run in the child, asks Linux for SIGTERM when the
    Ray worker that started it dies, even by SIGKILL; make passes SIGTERM on to the notebooks.
    The C function is looked up here, before the fork (nothing unsafe runs in the child)."""
    import ctypes

    try:
        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):  # not Linux: Ctrl-C and cancel still stop the member
        return None
    return lambda: prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def _stop(process: subprocess.Popen) -> None:
    """Stop a member's make and everything it started (its own process group), politely first."""
    for sig, wait in ((signal.SIGINT, 20), (signal.SIGTERM, 10), (signal.SIGKILL, 5)):
        if process.poll() is not None:
            return
        try:
            os.killpg(process.pid, sig)
            process.wait(timeout=wait)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            continue


def execute_member(profile: str, overrides: list[str], folder: str, invocation: str, node: dict) -> dict:
    """Run one member's chain (``make evaluate``: 01-04 and its report); raise MemberFailed on an error.

    The output goes to ``<member folder>/member.log``; each attempt starts with a header, so the
    log shows the retries."""
    log = Path(folder) / "member.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    start = time.time()
    header = f"=== sweep run {invocation} attempt on node {node['id']} ({node['hostname']})"
    with open(log, "a") as out:
        out.write(f"{header} at {time.strftime('%Y-%m-%d %H:%M:%S')}\n")
        out.flush()
        command = ["make", "--no-print-directory", "-C", str(config.PROJECT_ROOT), "pipeline-evaluated",
                   f"PROFILE={profile}", f"SET={' '.join(overrides)}"]
        env = {k: v for k, v in os.environ.items() if k not in ("MAKEFLAGS", "MFLAGS", "MAKELEVEL")}
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
                                   env={**env, "PYTHONUNBUFFERED": "1"}, preexec_fn=_die_with_parent())
        try:
            while (code := process.poll()) is None:  # polled: a cancelled task is interrupted here
                time.sleep(0.5)
        finally:
            _stop(process)  # Ctrl-C or a cancelled task: stop the notebooks too
    attempts = sum(line.startswith(f"=== sweep run {invocation} ") for line in log.read_text().splitlines())
    if code != 0:
        raise MemberFailed(_last_error(log), node, attempts)
    return {"seconds": time.time() - start, "node": node, "attempts": attempts}


def _ray_member(profile, overrides, folder, invocation, tracker, name):
    import ray

    node = {"id": ray.get_runtime_context().get_node_id(), "hostname": socket.gethostname()}
    tracker.started.remote(name)
    try:
        return execute_member(profile, overrides, folder, invocation, node)
    finally:
        tracker.ended.remote(name)


class _Tracker:
    """Which members are running now (the driver's progress bar asks)."""

    def __init__(self):
        self.running: set[str] = set()

    def started(self, name: str) -> None:
        self.running.add(name)

    def ended(self, name: str) -> None:
        self.running.discard(name)

    def count(self) -> int:
        return len(self.running)


# -- the driver ---------------------------------------------------------------------------
@dataclass
class SweepOutcome:
    finished: list[str]
    failed: dict[str, str]  # member -> error
    skipped: list[str]  # finished by an earlier run


def _connect(sweep: Sweep):
    import ray

    # "local": a new instance on this machine, even if a cluster started with `ray start` runs here
    # (ray.init() would join that one). The study's modules are importable on every node because
    # each node runs from the same checkout and environment (README).
    address = sweep.spec.address or os.environ.get("RAY_ADDRESS") or "local"
    ray.init(address=address, include_dashboard=False, log_to_driver=False,
             configure_logging=True, logging_level="WARNING")
    _check_resources(ray, sweep)
    return ray


def _check_resources(ray, sweep: Sweep) -> None:
    """A run that no node can hold would wait forever: refuse it with the numbers."""
    wanted = {"CPU": sweep.spec.resources.cpus, "GPU": sweep.spec.resources.gpus}
    nodes = [n["Resources"] for n in ray.nodes() if n.get("Alive")]
    if not any(all(node.get(k, 0) >= v for k, v in wanted.items() if v) for node in nodes):
        largest = max(nodes, key=lambda n: (n.get("GPU", 0), n.get("CPU", 0)), default={})
        ray.shutdown()
        raise KvasirError(
            f"sweep {sweep.name} asks for {wanted['CPU']:g} CPU(s) and {wanted['GPU']:g} GPU(s) per run, but the "
            f"largest node has {largest.get('CPU', 0):g} CPU(s) and {largest.get('GPU', 0):g} GPU(s); lower "
            f"`resources:` in the sweep file (fractions are allowed) or add a node that has them")


def run_sweep(sweep: Sweep, progress: bool = True) -> SweepOutcome:
    """Run every member that is not finished as a Ray task; record each in its member.json."""
    from tqdm import tqdm

    skipped = [m.name for m in sweep.members if is_finished(m)]
    todo = [m for m in sweep.members if m.name not in skipped]
    outcome = SweepOutcome([], {}, skipped)
    if not todo:
        return outcome
    ray = _connect(sweep)
    invocation = uuid.uuid4().hex[:8]
    try:
        tracker = ray.remote(_Tracker).options(num_cpus=0).remote()
        task = ray.remote(_ray_member)
        options = {"num_cpus": sweep.spec.resources.cpus, "num_gpus": sweep.spec.resources.gpus,
                   "max_retries": sweep.spec.max_retries, "retry_exceptions": [MemberFailed]}
        refs = {task.options(name=m.name, **options).remote(sweep.profile, m.overrides, str(m.folder), invocation,
                                                            tracker, m.name): m for m in todo}
        start = {m.name: time.time() for m in todo}
        bar = tqdm(total=len(todo), desc=f"sweep {sweep.name}", unit="member", disable=not progress)
        previous = signal.signal(signal.SIGTERM, _interrupt)  # a scheduler's kill stops the runs like Ctrl-C
        try:
            waiting = list(refs)
            while waiting:
                done, waiting = ray.wait(waiting, num_returns=1, timeout=2.0)
                for ref in done:
                    _collect(ray, sweep, refs[ref], ref, time.time() - start[refs[ref].name], outcome)
                    bar.update(1)
                running = ray.get(tracker.count.remote())
                bar.set_postfix(done=len(outcome.finished), running=running, failed=len(outcome.failed))
        except KeyboardInterrupt:
            bar.write(f"stopping {len(waiting)} member(s) ... (a rerun continues where they stopped)")
            for ref in waiting:
                ray.cancel(ref)
            ray.wait(waiting, num_returns=len(waiting), timeout=60)
            raise
        finally:
            signal.signal(signal.SIGTERM, previous)
            bar.close()
    finally:
        ray.shutdown()
    return outcome


def _interrupt(signum, frame):
    raise KeyboardInterrupt


def _collect(ray, sweep: Sweep, member: Member, ref, seconds: float, outcome: SweepOutcome) -> None:
    try:
        result = ray.get(ref)
    except ray.exceptions.RayTaskError as exc:
        cause = exc.cause if isinstance(exc.cause, MemberFailed) else None
        if cause is not None:
            error = str(cause)
        elif exc.cause is not None:
            error = f"{type(exc.cause).__name__}: {exc.cause}"
        else:
            error = str(exc).splitlines()[0]
        write_record(sweep, member, "failed", error, cause.node if cause else None, seconds,
                     cause.attempts if cause else 0)
        outcome.failed[member.name] = error
    except ray.exceptions.RayError as exc:  # a worker or node died: no result at all
        error = f"{type(exc).__name__}: {str(exc).splitlines()[0]}"
        write_record(sweep, member, "failed", error, None, seconds, 0)
        outcome.failed[member.name] = error
    else:
        write_record(sweep, member, "finished", "", result["node"], result["seconds"], result["attempts"])
        outcome.finished.append(member.name)


# -- gathering the results ----------------------------------------------------------------
def member_results(sweep: Sweep) -> pd.DataFrame:
    """One row per member: its record and, when finished, its headline metrics."""
    rows = []
    for member in sweep.members:
        record = read_record(member) or {"status": "not run", "error": "", "node": None}
        row = {"member": member.name, "model": member.model, "seed": member.seed, "reading": member.reading,
               "default_reading": all(paper.setting_value(member.cfg.to_dict(), k) == v
                                      for k, v in sweep.default_settings.items()),
               "status": record["status"], "error": record.get("error", ""),
               "node": (record.get("node") or {}).get("hostname", ""), "seconds": record.get("seconds")}
        metrics_path = member.cfg.eval_dir(member.model) / "metrics.json"
        if row["status"] == "finished" and not metrics_path.exists():
            row |= {"status": "failed", "error": f"finished, but {metrics_path} is not there (is paths.runs on "
                                                  "storage the driver shares with the nodes?)"}
        elif row["status"] == "finished":
            found = json.loads(metrics_path.read_text())
            row |= {metric: found[metric] for metric in METRICS}
        rows.append(row)
    return pd.DataFrame(rows)


def member_predictions(member: Member) -> pd.DataFrame:
    return pd.read_csv(member.cfg.eval_dir(member.model) / "predictions.csv")


def finished_members(sweep: Sweep) -> list[Member]:
    results = member_results(sweep)
    done = set(results.loc[results["status"] == "finished", "member"])
    return [m for m in sweep.members if m.name in done]


def aggregation_is_current(sweep: Sweep, executed: Path) -> bool:
    """Whether notebook 06's executed copy is newer than every member record, the sweep file and
    the notebook itself, i.e. there is nothing new to aggregate (a rerun after all finished)."""
    if not executed.exists():
        return False
    inputs = [m.record_path for m in sweep.members if m.record_path.exists()]
    inputs += [sweep.source, config.PROJECT_ROOT / "notebooks" / executed.name]
    return all(p.exists() and p.stat().st_mtime_ns < executed.stat().st_mtime_ns for p in inputs)


def summary_table(results: pd.DataFrame, confidence: float = 0.95) -> pd.DataFrame:
    """Per model and reading, each metric's mean, sd, t-interval and n over the finished runs."""
    finished = results[results["status"] == "finished"]
    return stats.summarize(finished, ["model", "reading"], METRICS, confidence)


def per_class_f1(sweep: Sweep) -> pd.DataFrame:
    """Per model, reading and class: F1 mean and sd over the finished runs."""
    rows = []
    for member in finished_members(sweep):
        predictions = member_predictions(member)
        table = metrics.classification_table(predictions["true"], predictions["pred"], member.cfg.data.classes)
        for name, f1 in table["F1-Score"].iloc[: len(member.cfg.data.classes)].items():
            rows.append({"model": member.model, "reading": member.reading, "class": name, "f1": f1})
    frame = pd.DataFrame(rows, columns=["model", "reading", "class", "f1"])
    grouped = frame.groupby(["model", "reading", "class"], sort=False)["f1"]
    return grouped.agg(mean="mean", sd="std", n="count").reset_index()


def paired_table(sweep: Sweep, results: pd.DataFrame, metric: str = "accuracy",
                 confidence: float = 0.95) -> pd.DataFrame:
    """Every pair of models, per reading, paired by seed: the mean difference of ``metric`` with
    its t-interval, the paired t-test, the sign test, and McNemar's p-value of each seed's pair
    of runs (on the same validation images; not available when the split varies by seed)."""
    finished = results[results["status"] == "finished"].set_index(["model", "reading", "seed"]).sort_index()
    by_name = {m.name: m for m in sweep.members}
    model_names = list(dict.fromkeys(results["model"]))
    rows = []
    for first, second in itertools.combinations(model_names, 2):
        for reading in dict.fromkeys(results["reading"]):
            seeds = sorted(set(finished.loc[(first, reading)].index) & set(finished.loc[(second, reading)].index)
                           if (first, reading) in finished.index and (second, reading) in finished.index else [])
            if not seeds:
                continue
            a = [finished.loc[(first, reading, s), metric] for s in seeds]
            b = [finished.loc[(second, reading, s), metric] for s in seeds]
            mcnemar = [_mcnemar_p(by_name[finished.loc[(first, reading, s), "member"]],
                                  by_name[finished.loc[(second, reading, s), "member"]]) for s in seeds]
            rows.append({"first": first, "second": second, "reading": reading, "metric": metric,
                         **stats.paired_difference(a, b, confidence), "seeds": " ".join(map(str, seeds)),
                         "mcnemar_p_per_seed": " ".join(f"{p:.3g}" for p in mcnemar)})
    return pd.DataFrame(rows, columns=PAIRED_COLUMNS)


def _mcnemar_p(first: Member, second: Member) -> float:
    a, b = member_predictions(first), member_predictions(second)
    if list(a["path"]) != list(b["path"]):
        return float("nan")  # different validation images (the split varies with the seed)
    return metrics.mcnemar(a["true"] == a["pred"], b["true"] == b["pred"])["p_value"]


def ablation_table(results: pd.DataFrame, metric: str = "accuracy", confidence: float = 0.95) -> pd.DataFrame:
    """Per model and reading: the mean of ``metric`` and its difference to the profile's own
    (the paper's default) reading, paired by seed, with the t-interval of that difference."""
    finished = results[results["status"] == "finished"]
    rows = []
    for model, runs in finished.groupby("model", sort=False):
        default = runs[runs["default_reading"]].set_index("seed")[metric]
        for reading, part in runs.groupby("reading", sort=False):
            values = part.set_index("seed")[metric]
            seeds = sorted(set(values.index) & set(default.index))
            is_default = bool(part["default_reading"].iloc[0])
            difference = stats.paired_difference(values[seeds], default[seeds], confidence) \
                if seeds and not is_default else {}
            rows.append({"model": model, "reading": reading, "default": is_default,
                         "mean": values.mean(), "n": len(values),
                         "difference_to_default": difference.get("mean_difference", np.nan),
                         "ci_low": difference.get("ci_low", np.nan), "ci_high": difference.get("ci_high", np.nan),
                         "paired_n": difference.get("n", 0), "paired_t_p": difference.get("paired_t_p", np.nan),
                         "sign_test_p": difference.get("sign_test_p", np.nan)})
    return pd.DataFrame(rows, columns=ABLATION_COLUMNS)
