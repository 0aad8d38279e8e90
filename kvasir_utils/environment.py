"""Where a result came from: the study's commit, the locked environment, the data and weights
it used, versions and hardware; written into every metrics.json and onto every report page."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
from pathlib import Path

from kvasir_utils.config import PROJECT_ROOT, Config
from kvasir_utils.io import sha256_file

LOCK_FILE = PROJECT_ROOT / "requirements.lock"


def environment() -> dict:
    """Python, torch and torchvision versions, the platform, CPU and GPU."""
    import torch
    import torchvision

    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return {
        "python": sys.version.split()[0], "torch": torch.__version__, "torchvision": torchvision.__version__,
        "platform": platform.platform(), "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(), "gpu": gpu,
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
    """The dataset archive's name, size and SHA-256 as recorded when it was downloaded or first used."""
    from kvasir_utils.data import archive_path
    from kvasir_utils.download import read_archive_record

    record = read_archive_record(archive_path(cfg))
    return None if record is None else {k: record[k] for k in ("archive", "source", "bytes", "sha256")}


def weights_provenance(cfg: Config, model_name: str) -> dict | None:
    """The ImageNet weights file a model started from, with its SHA-256 as recorded when stage 1
    loaded it (None without pretrained weights, or before stage 1 ran)."""
    path = cfg.stage_dir(model_name, "stage1") / "weights.json"
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
    archive = archive_provenance(cfg)
    data = f"{archive['archive']} ({archive['bytes']:,} bytes, SHA-256 {archive['sha256']})" if archive else "not yet"
    return (f"Study commit {commit}; lock {lock}; profile '{cfg.profile}', overrides: {overrides}; "
            f"dataset archive {data}.")
