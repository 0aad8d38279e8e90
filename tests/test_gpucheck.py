"""make gpu-check as a user runs it: its refusal where torch sees no GPU, and its small form on the
CPU when asked; and the step timer that it and make bench share."""

import json

import pytest
import torch

from kvasir_utils.artefacts import STAGES
from kvasir_utils.bench import gpucheck, sweep_cost, timing
from kvasir_utils.errors import KvasirError
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
        assert 0 <= entry["overlap"] <= 1  # the share of the timed span in which all of them trained
    assert concurrent["1"]["overlap"] == 1 and results["failed"] == []

    # The sweep's hours, computed again here from its rates: smoke-leakage's 12 runs, each model's 6 at
    # 8 x 16 generated images (26 validate, as train_test_split rounds), one epoch a stage, a
    # validation pass each at that stage's inference rate and the evaluation's at the last stage's
    priced = results["sweep"]
    assert priced["sweep"] == "smoke-leakage" and priced["runs"] == 12
    sweep = sweep_spec.read_sweep("smoke-leakage", ["train.weights=null"])
    measured = {m["model"]: m for m in priced["measurements"]}
    assert len(priced["measurements"]) == 2 and set(measured) == {"resnet50", "timm:test_vit.r160_in1k"}
    for model, entry in measured.items():
        assert entry["image_size"] == 32 and entry["batch_size"] == sweep.base.train.batch_size
        assert sorted(entry["runs"]) == sorted(m.name for m in sweep.members if m.model == model)
        rates = entry["stages"]
        assert min(r[k] for r in rates.values() for k in ("train_images_per_s", "inference_images_per_s")) > 0
        one_run = 26 / rates["stage2"]["inference_images_per_s"] + sum(
            102 / rates[stage]["train_images_per_s"] + 26 / rates[stage]["inference_images_per_s"] for stage in STAGES)
        assert priced["hours_by_model"][model] == pytest.approx(entry["hours"]) == pytest.approx(6 * one_run / 3600)
    assert priced["hours"] == pytest.approx(sum(priced["hours_by_model"].values()))
    # with the loader's measured rate (the CPU's backend, pil) as a ceiling on every pass: never less
    assert priced["loader_images_per_s"] == results["epoch"]["pil"]["loader_images_per_s"]
    assert priced["hours_with_loader"] >= priced["hours"]
    # and with 1 or 2 runs at a time, at the aggregate rate the concurrency part measured, where its
    # processes trained together for most of the timed span
    assert priced["hours_sharing_the_device"] == pytest.approx(
        {count: priced["hours"] / entry["vs_one"] for count, entry in concurrent.items()
         if entry["overlap"] >= gpucheck.MIN_OVERLAP})
    assert results["pending"] == [] and results["finished"] is True
    # each model measured as its runs train it: the ViT's stage 2 trains LoRA adapters and the head
    vit = next(m for m in sweep.members if m.model == "timm:test_vit.r160_in1k")
    assert measured[vit.model]["trainable"] == {"stage1": "all", "stage2": "lora"}
    assert measured[vit.model]["stages"]["stage2"]["trainable_parameters"] == lora_count(vit.cfg, vit.model)
    assert "sweep smoke-leakage: 12 runs, " in done.stdout


def test_a_sweep_is_measured_once_for_each_step_its_runs_take(monkeypatch):
    """The readings sweep trains ResNet50 with three stage-2 readings and two weights: three steps to
    time (the weights do not change the step), each pricing its six runs; a reading that trains more
    of the network is priced by its own, slower rate."""
    timed = []

    def fake_rates(cfg, model, steps):  # the rates a reading would have: all layers slowest
        settings = sweep_cost.step_settings(cfg, model)
        timed.append(settings["trainable"]["stage2"])
        slow = {"last_tensors:10": 30.0, "block:layer4.2": 25.0, "all": 10.0}[settings["trainable"]["stage2"]]
        return {**settings, "stages": {"stage1": {"train_images_per_s": 40.0, "inference_images_per_s": 100.0},
                                       "stage2": {"train_images_per_s": slow, "inference_images_per_s": 100.0}}}

    monkeypatch.setattr(sweep_cost, "model_rates", fake_rates)
    sweep = sweep_spec.read_sweep("readings", ["train.weights=null"])
    runs = [(m.name, m.model, m.cfg) for m in sweep.members]
    priced = sweep_cost.estimate(sweep.name, runs, steps=2, progress=False)
    assert sorted(timed) == ["all", "block:layer4.2", "last_tensors:10"] and priced["runs"] == 18
    hours = {m["trainable"]["stage2"]: m["hours"] for m in priced["measurements"]}
    assert all(len(m["runs"]) == 6 for m in priced["measurements"])
    # the paper's protocol: 6,400 training and 1,600 validation images, 5 epochs a stage
    one_run = {reading: (1600 / 100 + 5 * (6400 / 40 + 1600 / 100) + 5 * (6400 / rate + 1600 / 100)) / 3600
               for reading, rate in {"last_tensors:10": 30.0, "block:layer4.2": 25.0, "all": 10.0}.items()}
    assert hours == pytest.approx({reading: 6 * h for reading, h in one_run.items()})


