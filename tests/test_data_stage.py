"""The data stage as runs meet it: shared preparation under a lock, split protection, run locks,
file modes, relative profile paths, and validation before anything runs."""

import json
import multiprocessing
import os
import stat
import subprocess
import sys

import pandas as pd
import pytest

from kvasir_utils import artefacts, config, files, profiles
from kvasir_utils.data import duplicates, prepare, synthetic
from kvasir_utils.errors import KvasirError
from kvasir_utils.train import hardware, stages
from tests.helpers import TINY, prepare_tiny_dataset, tmp_overrides


def _prepare(root, queue):
    import contextlib
    import io as stdio

    out = stdio.StringIO()
    with contextlib.redirect_stdout(out):
        cfg = profiles.load_profile("smoke", tmp_overrides(root) + TINY + ["cache.workers=1"])
        prepared = prepare.prepare_dataset(cfg, progress=False)
    queue.put((os.getpid(), prepared.newly_cached, len(prepared.manifest), out.getvalue()))


@pytest.mark.slow  # whole processes or several trainings: make test runs it, make test-fast not
def test_two_runs_preparing_the_same_dataset_at_once_prepare_it_once(tmp_path):
    context = multiprocessing.get_context("spawn")
    queue = context.Queue()
    workers = [context.Process(target=_prepare, args=(tmp_path, queue)) for _ in range(2)]
    for worker in workers:
        worker.start()
    results = sorted([queue.get(timeout=300) for _ in workers], key=lambda r: r[1], reverse=True)
    for worker in workers:
        worker.join(timeout=60)
        assert worker.exitcode == 0
    (first_pid, first_built, images, _), (_, second_built, second_images, second_out) = results
    assert first_built == images == second_images == 8 * 16  # one decoded every image ...
    assert second_built == 0  # ... the other decoded none
    assert f"waiting for process {first_pid}" in second_out  # it waited for the first, and said so
    cfg = profiles.load_profile("smoke", tmp_overrides(tmp_path) + TINY)
    cached = sorted(prepare.cache_dir(cfg).rglob("*.jpg"))
    assert len(cached) == images and not list(cfg.dataset_dir.rglob("*.tmp*"))


def test_a_run_folder_in_use_is_refused_with_the_remedy(tmp_path):
    refused = pytest.raises(KvasirError, match=r"in use by process \d+ on .* \(a notebook\)(.|\n)*paths.runs")
    with (files.folder_lock(tmp_path / "run", "a notebook", wait=False), refused,
          files.folder_lock(tmp_path / "run", "another notebook", wait=False)):
        pass
    with files.folder_lock(tmp_path / "run", "a later notebook", wait=False):
        pass  # free again once the first finished


def test_files_written_atomically_get_the_umask_mode_not_0600(tmp_path):
    old = os.umask(0o022)
    try:
        text = files.write_text_atomic(tmp_path / "report.html", "x")
        frame = files.write_csv_atomic(pd.DataFrame({"a": [1]}), tmp_path / "table.csv")
        os.umask(0o077)
        private = files.write_text_atomic(tmp_path / "private.txt", "x")
    finally:
        os.umask(old)
    assert stat.S_IMODE(text.stat().st_mode) == stat.S_IMODE(frame.stat().st_mode) == 0o644
    assert stat.S_IMODE(private.stat().st_mode) == 0o600


@pytest.mark.slow  # whole processes or several trainings: make test runs it, make test-fast not
def test_a_new_split_is_refused_where_models_were_trained_on_the_old_one(tmp_path):
    cfg = prepare_tiny_dataset(tmp_path, ["train.models=[resnet18]", "train.stage1.epochs=1"])
    before = cfg.run.split.read_bytes()
    other = profiles.load_profile("smoke", tmp_overrides(tmp_path) + TINY + ["split.seed=7"])
    split = pd.read_csv(cfg.run.split)
    reshuffled = split.assign(split=split["split"].sample(frac=1, random_state=1).to_numpy())
    prepare.write_run_split(other, reshuffled)  # nothing trained yet: the split may change
    prepare.write_run_split(cfg, split)
    runtime = hardware.resolve_runtime(cfg.runtime)
    model = stages.model_for_stage(cfg, "resnet18", "stage1")
    stages.fit_stage(model, cfg, "resnet18", "stage1", stages.make_loaders(cfg, runtime), runtime)
    prepare.write_run_split(cfg, split)  # the same split again is fine
    with pytest.raises(KvasirError, match=r"holds models trained on the split .* moved between train and val"
                                          r"(.|\n)*make clean PROFILE=smoke(.|\n)*paths.runs"):
        prepare.write_run_split(other, reshuffled)
    assert cfg.run.split.read_bytes() == before


