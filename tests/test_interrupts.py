"""A run stops when asked and loses nothing: Ctrl-C at each step of `make evaluate`, a killed kernel,
a full disk. Each is what a user meets: the command in its own process group, the signal a terminal
sends (SIGINT to the group, nothing after it), then the same command again.

One small study serves every test: 8 classes of PNG frames (PNG has no reduced-scale decoding, so
building the cache takes seconds, long enough to interrupt), MobileNetV3-small at 32 px in fp32
(deterministic on a CPU, so a resumed run can be compared with an uninterrupted one bit for bit).
The tests of this module run in the order of the pipeline and share the interrupted run's folders.
"""

from __future__ import annotations

import os
import signal
import time
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from PIL import Image

from kvasir_utils import artefacts, config, profiles
from kvasir_utils.analysis import labels
from kvasir_utils.data import cache, prepare
from kvasir_utils.train import evaluation, hardware, stages
from tests.processes import Run, wait_until_gone

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("interrupts")]
MODEL = "mobilenet_v3_small"
PER_CLASS = 24
STOP_SECONDS = 20  # the bound on 2 cores
VOLATILE = ["seconds", "images_per_s", "val_images_per_s"]  # wall-clock columns of history.csv


def _png_archive(path: Path) -> Path:
    """A zip in Kvasir's layout whose frames are PNG: each decodes in full (~30 ms), unlike a JPEG."""
    gradient = np.zeros((1200, 1600, 3), np.uint8)
    gradient[..., 0] = np.linspace(0, 255, 1600)[None, :]
    gradient[..., 1] = np.linspace(0, 255, 1200)[:, None]
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as archive:
        for k, label in enumerate(labels.CLASSES):
            frame = gradient.copy()
            frame[..., 2] = 30 * k  # a class cue
            encoded = path.with_suffix(".png")
            Image.fromarray(frame).save(encoded)
            for i in range(PER_CLASS):
                archive.write(encoded, f"png-study/{label}/{i:03d}.png")
    return path


@pytest.fixture(scope="session")
def study(tmp_path_factory):
    """The profile; every run of this module shares one data folder (the first test interrupts its making)."""
    root = tmp_path_factory.mktemp("stops")
    profile = root / "png-study.yaml"
    profile.write_text(yaml.safe_dump({
        "base": "smoke",
        "data": {"name": "png-study", "url": str(_png_archive(root / "png-study.zip")), "synthetic": None,
                 "expected_per_class": PER_CLASS},
        "cache": {"short_side": 40, "workers": 1},
        "transforms": {"image_size": 32},
        "train": {"models": [MODEL], "batch_size": 16, "stage1": {"epochs": 3}, "stage2": {"epochs": 2}},
        "eval": {"bootstrap_samples": 20, "figure1_correct": 2, "figure1_incorrect": 2},
        "runtime": {"precision": "fp32", "memory_format": "contiguous"},
    }))
    return {"root": root, "profile": profile}


def _config(study, run: str, extra: list[str] = ()) -> config.Config:
    return profiles.load_profile(str(study["profile"]), [*_paths(study["root"], run), *extra])


@pytest.fixture(scope="session")
def reference(study):
    """An uninterrupted run to compare with: the calls the notebooks make, in this process."""

    cfg = _config(study, "reference")
    prepare.prepare_split(cfg, prepare.prepare_dataset(cfg, progress=False))
    for stage in artefacts.STAGES:
        stages.start_stage(cfg, MODEL, stage).fit()
    evaluation.evaluate_final_model(cfg, MODEL, hardware.resolve_runtime(cfg.runtime))
    return cfg


def _paths(root: Path, run: str) -> list[str]:
    return [f"paths.data={root / 'data'}", f"paths.runs={root / run / 'runs'}",
            f"paths.reports={root / run / 'reports'}"]


def _make(study, run: str, target: str = "evaluate") -> Run:
    settings = " ".join(_paths(study["root"], run))
    return Run(["make", "--no-print-directory", target, f"PROFILE={study['profile']}", f"SET={settings}"],
               study["root"] / run / f"make-{time.monotonic_ns()}.log")


def _stopped_by_ctrl_c(run: Run, where: str) -> None:
    """The run ended promptly on one SIGINT, said what stopped and how to go on, and left no process."""
    seconds = run.ctrl_c()
    assert seconds < STOP_SECONDS, f"took {seconds:.1f} s to stop:\n{run.output[-2000:]}"
    assert run.process.returncode in (130, -signal.SIGINT), run.output[-2000:]
    line = run.last_line()
    assert line.startswith(f"interrupted: {where}") and "`make evaluate" in line and "again goes on" in line, line
    assert wait_until_gone(run) == []


