"""Sweeps end to end on a real two-node Ray cluster on loopback (a failing member, a rerun that
trains nothing again), the sweep file's validation, and the aggregation by hand."""

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from kvasir_utils.analysis import sweeps
from kvasir_utils.config import ConfigError
from kvasir_utils.report import comparison_readings
from kvasir_utils.run import notebooks, sweep_aggregate, sweep_execute, sweep_spec
from tests.helpers import TINY, metrics_record, tmp_overrides

# The smallest run that still makes every file a sweep reads: the tests here check where runs ran and
# what was recorded, retried and aggregated, never what a model learned. 8 images a class still give
# every class validation images (2; a member's metrics need each class scored) and a split that keeps
# the planted near-duplicates together; one epoch a stage still writes both stages' checkpoints.
FAST = [*TINY, "data.synthetic.images_per_class=8", "data.expected_per_class=8", "train.stage1.epochs=1",
        "train.stage2.epochs=1", "eval.bootstrap_samples=20", "eval.figure1_correct=2", "eval.figure1_incorrect=2"]


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


@pytest.fixture
def two_node_cluster(tmp_path, monkeypatch):
    """A real Ray cluster on this machine: a head and a second node (two raylets), one CPU each,
    started and stopped by Ray's own test helper (only its processes are stopped)."""
    from ray.cluster_utils import Cluster

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "no-weights"))  # the nodes' workers inherit it
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False})
    try:
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        yield {"RAY_ADDRESS": cluster.address}
    finally:
        cluster.shutdown()


@pytest.mark.slow
@pytest.mark.xdist_group("cluster")  # one of the longest: handed out first (conftest.LONGEST_FIRST)
def test_a_sweep_on_a_two_node_cluster_where_one_reading_fails_and_a_rerun_trains_nothing_again(
        tmp_path, two_node_cluster):
    # Two readings of train.weights on a real cluster of two raylets, one CPU each. The ImageNet weights
    # are not on this machine and the smoke profile is offline, so that member fails at run time (in
    # make's preflight, before any notebook starts), is retried once, and the other finishes and is
    # summarised. The second grid key's value has a colon, which make cannot take in a file name: the
    # members' folders replace it.
    # (Statistics over several runs are checked by hand below, on written files.)
    path = _sweep_file(tmp_path, "cluster", seeds=[1], models=["resnet18"], max_retries=1,
                       grid={"train.weights": [None, "IMAGENET1K_V1"], "train.stage2.trainable": ["last_tensors:4"]})
    result = _run(path, tmp_path, two_node_cluster)
    assert result.returncode == 1, result.stderr[-3000:]
    names = {weights: f"resnet18-seed1-train.stage2.trainable=last_tensors:4-train.weights={weights}"
             for weights in ("null", "IMAGENET1K_V1")}  # the grid's keys in the file's (sorted) order
    failed = [names["IMAGENET1K_V1"]]
    assert "1 of 2 run(s) failed" in result.stderr and failed[0] in result.stderr
    records = _records(tmp_path, "cluster")
    assert set(records) == {name.replace(":", "_") for name in names.values()}  # folders
    assert {r["member"] for r in records.values()} == set(names.values())
    assert len({r["node"]["id"] for r in records.values()}) == 2  # the members ran on both nodes
    for record in records.values():
        assert {"sweep", "member", "settings", "model", "seed", "status", "error", "node", "seconds"} <= set(record)
        assert record["node"]["hostname"] == socket.gethostname()
        if record["member"] in failed:
            assert record["status"] == "failed" and "resnet18-f37072fd.pth is not in" in record["error"]
            # checked before anything runs: notebook 01's near-duplicate features detector would need them
            assert record["failed_step"] == "makevars" and record["exit_code"] == 2
            assert record["attempts"] == 2  # retried once, as max_retries says
        else:
            assert record["status"] == "finished" and record["error"] == "" and record["attempts"] == 1
            assert record["settings"] == {"train.weights": None, "train.stage2.trainable": "last_tensors:4"}
    reports = tmp_path / "reports" / "sweeps" / "cluster"
    summary = pd.read_csv(reports / "tables" / "summary.csv")
    assert list(summary.columns) == ["model", "reading", "metric", "mean", "sd", "ci_low", "ci_high", "n"]
    assert set(summary["n"]) == {1} and set(summary["metric"]) == {"accuracy", "macro_f1", "macro_auc"}
    row = summary[summary["metric"] == "accuracy"].iloc[0]
    runs = pd.read_csv(reports / "tables" / "runs.csv")
    assert row["mean"] == pytest.approx(runs.loc[runs["status"] == "finished", "accuracy"].mean(), abs=1e-5)
    index = (reports / "index.html").read_text()
    assert "1 of 2 runs finished" in index and index.count("mean nothing about Kvasir") == 1
    assert "seeds 1 (varying" in index  # values as a profile writes them, no Python lists
    assert "readings: train.stage2.trainable = last_tensors:4; train.weights = null or IMAGENET1K_V1." in index
    for record in records.values():
        member_report = f"members/{record['member'].replace(':', '_')}/smoke/index.html"
        assert (member_report in index) == (record["status"] == "finished")

    # again, without retries: the finished runs are not run again, the failing ones fail again
    checkpoints = {p: p.stat().st_mtime_ns for p in (tmp_path / "runs").rglob("checkpoint.pt")}
    assert len(checkpoints) == 2  # the two stages of the finished run
    path.write_text(path.read_text().replace("max_retries: 1", "max_retries: 0"))
    again = _run(path, tmp_path, two_node_cluster)
    assert again.returncode == 1 and "1 run(s) finished earlier and were not run again" in again.stdout
    assert {p: p.stat().st_mtime_ns for p in checkpoints} == checkpoints
    assert all(r["attempts"] == 1 for r in _records(tmp_path, "cluster").values() if r["member"] in failed)