def _cli(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "kvasir_utils", *args], capture_output=True, text=True, cwd=cwd)


@pytest.mark.slow  # runs notebook 01 in a kernel
def test_a_relative_profile_path_works_and_a_grouped_split_keeps_planted_duplicates_together(tmp_path):

    (tmp_path / "my").mkdir()
    (tmp_path / "my" / "profile.yaml").write_text("base: smoke\nsplit:\n  group_near_duplicates: true\n")
    overrides = [a for o in tmp_overrides(tmp_path) + TINY for a in ("--set", o)]
    result = _cli("run-notebook", "01_download_and_split", "--profile", "my/profile.yaml", *overrides, cwd=tmp_path)
    assert result.returncode == 0, result.stderr[-1500:]
    split = pd.read_csv(tmp_path / "runs" / "profile" / "split.csv").set_index("path")["split"]
    traps = synthetic.planted_traps(profiles.load_profile("smoke").data.classes, 16, seed=0)
    copies = traps.dropna(subset=["duplicate_of"])
    assert len(copies) == 8 * synthetic.NEAR_DUPLICATES_PER_CLASS
    # The grouping holds every pair the detectors found (written beside the split) together, and the
    # planted copies among them; with random weights (the smoke profile) only the hash takes part.
    run = tmp_path / "runs" / "profile"
    found = duplicates.NearDuplicates.read(run / artefacts.NEAR_DUPLICATES, run / artefacts.NEAR_DUPLICATE_DETECTORS)
    assert len(found.pairs) and len(found.across(split.rename("split").reset_index())) == 0
    pairs = {frozenset(p) for p in zip(found.pairs["path_a"], found.pairs["path_b"])}
    detected = [(c, s) for c, s in zip(copies["path"], copies["duplicate_of"]) if frozenset((c, s)) in pairs]
    assert len(detected) >= len(copies) // 2
    assert all(split[copy] == split[source] for copy, source in detected)
    # the split records the detectors that made it: the hash, and the features where their calibration let them in
    record = json.loads((run / artefacts.DATASET).read_text())["grouped_by_near_duplicates"]
    assert record["phash"] == {"threshold": 8, "unit": "bits of 64, at most"}
    assert ("features" in record) == found.detectors["features"]["used"]


@pytest.mark.slow  # whole processes or several trainings: make test runs it, make test-fast not
def test_a_reading_one_model_lacks_stops_make_before_anything_runs(tmp_path):
    result = _cli("makevars", "--profile", "smoke", "--set", "train.stage2.trainable=block:layer4.2",
                  *[a for o in tmp_overrides(tmp_path) for a in ("--set", o)])
    assert result.returncode == 1
    assert "train.stage2.trainable for efficientnet_b0" in result.stderr and "no module 'layer4.2'" in result.stderr
    assert "resnet50" not in result.stderr  # ResNet50 has layer4.2
    assert not (tmp_path / "data").exists() and not (tmp_path / "runs").exists()


@pytest.mark.parametrize(("override", "message"), [
    ("train.stage1.lr=-1", "'train.stage1.lr' = -1 is not valid: Input should be greater than 0"),
    ("train.stage1.epochs=0", "'train.stage1.epochs' is not valid: expected at least 1"),
    ("train.stage2.epochs=-1", "'train.stage2.epochs' = -1 is not valid"),
    ("transforms.crop_scale=[0.9,0.1]", "transforms.crop_scale"),
])
def test_ranges_are_checked_when_the_profile_loads(override, message):
    with pytest.raises(config.ConfigError, match=message.replace("[", r"\[")):
        profiles.load_profile("paper", [override])
