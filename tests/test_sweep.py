"""Sweeps end to end on Ray: a local instance, a real two-node cluster on loopback, a failing
member, a rerun that trains nothing; and the sweep file's validation."""

import json
import os
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml

from kvasir_utils import sweep
from kvasir_utils.config import ConfigError
from tests.conftest import TINY, tmp_overrides

FAST = [*TINY, "train.stage1.epochs=1", "train.stage2.epochs=1", "eval.bootstrap_samples=20",
        "eval.figure1_correct=2", "eval.figure1_incorrect=2"]


def _sweep_file(folder: Path, name: str, **spec) -> Path:
    path = folder / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"base": "smoke", "overrides": FAST, "resources": {"cpus": 1}, **spec}))
    return path


def _run(path: Path, root: Path, env: dict | None = None) -> subprocess.CompletedProcess:
    sets = [a for o in tmp_overrides(root) for a in ("--set", o)]
    return subprocess.run([sys.executable, "-m", "kvasir_utils", "sweep", str(path), *sets], capture_output=True,
                          text=True, env={**os.environ, **(env or {})}, timeout=900)


def _records(root: Path, name: str) -> dict:
    folder = root / "runs" / "sweeps" / name / "members"
    return {p.parent.name: json.loads(p.read_text()) for p in folder.glob("*/member.json")}


@pytest.mark.slow
def test_a_local_sweep_runs_every_member_and_a_failing_one_fails_alone(tmp_path):
    # Two seeds x two readings of train.weights; the ImageNet weights are not on this machine and
    # the smoke profile is offline, so those members fail at run time (notebook 02), are retried
    # once, and the others finish and are summarised.
    path = _sweep_file(tmp_path, "local", seeds=[1, 2], models=["resnet18"], max_retries=1,
                       grid={"train.weights": [None, "IMAGENET1K_V1"]})
    result = _run(path, tmp_path, {"TORCH_HOME": str(tmp_path / "no-weights")})
    assert result.returncode == 1, result.stderr[-3000:]
    failed = ["resnet18-seed1-train.weights=IMAGENET1K_V1", "resnet18-seed2-train.weights=IMAGENET1K_V1"]
    assert "2 of 4 member(s) failed" in result.stderr and all(name in result.stderr for name in failed)
    records = _records(tmp_path, "local")
    assert len(records) == 4
    for name, record in records.items():
        assert {"sweep", "member", "settings", "model", "seed", "status", "error", "node", "seconds"} <= set(record)
        assert record["node"]["id"] and record["node"]["hostname"] == socket.gethostname()
        if name in failed:
            assert record["status"] == "failed" and "resnet18-f37072fd.pth is not in" in record["error"]
            assert record["attempts"] == 2  # retried once, as max_retries says
        else:
            assert record["status"] == "finished" and record["error"] == "" and record["attempts"] == 1
            assert record["settings"] == {"train.weights": None} and record["seconds"] > 0
    reports = tmp_path / "reports" / "sweeps" / "local"
    summary = pd.read_csv(reports / "tables" / "summary.csv")
    assert list(summary.columns) == ["model", "reading", "metric", "mean", "sd", "ci_low", "ci_high", "n"]
    assert set(summary["reading"]) == {"train.weights=null"} and set(summary["n"]) == {2}
    assert set(summary["metric"]) == {"accuracy", "macro_f1", "macro_auc"}
    row = summary[summary["metric"] == "accuracy"].iloc[0]
    runs = pd.read_csv(reports / "tables" / "runs.csv")
    accuracies = runs.loc[runs["status"] == "finished", "accuracy"]
    assert row["mean"] == pytest.approx(accuracies.mean(), abs=1e-5) and row["ci_low"] <= row["mean"] <= row["ci_high"]
    index = (reports / "index.html").read_text()
    assert "2 of 4 runs finished" in index and index.count("mean nothing about Kvasir") == 1
    for name in records:
        member_report = f"members/{name}/smoke/index.html"
        assert (member_report in index) == (name not in failed)
        assert (reports / member_report).exists() == (name not in failed)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def two_node_cluster(tmp_path):
    """A real Ray cluster on this machine: a head and a second node, one CPU each."""
    ray = str(Path(sys.executable).with_name("ray"))
    env = {**os.environ, "RAY_AUTH_MODE": "disabled", "TORCH_HOME": str(tmp_path / "no-weights")}
    port = _free_port()
    common = ["--num-cpus=1", "--disable-usage-stats", "--node-ip-address=127.0.0.1"]
    try:
        subprocess.run([ray, "start", "--head", f"--port={port}", "--include-dashboard=false", *common], env=env,
                       check=True, capture_output=True, timeout=120)
        subprocess.run([ray, "start", f"--address=127.0.0.1:{port}", *common], env=env, check=True,
                       capture_output=True, timeout=120)
        yield {**env, "RAY_ADDRESS": f"127.0.0.1:{port}"}
    finally:
        subprocess.run([ray, "stop", "--force"], env=env, capture_output=True, timeout=120)


