"""Where a result came from: the study's commit, the locked environment, the data and weights
it used, versions and hardware; written into every metrics.json and onto every report page.

Torch-free: package versions come from their installed metadata, so the report layer uses it too.
"""

from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import subprocess
import sys
from pathlib import Path

from kvasir_utils.config import PROJECT_ROOT, Config
from kvasir_utils.files import sha256_file

LOCK_FILE = PROJECT_ROOT / "requirements.lock"


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def cpu_model() -> str:
    """The CPU's model name (``AMD EPYC ...``, ``Intel(R) Xeon(R) ...``); every speed figure names it."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# The variables that hold torch's math libraries to fewer instructions than the CPU has: oneDNN (the
# convolutions), MKL (fp32 matrix products, which reads the processor itself, not /proc/cpuinfo) and
# ATen's own kernels. docs/development.md sets them to emulate a CPU without AVX-512.
ISA_LIMITS = ("ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS", "ATEN_CPU_CAPABILITY")


def isa_limits() -> str:
    """The instruction-set limits this process runs under (``ONEDNN_MAX_CPU_ISA=AVX2 ...``), "" where
    none is set: a speed measured under them is of the emulated CPU, not of this one."""
    return " ".join(f"{name}={os.environ[name]}" for name in ISA_LIMITS if os.environ.get(name))


def describe_cpu(env: dict) -> str:
    """The CPU of an ``environment()`` record, with the instruction-set limits it ran under."""
    limits = env.get("isa_limits")
    return f"{env.get('cpu')} under {limits}" if limits else str(env.get("cpu"))


def usable_cores() -> int:
    """The cores this process may run on: its CPU affinity (what taskset, a job scheduler's cpuset or
    a container's CPU set leaves it), where the platform tells it, else every core of the machine.
    Torch's threads already follow the affinity; worker pools sized by ``os.cpu_count()`` would not."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except (AttributeError, OSError):  # macOS, Windows: no affinity to read
        return os.cpu_count() or 1


def environment() -> dict:
    """Python, torch and torchvision versions, the platform, the CPU (with ``isa_limits`` where any is
    set) and, where torch is already loaded (training, evaluation), the GPU. Never imports torch itself."""
    torch = sys.modules.get("torch")
    gpu = torch.cuda.get_device_name(0) if torch is not None and torch.cuda.is_available() else None
    limits = isa_limits()
    return {
        "python": sys.version.split()[0], "torch": _version("torch"), "torchvision": _version("torchvision"),
        "platform": platform.platform(), "cpu": cpu_model(), "cpu_count": os.cpu_count(),
        "usable_cores": usable_cores(), "gpu": gpu,
        **({"isa_limits": limits} if limits else {}),
    }


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(["git", "-C", str(PROJECT_ROOT), *args], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


def study_version() -> dict:
    """The study's git commit, whether it had uncommitted changes (tracked files, and untracked ones
    that git does not ignore), and the lock's hash. Asked anew each time: a notebook kernel outlives
    commits. Outside a git checkout of the study, commit and dirty are unknown (None)."""
    top = _git("rev-parse", "--show-toplevel")
    inside = top is not None and Path(top).resolve() == PROJECT_ROOT.resolve()
    commit = _git("rev-parse", "HEAD") if inside else None
    status = _git("status", "--porcelain") if commit else None
    return {"commit": commit, "dirty": None if status is None else bool(status),
            "lock_sha256": sha256_file(LOCK_FILE) if LOCK_FILE.exists() else None}


def archive_provenance(cfg: Config) -> dict | None:
    """The dataset archive (or folder used in place: ``kind`` folder) this run's split was made from
    (name, source, size, SHA-256), as notebook 01 recorded it beside the split; None before notebook
    01 ran."""
    try:
        return json.loads(cfg.run.dataset_record.read_text())["archive"]
    except (OSError, json.JSONDecodeError, KeyError):
        return None


def weights_provenance(cfg: Config, model_name: str) -> dict | None:
    """The ImageNet weights file a model started from, with its SHA-256 as recorded when stage 1
    loaded it (None without pretrained weights, or before stage 1 ran)."""
    path = cfg.run.weights_record(model_name)
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def provenance(cfg: Config, model_name: str | None = None) -> dict:
    """Everything a reader needs to tell whether they have the same study, settings and data."""
    record = {**study_version(), "profile": cfg.profile, "overrides": list(cfg.overrides),
              "archive": archive_provenance(cfg)}
    if model_name is not None:
        record["weights"] = weights_provenance(cfg, model_name)
    return record


PROBE_ALTERNATIVES = {"precision": ("bf16", "fp32"), "memory_format": ("channels_last", "contiguous")}


def describe_runtime(record: dict) -> str:
    """A runtime as checkpoints and metrics.json record it (``train.hardware.Runtime.record``), in words."""
    layout = " + channels_last" if record["channels_last"] else ""
    layout += " + torch.compile" if record["compile"] == "on" else ""
    layout += " + augmentation on the device" if record["augment"] == "device" else ""
    chosen = describe_probe(record.get("probe") or {})
    return (f"{record['device_name']}, {record['precision']}{layout}{chosen}, {record['workers']} loader workers, "
            f"deterministic algorithms {record['deterministic']}")


def describe_probe(probe: dict) -> str:
    """What the runtime probe (``train.probe``) chose and measured, in words; empty where nothing was probed."""
    said = []
    for setting, found in probe.items():
        alternative, reference = PROBE_ALTERNATIVES[setting]
        if found["ratio"] is None:
            said.append(f"{found['chose']}, no native bf16")
        elif found["chose"] == alternative:
            said.append(f"{alternative} {found['ratio']:.2f}x {reference}")
        else:
            why = f" {found['why_not']}" if found.get("why_not") else ""  # records from before it: the ratio alone
            said.append(f"{reference}, as {alternative} measured {found['ratio']:.2f}x{why}")
    return f" (chosen by a probe of the training step: {'; '.join(said)})" if said else ""


def describe_commit(version: dict) -> str:
    if version.get("commit") is None:
        return "unknown (not a git checkout of the study)"
    return version["commit"][:12] + (" with uncommitted changes" if version["dirty"] else "")


def provenance_line(cfg: Config) -> str:
    """The provenance in one line, for the banner on every report page."""
    version = study_version()
    commit = describe_commit(version)
    lock = (version["lock_sha256"] or "none")[:12]
    overrides = " ".join(cfg.overrides) or "none"
    return (f"Study commit {commit}; lock {lock}; profile '{cfg.profile}', overrides: {overrides}; "
            f"{describe_data(archive_provenance(cfg))}.")


def describe_data(archive: dict | None) -> str:
    """The data a run used, in words: an archive by its SHA-256, a folder used in place by the
    SHA-256 of its images' list and content (``data.sources.folder_record``)."""
    if archive is None:
        return "dataset archive not recorded yet (notebook 01 records its SHA-256 once it has the data)"
    if archive.get("kind") == "folder":
        return (f"dataset folder {archive['source']} read in place ({archive['images']:,} images, "
                f"{archive['bytes']:,} bytes, content SHA-256 {archive['sha256']})")
    return f"dataset archive {archive['archive']} ({archive['bytes']:,} bytes, SHA-256 {archive['sha256']})"


def describe_weights(record: dict | None) -> str:
    """The pretrained weights a model started from, as ``weights.json`` records them, in words (the
    model card and the index's provenance say the same)."""
    if record is None:
        return "none (random initialisation)"
    source = f"{record['source']} ({record['id']}): " if record.get("source") else ""
    return f"{source}{record['file']} (SHA-256 {record['sha256']}; the setting train.weights: {record['weights']})"
