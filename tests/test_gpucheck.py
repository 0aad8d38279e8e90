"""make gpu-check on the CPU at its small scale, and the step timer that it and make bench share."""

import json

import pytest
import torch

from kvasir_utils.bench import gpucheck, timing
from kvasir_utils.errors import KvasirError


def test_the_timer_counts_the_images_of_the_timed_steps_only(monkeypatch):
    now = [0.0]
    monkeypatch.setattr(timing.time, "perf_counter", lambda: now[0])
    seen = []

    def step(images, targets):  # each step takes one second of the fake clock
        seen.append(len(targets))
        now[0] += 1

    batches = [(None, [0] * 4), (None, [0] * 4), (None, [0] * 4), (None, [0] * 2), (None, [0] * 4)]
    rate = timing.images_per_second(step, batches, 3, torch.device("cpu"))
    assert seen == [4, 4, 4, 2]  # the warm-up and three timed steps; the fifth batch is not touched
    assert rate == pytest.approx(10 / 3)  # the timed steps' 10 images in their 3 seconds


def test_too_few_batches_to_time_is_an_error():
    with pytest.raises(KvasirError, match="too few batches"):
        timing.images_per_second(lambda i, t: None, [], 0, torch.device("cpu"))


def test_the_gpu_check_measures_both_backends_and_concurrent_runs(tmp_path):
    out = tmp_path / "gpu_check.json"
    results = gpucheck.run("small", ["epoch"], out, tmp_path / "work")
    assert json.loads(out.read_text())["epoch"] == results["epoch"]
    for backend in ("pil", "device"):
        figures = results["epoch"][backend]
        assert figures["backend"] == backend and figures["batches"] >= 3
        assert figures["loader_images_per_s"] > 0 and figures["loader_first_batch_s"] > 0
        assert figures["pipeline_images_per_s"] > 0 and figures["model_only_images_per_s"] > 0
    profile = gpucheck.write_profile(tmp_path / "work", "small")
    figures = gpucheck.concurrency(profile, "small", counts=(2,), batches=3, settle=0, per_process=0)
    assert list(figures) == ["2"] and figures["2"]["processes"] == 2 and len(figures["2"]["images_per_s_each"]) == 2
    assert all(rate > 0 for entry in figures.values() for rate in entry["images_per_s_each"])