def test_a_member_never_installs_even_where_the_environment_looks_out_of_date(tmp_path):
    # members installing at once broke the environment: a dry run (make -n) of a member's command,
    # with pyproject.toml taken as newer than the setup stamp (-W), plans the notebooks and no install
    failure_file = tmp_path / "failure.json"
    command = sweep_execute.member_command("smoke", tmp_overrides(tmp_path), failure_file)
    dry = subprocess.run([command[0], "-n", "-W", "pyproject.toml", *command[1:]], capture_output=True, text=True)
    assert dry.returncode == 0 and "run-notebook 01_download_and_split" in dry.stdout, dry.stderr
    # the failing step describes itself where the runner asked, passed as an argument, not through the environment
    first_step = dry.stdout.split("run-notebook 01_download_and_split")[1].split("\n")[0]
    assert f"--failure-file '{failure_file}'" in first_step
    assert "pip install" not in dry.stdout
    i = command.index("--old-file")
    without = subprocess.run([command[0], "-n", "-W", "pyproject.toml", *command[1:i], *command[i + 2:]],
                             capture_output=True, text=True)
    assert "pip install" in without.stdout  # what the member's make would have done without --old-file


def test_aggregation_reruns_only_when_a_member_record_is_newer_than_its_last_run(tmp_path):
    path = _sweep_file(tmp_path, "current", seeds=[1, 2], models=["resnet18"])
    spec = sweep_spec.load_sweep(str(path), tmp_overrides(tmp_path))
    executed = spec.run_dir / "notebooks" / "06_sweep.ipynb"
    assert not sweep_aggregate.aggregation_is_current(spec, executed)  # never aggregated
    for member in spec.members:
        sweep_execute.write_record(spec, member, "finished", None, None, 1.0, 1)
    executed.parent.mkdir(parents=True)
    executed.write_text("{}")
    later = executed.stat().st_mtime_ns + 10**9
    os.utime(executed, ns=(later, later))
    assert sweep_aggregate.aggregation_is_current(spec, executed)
    newer = later + 10**9
    os.utime(spec.members[1].record_path, ns=(newer, newer))  # a member finished since
    assert not sweep_aggregate.aggregation_is_current(spec, executed)


def test_every_member_is_validated_before_anything_runs(tmp_path):
    path = _sweep_file(tmp_path, "bad", seeds=[1], models=["resnet50", "efficientnet_b0"],
                       grid={"train.stage2.trainable": ["block:layer4.2"]})
    with pytest.raises(ConfigError, match=r"member efficientnet_b0-seed1-train.stage2.trainable=block:layer4.2: "
                                          r"the profile does not fit(.|\n)*no module 'layer4.2'"):
        sweep_spec.load_sweep(str(path), tmp_overrides(tmp_path))
    path = _sweep_file(tmp_path, "typo", seeds=[1], grid={"train.stage2.trainabel": ["all"]})
    with pytest.raises(ConfigError, match="unknown setting 'train.stage2.trainabel'"):
        sweep_spec.load_sweep(str(path), tmp_overrides(tmp_path))
    path = _sweep_file(tmp_path, "resources", seeds=[1], resources={"cpus": 0})
    with pytest.raises(ConfigError, match="'resources.cpus' is not valid: Input should be greater than 0"):
        sweep_spec.load_sweep(str(path), tmp_overrides(tmp_path))
    assert not (tmp_path / "runs").exists() and not (tmp_path / "data").exists()


