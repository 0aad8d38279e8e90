"""make gpu-check as a user runs it: its refusal where torch sees no GPU, and its small form on the
CPU when asked; and the step timer that it and make bench share."""

import json

import pytest
import torch

from kvasir_utils.artefacts import STAGES
from kvasir_utils.bench import timing
from kvasir_utils.run import sweep_spec
from tests.helpers import lora_count
from tests.processes import run_make

NO_GPU = {"CUDA_VISIBLE_DEVICES": ""}  # what a machine without a GPU looks like to torch, on any machine


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
    from kvasir_utils.errors import KvasirError

    with pytest.raises(KvasirError, match="too few batches"):
        timing.images_per_second(lambda i, t: None, [], 0, torch.device("cpu"))


def test_make_gpu_check_without_a_gpu_says_it_needs_one_and_how_to_try_it_on_the_cpu(tmp_path):
    out = tmp_path / "gpu_check.json"
    done = run_make("gpu-check", f"BENCH=--out {out} --work {tmp_path / 'work'}", env=NO_GPU)
    assert done.returncode == 2, done.stdout[-3000:]  # make's code for a failed command
    assert "error: make gpu-check measures a GPU, and torch sees none on this machine" in done.stdout
    assert 'make gpu-check BENCH="--scale small --cpu"' in done.stdout
    assert not out.exists() and not (tmp_path / "work").exists()  # refused before generating anything


@pytest.mark.slow  # the whole command through make, with concurrent processes: half a minute
def test_make_gpu_check_on_the_cpu_measures_both_backends_concurrent_runs_and_a_sweeps_hours(tmp_path):
    out = tmp_path / "gpu_check.json"
    done = run_make("gpu-check", f"BENCH=--scale small --cpu --parts epoch concurrency sweep --out {out} "
                    f"--work {tmp_path / 'work'}", env=NO_GPU)
    assert done.returncode == 0, done.stdout[-3000:]
    assert f"wrote {out}" in done.stdout
    results = json.loads(out.read_text())
    assert results["device"] == "cpu" and results["parts"] == ["epoch", "concurrency", "sweep"]
    for backend in ("pil", "device"):
        figures = results["epoch"][backend]
        assert figures["backend"] == backend and figures["batches"] >= 3
        assert figures["loader_images_per_s"] > 0 and figures["loader_first_batch_s"] > 0
        assert figures["pipeline_images_per_s"] > 0 and figures["model_only_images_per_s"] > 0
        assert figures["pipeline_vs_model_only"] == pytest.approx(figures["pipeline_images_per_s"]
                                                                  / figures["model_only_images_per_s"])
    concurrent = results["concurrency"]
    assert list(concurrent) == ["1", "2"] and concurrent["1"]["vs_one"] == 1
    for count, entry in concurrent.items():
        assert entry["processes"] == int(count) == len(entry["images_per_s_each"])
        assert min(entry["images_per_s_each"]) > 0
        assert entry["aggregate_images_per_s"] == pytest.approx(sum(entry["images_per_s_each"]))

    # The sweep's hours, computed again here from its rates: smoke-leakage's 12 runs, each model's 6 at
    # 8 x 16 generated images (26 validate, as train_test_split rounds), one epoch a stage, a
    # validation pass each and the evaluation's
    priced = results["sweep"]
    assert priced["sweep"] == "smoke-leakage" and priced["runs"] == 12
    assert set(priced["rates"]) == {"resnet50", "timm:test_vit.r160_in1k"}
    sweep = sweep_spec.read_sweep("smoke-leakage", ["train.weights=null"])
    for model, rates in priced["rates"].items():
        assert rates["image_size"] == 32 and rates["batch_size"] == sweep.base.train.batch_size
        assert min(rates["stage1"], rates["stage2"], rates["inference"]) > 0
        one_run = 26 / rates["inference"] + sum(102 / rates[stage] + 26 / rates["inference"] for stage in STAGES)
        assert priced["hours_by_model"][model] == pytest.approx(6 * one_run / 3600)
    assert priced["hours"] == pytest.approx(sum(priced["hours_by_model"].values()))
    loader_cost = results["epoch"]["pil"]["pipeline_vs_model_only"]  # the CPU's backend
    assert priced["hours_with_loader"] == pytest.approx(priced["hours"] / loader_cost)
    # each model measured as its runs train it: the ViT's stage 2 trains LoRA adapters and the head
    vit = next(m for m in sweep.members if m.model == "timm:test_vit.r160_in1k")
    assert priced["rates"][vit.model]["stage2_trainable_parameters"] == lora_count(vit.cfg, vit.model)
    assert "sweep smoke-leakage: 12 runs, " in done.stdout