@pytest.mark.slow
def test_a_sweep_runs_on_a_two_node_cluster_and_a_rerun_trains_nothing(tmp_path, two_node_cluster):
    path = _sweep_file(tmp_path, "cluster", seeds=[1], models=["resnet18", "mobilenet_v3_small"], max_retries=0)
    result = _run(path, tmp_path, two_node_cluster)
    assert result.returncode == 0, result.stderr[-3000:]
    records = _records(tmp_path, "cluster")
    assert {r["status"] for r in records.values()} == {"finished"}
    assert len({r["node"]["id"] for r in records.values()}) == 2  # one member on each node
    paired = pd.read_csv(tmp_path / "reports" / "sweeps" / "cluster" / "tables" / "paired.csv")
    assert list(paired[["first", "second", "n"]].iloc[0]) == ["resnet18", "mobilenet_v3_small", 1]

    checkpoints = {p: p.stat().st_mtime_ns for p in (tmp_path / "runs").rglob("checkpoint.pt")}
    assert len(checkpoints) == 4
    again = _run(path, tmp_path, two_node_cluster)
    assert again.returncode == 0 and "2 member(s) finished earlier and were not run again" in again.stdout
    assert "nothing new since the last aggregation" in again.stdout
    assert {p: p.stat().st_mtime_ns for p in checkpoints} == checkpoints


def test_every_member_is_validated_before_anything_runs(tmp_path):
    path = _sweep_file(tmp_path, "bad", seeds=[1], models=["resnet50", "efficientnet_b0"],
                       grid={"train.stage2.trainable": ["block:layer4.2"]})
    with pytest.raises(ConfigError, match=r"member efficientnet_b0-seed1-train.stage2.trainable=block:layer4.2: "
                                          r"the profile does not fit(.|\n)*no module 'layer4.2'"):
        sweep.load_sweep(str(path), tmp_overrides(tmp_path))
    path = _sweep_file(tmp_path, "typo", seeds=[1], grid={"train.stage2.trainabel": ["all"]})
    with pytest.raises(ConfigError, match="unknown setting 'train.stage2.trainabel'"):
        sweep.load_sweep(str(path), tmp_overrides(tmp_path))
    path = _sweep_file(tmp_path, "resources", seeds=[1], resources={"cpus": 0})
    with pytest.raises(ConfigError, match="'resources.cpus' is not valid: Input should be greater than 0"):
        sweep.load_sweep(str(path), tmp_overrides(tmp_path))
    assert not (tmp_path / "runs").exists() and not (tmp_path / "data").exists()


def test_members_are_named_by_their_settings_and_get_their_own_folders(tmp_path):
    path = _sweep_file(tmp_path, "names", seeds=[3], models=["resnet50"], seed_setting="both",
                       grid={"train.stage2.trainable": ["block:layer4.2", "all"]})
    spec = sweep.load_sweep(str(path), tmp_overrides(tmp_path))
    names = [m.name for m in spec.members]
    assert names == ["resnet50-seed3-train.stage2.trainable=block:layer4.2",
                     "resnet50-seed3-train.stage2.trainable=all"]
    member = spec.members[0]
    assert member.cfg.train.seed == member.cfg.split.seed == 3 and member.cfg.train.models == ["resnet50"]
    assert member.cfg.run_dir == tmp_path / "runs" / "sweeps" / "names" / "members" / names[0] / "smoke"
    assert member.cfg.paths.data == str(tmp_path / "data")  # the dataset is shared by every member
    assert spec.default_settings == {"train.stage2.trainable": "all"}  # the smoke profile's own reading


def test_shipped_sweeps_are_valid():
    for name, count in (("seeds", 10), ("readings", 18), ("smoke-seeds", 4)):
        assert len(sweep.load_sweep(name).members) == count
    assert shutil.which("make")