def test_members_are_named_by_their_settings_and_get_their_own_folders(tmp_path):
    path = _sweep_file(tmp_path, "names", seeds=[3], models=["resnet50"], seed_setting="both",
                       grid={"train.stage2.trainable": ["block:layer4.2", "all"]})
    spec = sweep_spec.load_sweep(str(path), tmp_overrides(tmp_path))
    names = [m.name for m in spec.members]
    assert names == ["resnet50-seed3-train.stage2.trainable=block:layer4.2",
                     "resnet50-seed3-train.stage2.trainable=all"]
    member = spec.members[0]
    assert member.cfg.train.seed == member.cfg.split.seed == 3 and member.cfg.train.models == ["resnet50"]
    folder = "resnet50-seed3-train.stage2.trainable=block_layer4.2"  # make cannot take the colon
    assert member.cfg.run_dir == tmp_path / "runs" / "sweeps" / "names" / "members" / folder / "smoke"
    assert member.cfg.paths.data == str(tmp_path / "data")  # the dataset is shared by every member
    assert spec.default_settings == {"train.stage2.trainable": "all"}  # the smoke profile's own reading


def test_shipped_sweeps_are_valid():
    for name, count in (("seeds", 10), ("readings", 18), ("smoke-seeds", 4)):
        spec = sweep_spec.load_sweep(name)
        assert len(spec.members) == count
        for member in spec.members:
            notebooks.check_make_path(member.cfg.run_dir)  # e.g. block:layer4.2 is not in a folder name


@pytest.mark.parametrize(("grid", "overrides", "message"), [
    ({"train.seed": [7]}, [], "grid key 'train.seed' is set by the sweep itself"),
    ({"train.models": [["resnet18"]]}, [], "grid key 'train.models' is set by the sweep itself"),
    ({"paths.runs": ["/x"]}, [], "grid key 'paths.runs' is set by the sweep itself"),
    ({"train.stage2.lr": []}, [], "grid key 'train.stage2.lr' has no values"),
    ({}, ["train.seed=3"], "override 'train.seed=3' is replaced by the sweep for every run"),
])
def test_settings_that_would_mislabel_runs_are_refused(tmp_path, grid, overrides, message):
    path = _sweep_file(tmp_path, "mislabel", seeds=[1, 2], models=["resnet18"], grid=grid)
    with pytest.raises(ConfigError, match=re.escape(message)):
        sweep_spec.load_sweep(str(path), tmp_overrides(tmp_path) + overrides)


def _finish(member, accuracy: float, correct: list[bool]) -> None:
    """What a finished run leaves: its record and evaluation files (written by hand here)."""
    eval_dir = member.cfg.run.eval_dir(member.model)
    eval_dir.mkdir(parents=True)
    member.cfg.run.metrics(member.model).write_text(json.dumps(metrics_record(
        accuracy=accuracy, macro_f1=accuracy - 0.01, macro_auc=0.9)))
    true = [i % 8 for i in range(len(correct))]
    pred = [t if ok else (t + 1) % 8 for t, ok in zip(true, correct)]
    pd.DataFrame({"path": [f"img{i}.jpg" for i in range(len(correct))], "label": "x", "true": true,
                  "pred": pred}).to_csv(member.cfg.run.predictions(member.model), index=False)
    sweep_execute.write_record(_SWEEP[0], member, "finished", "", {"id": "n", "hostname": "h"}, 1.0, 1)


_SWEEP = []