def _temp_files(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*") if ".tmp" in p.name or p.name.endswith(".part")]


@pytest.fixture(scope="session")
def interrupted(study):
    """The run that the next tests interrupt, each at its step, in the order of the pipeline."""
    return {"cfg": _config(study, "interrupted"),
            "make": lambda target="evaluate": _make(study, "interrupted", target)}


def _wait_until(run: Run, done, what: str, timeout: float = 300) -> None:
    """Wait until ``done()`` holds, polling every 10 ms; fail if the run ends or the time runs out first."""
    deadline = time.monotonic() + timeout
    while not done():
        assert run.process.poll() is None, f"ended (exit {run.process.returncode}) before {what}"
        assert time.monotonic() < deadline, f"no {what} within {timeout} s"
        time.sleep(0.01)


def _wait_until_cached(run: Run, folder: Path, count: int) -> None:
    """Wait until ``folder`` holds ``count`` cached images (finished files: one being written has a
    temporary name)."""
    _wait_until(run, lambda: sum(1 for _ in folder.rglob("*.jpg")) >= count, f"{count} cached images")


def test_ctrl_c_in_the_data_stage_keeps_every_finished_cache_entry_and_no_half_written_one(interrupted):

    cfg = interrupted["cfg"]
    run = interrupted["make"]()
    run.wait_for("cache 40px")
    folder = prepare.cache_dir(cfg)
    # an event, not a time: the cache's workers hand back chunks of 8 images, and the build lists a chunk
    # as done once it is back; at a quarter of the images several chunks are listed, whatever the CPU's
    # speed, and three quarters are still to do when the Ctrl-C comes
    _wait_until_cached(run, folder, 8 * PER_CLASS // 4)
    _stopped_by_ctrl_c(run, "01_download_and_split")
    assert not (folder / cache.MANIFEST).exists() and not cfg.run.split.exists()
    progress = cache.read_manifest(folder / cache.PROGRESS)
    assert 0 < len(progress) < 8 * PER_CLASS  # some images were cached, not all
    assert all((folder / cache.cached_name(p)).is_file() for p in progress["path"])
    assert _temp_files(cfg.dataset_dir) == []
    assert (cfg.run.notebooks / "01_download_and_split.failed.ipynb").exists()


def test_ctrl_c_in_training_keeps_the_last_finished_epoch(interrupted):
    import torch


    cfg = interrupted["cfg"]
    run = interrupted["make"]()
    run.wait_for(f"{MODEL} stage1 epoch 2/3")
    _stopped_by_ctrl_c(run, f"02_train ({MODEL})")
    stage = cfg.run.stage_dir(MODEL, "stage1")
    checkpoint = torch.load(stage / "checkpoint.pt", weights_only=True)
    history = pd.read_csv(stage / "history.csv")
    assert checkpoint["epoch"] in (1, 2) and list(history["epoch"]) == list(range(1, checkpoint["epoch"] + 1))
    assert _temp_files(cfg.run_dir) == []
    manifest = cache.read_manifest(prepare.cache_dir(cfg) / cache.MANIFEST)  # the data stage went on and finished
    assert len(manifest) == 8 * PER_CLASS and not (prepare.cache_dir(cfg) / cache.PROGRESS).exists()
    assert len(pd.read_csv(cfg.run.split)) == 8 * PER_CLASS


def _kernel(run: Run) -> int:
    return next(pid for pid, command in run.processes() if "ipykernel_launcher" in command)


def test_a_killed_kernel_is_reported_and_its_stage_keeps_the_last_finished_epoch(interrupted):
    import torch

    cfg = interrupted["cfg"]
    run = interrupted["make"]()
    run.wait_for(f"{MODEL} stage2 epoch 2/2")
    os.kill(_kernel(run), signal.SIGKILL)
    assert run.finish() == 2  # make's own code for a failed step
    assert run.last_line().startswith(f"error: 03_finetune ({MODEL}) failed: the Jupyter kernel died"), run.output
    assert wait_until_gone(run) == []
    assert torch.load(cfg.run.checkpoint(MODEL, "stage2"), weights_only=True)["epoch"] == 1


def test_ctrl_c_in_evaluation_leaves_no_stamp(interrupted):
    cfg = interrupted["cfg"]
    run = interrupted["make"]()
    run.wait_for(f"{MODEL} predict")
    _stopped_by_ctrl_c(run, f"04_evaluate ({MODEL})")
    assert not (cfg.run.notebooks / f"04_evaluate-{MODEL}.ipynb").exists()
    assert (cfg.run.notebooks / f"04_evaluate-{MODEL}.failed.ipynb").exists()
    assert _temp_files(cfg.run_dir) == [] and _temp_files(cfg.report_dir) == []


def test_ctrl_c_while_the_report_is_rendered_leaves_no_half_written_page(interrupted):
    cfg = interrupted["cfg"]
    executed = sorted(p.name for p in cfg.run.notebooks.glob("*.ipynb") if not p.name.endswith(".failed.ipynb"))
    assert len(executed) >= 2, executed  # the notebooks run so far: pages still to render after the first
    assert not cfg.report.notebook_copy(executed[0]).exists()  # no report of this run was rendered before
    run = interrupted["make"]("report")  # the last test runs the rest and renders it all
    # an event, not a time: the report copies each notebook into its folder just before rendering its
    # page, so once the first copy is there every page and the index are still to come, whatever the
    # CPU's speed (a fixed wait after the command started let a quick machine finish first)
    _wait_until(run, cfg.report.notebook_copy(executed[0]).exists, "the first notebook's copy")
    seconds = run.ctrl_c()
    assert seconds < STOP_SECONDS and run.process.returncode in (130, -signal.SIGINT), run.output[-2000:]
    assert run.last_line().startswith("interrupted:") and wait_until_gone(run) == []
    assert not cfg.report.index.exists() and _temp_files(cfg.report_dir) == []
    pages = list(cfg.report.html.glob("*.html"))
    assert len(pages) < len(executed) and all(p.read_text().rstrip().endswith("</html>") for p in pages)


def _same_history(cfg, reference, stage: str) -> None:
    ours, theirs = (pd.read_csv(c.run.history(MODEL, stage)).drop(columns=VOLATILE)
                    for c in (cfg, reference))
    assert list(ours["epoch"]) == list(range(1, cfg.stage_config(stage).epochs + 1))  # contiguous
    pd.testing.assert_frame_equal(ours, theirs)


def test_the_interrupted_run_goes_on_to_the_results_of_an_uninterrupted_one(interrupted, reference):

    cfg = interrupted["cfg"]
    run = interrupted["make"]()
    assert run.finish() == 0, run.output[-3000:]
    assert pd.read_csv(cfg.run.split).equals(pd.read_csv(reference.run.split))
    assert (cache.read_manifest(prepare.cache_dir(cfg) / cache.MANIFEST)["error"] == "").all()
    for stage in artefacts.STAGES:
        _same_history(cfg, reference, stage)
    ours, theirs = (pd.read_csv(c.run.predictions(MODEL)) for c in (cfg, reference))
    pd.testing.assert_frame_equal(ours, theirs)
    assert (cfg.report_dir / "index.html").exists()
    assert not list(cfg.run.notebooks.glob("*.failed.ipynb"))  # each step that finished replaced its failed copy


def test_a_full_disk_names_the_folder_and_the_space_needed_and_a_rerun_resumes(study, reference, small_disk):
    from kvasir_utils.data import prepare
    from kvasir_utils.errors import DiskFullError

    mount, grow = small_disk
    cfg = _config(study, "disk", [f"paths.runs={mount / 'runs'}"])
    prepare.prepare_split(cfg, prepare.prepare_dataset(cfg, progress=False))  # notebook 01's calls; the data is ready
    stage = cfg.run.stage_dir(MODEL, "stage1")
    with pytest.raises(DiskFullError) as error:  # what notebook 02 calls (the runner prints the message as it is)
        stages.start_stage(cfg, MODEL, "stage1").fit()
    message = str(error.value)
    assert message.startswith(f"no space left on the disk holding {stage} ("), message
    needed = float(message.split("writing checkpoint.pt needs ")[1].split(" MB")[0].replace(",", ""))
    assert needed > 12  # MobileNetV3-small with its Adam state: more than the whole disk
    assert "run the same command again" in message
    assert not (stage / "checkpoint.pt").exists() and _temp_files(mount) == []
    grow("400m")
    stages.start_stage(cfg, MODEL, "stage1").fit()
    _same_history(cfg, reference, "stage1")
