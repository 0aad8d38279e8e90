"""make gpu-check on the CPU at its small scale: the figures it writes are measured and consistent."""

import json

import pytest

from kvasir_utils import gpucheck
from kvasir_utils.errors import KvasirError


def test_the_gpu_check_measures_both_backends_and_concurrent_runs(tmp_path):
    out = tmp_path / "gpu_check.json"
    results = gpucheck.run("small", ["epoch"], out, tmp_path / "work")
    assert json.loads(out.read_text())["epoch"] == results["epoch"]
    for backend in ("pil", "device"):
        figures = results["epoch"][backend]
        assert figures["backend"] == backend
        assert figures["loader_images_per_s"] > 0 and figures["loader_first_batch_s"] > 0
        assert figures["pipeline_vs_model_only"] == pytest.approx(
            figures["pipeline_images_per_s"] / figures["model_only_images_per_s"])
    profile = gpucheck.write_profile(tmp_path / "work", "small")
    figures = gpucheck.concurrency(profile, "small", counts=(1, 2), batches=3, settle=0)
    assert figures["2"]["processes"] == 2 and len(figures["2"]["images_per_s_each"]) == 2
    assert figures["1"]["vs_one"] == 1 and figures["2"]["aggregate_images_per_s"] == pytest.approx(
        sum(figures["2"]["images_per_s_each"]))


def test_too_few_steps_to_time_is_an_error():
    with pytest.raises(KvasirError, match="too few to time"):
        gpucheck.train_steps(None, None, None, None, iter([]), 1)