def test_aggregation_by_hand_paired_by_seed_against_the_default_reading(tmp_path):
    path = _sweep_file(tmp_path, "hand", seeds=[1, 2, 3], models=["resnet18", "mobilenet_v3_small"],
                       grid={"train.stage2.lr": ["1e-3", 1.0e-2]})  # "1e-3" is the smoke profile's own value
    spec = sweep_spec.load_sweep(str(path), tmp_overrides(tmp_path))
    _SWEEP[:] = [spec]
    accuracy = {("resnet18", 1e-3): [0.80, 0.82, 0.84], ("resnet18", 1e-2): [0.70, 0.75, 0.74],
                ("mobilenet_v3_small", 1e-3): [0.78, 0.80, 0.80]}  # mobilenet at 1e-2 never finished
    for member in spec.members:
        key = (member.model, member.cfg.train.stage2.lr)
        if key in accuracy:
            value = accuracy[key][member.seed - 1]
            _finish(member, value, [i < round(value * 50) for i in range(50)])
    results = sweep_aggregate.member_results(spec)
    assert results["default_reading"].tolist() == [m.cfg.train.stage2.lr == 1e-3 for m in spec.members]
    summary = sweeps.means_table(results).set_index(["model", "reading", "metric"])
    row = summary.loc[("resnet18", "train.stage2.lr=1e-3", "accuracy")]
    assert (row["mean"], row["n"]) == (pytest.approx(0.82), 3) and row["sd"] == pytest.approx(0.02)
    assert ("mobilenet_v3_small", "train.stage2.lr=0.01", "accuracy") not in summary.index
    paired = sweeps.paired_table(results).set_index("reading")
    assert list(paired.index) == ["train.stage2.lr=1e-3"]  # the other reading has no pair of runs
    first = paired.loc["train.stage2.lr=1e-3"]
    assert first["mean_difference"] == pytest.approx((0.02 + 0.02 + 0.04) / 3) and first["n"] == 3
    assert first["sign_test_p"] == pytest.approx(0.25) and first["seeds"] == "1 2 3"
    assert len(first["mcnemar_p_per_seed"].split()) == 3
    ablation = sweeps.ablation_table(results).set_index(["model", "reading"])
    lower = ablation.loc[("resnet18", "train.stage2.lr=0.01")]
    assert lower["difference_to_default"] == pytest.approx(-(0.10 + 0.07 + 0.10) / 3) and lower["paired_n"] == 3
    assert lower["ci_low"] < lower["difference_to_default"] < lower["ci_high"] < 0
    assert np.isnan(ablation.loc[("resnet18", "train.stage2.lr=1e-3"), "difference_to_default"])
    # notebook 06's readings of the same tables name the same facts
    top = comparison_readings.sweep_reading(summary.reset_index(), 0.95)[0]
    assert top.startswith("Highest mean accuracy: ResNet18 (train.stage2.lr=1e-3), 82.0% over 3 runs (95% interval [")
    assert comparison_readings.paired_reading(sweeps.paired_table(results), 0.95)[0].startswith(
        "ResNet18 minus MobileNetV3-small: +2.7 points over 3 seeds, 95% interval [")
    assert comparison_readings.ablation_reading(sweeps.ablation_table(results), 0.95) == (
        "1 of 1 readings move accuracy beyond their 95% interval: ResNet18 with train.stage2.lr=0.01, "
        "\u22129.0 points.")
    assert comparison_readings.sweep_conclusions(results).startswith("9 of 12 runs finished; not finished: ")


def test_a_finished_run_counts_as_not_done_once_its_resolved_settings_change(tmp_path):
    profile = tmp_path / "mine.yaml"
    profile.write_text("base: smoke\ntrain:\n  stage1:\n    epochs: 1\n")
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"base": str(profile), "seeds": [1], "models": ["resnet18"]}))
    spec = sweep_spec.load_sweep(str(path), tmp_overrides(tmp_path))
    _SWEEP[:] = [spec]
    _finish(spec.members[0], 0.5, [True, False])
    assert sweep_execute.is_finished(spec.members[0])
    profile.write_text("base: smoke\ntrain:\n  stage1:\n    epochs: 3\n")  # the same overrides, other settings
    assert not sweep_execute.is_finished(sweep_spec.load_sweep(str(path), tmp_overrides(tmp_path)).members[0])


def test_a_finished_run_counts_as_not_done_once_its_local_archive_is_replaced_at_the_same_path(tmp_path):
    archive = tmp_path / "mine.zip"
    archive.write_bytes(b"first archive")
    path = tmp_path / "s.yaml"
    path.write_text(yaml.safe_dump({"base": "smoke", "seeds": [1], "models": ["resnet18"],
                                    "overrides": ["data.synthetic=null", f"data.url={archive}"]}))
    spec = sweep_spec.load_sweep(str(path), tmp_overrides(tmp_path))
    _SWEEP[:] = [spec]
    _finish(spec.members[0], 0.5, [True, False])
    assert sweep_execute.is_finished(spec.members[0])
    archive.write_bytes(b"other archive")  # the same settings and size, another file
    assert not sweep_execute.is_finished(spec.members[0])
    archive.unlink()  # gone: the copy under paths.data is what its runs read, unchanged
    assert sweep_execute.is_finished(spec.members[0])