def test_gpu_check_refuses_a_sweep_it_cannot_price_before_measuring_anything(tmp_path):
    out = tmp_path / "gpu_check.json"
    done = run_make("gpu-check", f"BENCH=--scale small --cpu --parts sweep --sweep hyperkvasir-folds --out {out} "
                    f"--work {tmp_path / 'work'}", env=NO_GPU)
    assert done.returncode == 2, done.stdout[-3000:]
    assert "its image counts are not in its settings" in done.stdout and "data.expected_per_class" in done.stdout
    done = run_make("gpu-check", f"BENCH=--scale small --cpu --parts epoch --sweep leakage --out {out}", env=NO_GPU)
    assert done.returncode == 2 and "add sweep to --parts" in done.stdout, done.stdout[-3000:]
    assert not out.exists() and not (tmp_path / "work").exists()


def test_a_failed_part_is_recorded_with_its_figures_so_far_and_the_others_still_run(tmp_path, monkeypatch):
    """On a lent machine one call must bring back every figure measured: a part that fails keeps what
    it measured before, is written with its error, the next part runs, and the command ends with an
    error naming the failed part."""
    def out_of_memory(profile, scale):
        yield "1", {"vs_one": 1.0}
        raise RuntimeError("CUDA error: out of memory")

    out = tmp_path / "gpu_check.json"
    out.write_text('{"an earlier run": true}')
    while_generating = []  # the file as a run killed while generating its data would leave it
    monkeypatch.setattr(gpucheck, "prepare_data", lambda cfg: while_generating.append(json.loads(out.read_text())))
    monkeypatch.setattr(gpucheck, "concurrency", out_of_memory)
    monkeypatch.setattr(gpucheck, "run_protocol", lambda profile, scale: {"minutes": 3.0})
    with pytest.raises(KvasirError, match=r"part\(s\) concurrency failed; .*gpu_check.json records each error"):
        gpucheck.run("small", ["concurrency", "protocol"], out=out, work=tmp_path / "work", cpu=True)
    assert while_generating[0]["pending"] == ["protocol", "concurrency"] and not while_generating[0]["finished"]
    results = json.loads(out.read_text())
    assert results["failed"] == ["concurrency"] and results["pending"] == [] and results["finished"] is True
    assert results["concurrency"]["1"] == {"vs_one": 1.0}  # measured before it failed
    assert results["concurrency"]["error"] == "RuntimeError: CUDA error: out of memory"
    assert "in out_of_memory" in results["concurrency"]["traceback"]
    assert results["protocol"] == {"minutes": 3.0}  # the part after the failed one still ran


def test_a_run_stopped_midway_leaves_a_file_that_says_so(tmp_path, monkeypatch):
    def interrupted(profile, scale):
        raise KeyboardInterrupt

    monkeypatch.setattr(gpucheck, "prepare_data", lambda cfg: None)
    monkeypatch.setattr(gpucheck, "run_protocol", lambda profile, scale: {"minutes": 3.0})
    monkeypatch.setattr(gpucheck, "concurrency", interrupted)
    out = tmp_path / "gpu_check.json"
    with pytest.raises(KeyboardInterrupt):
        gpucheck.run("small", ["protocol", "concurrency"], out=out, work=tmp_path / "work", cpu=True)
    results = json.loads(out.read_text())
    assert results["protocol"] == {"minutes": 3.0}
    assert results["pending"] == ["concurrency"] and results["finished"] is False


def test_gpu_checks_stage_1_keeps_its_frozen_batchnorm_layers_in_eval_mode_as_the_stage_does(tmp_path):
    cfg = gpucheck.load(gpucheck.write_profile(tmp_path, "small", "cpu"), "small")
    gpucheck.prepare_data(cfg)  # stage 1 comes with its training loader
    stage = gpucheck._stage1(cfg)
    model, runtime = stage.model, stage.runtime
    batchnorms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    frozen = [m for m in batchnorms if not any(p.requires_grad for p in m.parameters())]
    assert frozen and not any(m.training for m in frozen) and model.training
    assert not runtime.pending  # the probe's choice, as the stage would take it
