"""make bench: the command as a user runs it (at its small scale), and its projection checked by hand
on given rates (the rates themselves are measured)."""

import json
from pathlib import Path

import pytest

from kvasir_utils.artefacts import STAGES
from kvasir_utils.bench import projection
from kvasir_utils.config import PROJECT_ROOT
from kvasir_utils.errors import KvasirError
from kvasir_utils.profiles import deep_merge, load_profile
from tests.processes import run_make


@pytest.mark.slow  # the whole command through make: half a minute
def test_make_bench_writes_every_figure_it_promises(tmp_path):
    out = tmp_path / "bench.json"
    done = run_make("bench", f"BENCH=--scale small --out {out}")
    assert done.returncode == 0, done.stdout[-3000:]
    assert f"wrote {out}" in done.stdout
    assert projection.OUT.relative_to(PROJECT_ROOT) == Path("reports/bench/bench.json")  # what `make help` says
    results = json.loads(out.read_text())
    assert results["scale"]["settings"] == list(projection.SCALES["small"].settings)
    model = "mobilenet_v3_small"  # the small scale's one model
    rows = results["projection"]["stages"]
    assert [(row["model"], row["stage"]) for row in rows] == [(model, stage) for stage in STAGES]
    for row in rows:  # two timed epochs a stage, each with positive rates and seconds
        assert len(row["train_seconds"]) == len(row["val_seconds"]) == 2
        assert min(row["train_seconds"] + row["val_seconds"]) > 0 and row["measured_images_per_s"] > 0
        assert row["compile"] == "off" and row["seconds"] > 0
    # the protocol: its stages, plus the data stage and the evaluation, which take time too
    assert results["protocol_minutes"] == results["projection"]["protocol_minutes"]
    assert results["protocol_minutes"] * 60 > sum(row["seconds"] for row in rows)
    assert results["measured"]["data_stage_seconds_per_image"] > 0
    assert min(results["loader_images_per_s"].values()) > 0 and min(results["decode_images_per_s"].values()) > 0
    assert set(results["train_step_images_per_s"][model]) == {"auto", "fp32"}
    assert results["pipeline_vs_model_only"] > 0 and f"{model}_auto_vs_fp32" in results
    low, high = results[f"{model}_auto_vs_fp32_spread"]
    assert low <= results[f"{model}_auto_vs_fp32"] <= high
    bound = results["compute_bound"]
    assert bound["peak_gflops"] > 0 and 0 < bound["protocol_floor_minutes"] < results["protocol_minutes"]
    assert results["machine"]["cpu_count"] >= 1  # where it was measured, said first
    assert f"on {results['machine']['cpu']}" in done.stdout.split("wrote")[0].splitlines()[1]
    # (f): the study's stage 1 (d) over the plain script's, each a second epoch on as many training frames
    rates = results["plain_script_images_per_s"]
    stage1 = next(row for row in rows if row["stage"] == STAGES[0])
    assert rates["study_stage1"] == stage1["measured_images_per_s"] and rates["plain_script"] > 0
    # as many frames as (d)'s stage trains on, to a frame a class (the stratified split rounds the whole)
    assert abs(results["plain_script"]["images"] - stage1["train_images"]) < 8
    assert results["plain_script"]["epochs"] == 2
    assert results["stage1_vs_plain_script"] == pytest.approx(rates["study_stage1"] / rates["plain_script"])
    assert "against a plain script (ImageFolder on the full-size frames" in done.stdout


def test_the_plain_script_refuses_a_folder_of_other_classes(tmp_path):
    from kvasir_utils.bench import plain
    from kvasir_utils.data import synthetic

    classes = ["polyps", "normal-cecum"]
    root = synthetic.make_folder(tmp_path / "frames", classes, images_per_class=2)
    loader = plain.plain_loader(root, classes, 32, 2, 0)
    assert len(loader) == 2 and loader.dataset.classes == sorted(classes)
    with pytest.raises(KvasirError, match=r"holds the classes \['normal-cecum', 'polyps'\], not the profile's"):
        plain.plain_loader(root, ["polyps", "normal-cecum", "esophagitis"], 32, 2, 0)


def test_an_unknown_bench_scale_names_the_ones_there_are():
    with pytest.raises(KvasirError, match="unknown bench scale 'huge': use one of paper, small"):
        projection.scale_named("huge")


def _row(model, stage, train_rate, val_rate, first_train_s, reuses=False, first_val_rate=None, first_val_s=None):
    """A measured stage on a slice of 256 training and 64 validation images, two epochs."""
    return {"model": model, "stage": stage, "measured_images_per_s": train_rate, "val_images_per_s": val_rate,
            "reuses_val_features": reuses, "first_val_images_per_s": first_val_rate or val_rate,
            "train_seconds": [first_train_s, 256 / train_rate],
            "val_seconds": [first_val_s or 64 / val_rate, 64 / val_rate]}


def test_the_protocol_is_projected_from_the_measured_stage_rates():
    cfg = load_profile("paper")  # 8,000 images: 6,400 train, 1,600 validation; 5 + 5 epochs
    measured = {"data_stage_seconds_per_image": 0.01, "stages": [
        # stage 1 reuses the validation features: one full pass at 40 img/s, then the head at 1,600 img/s;
        # its first epoch took 30 s more than a steady one (compiling)
        _row("resnet50", "stage1", 40.0, 1600.0, 256 / 40 + 30, reuses=True, first_val_rate=40.0),
        # stage 2 compiles its validation graph too: 10 s more in the first validation pass
        _row("resnet50", "stage2", 32.0, 80.0, 256 / 32 + 20, first_val_s=64 / 80 + 10),
        _row("efficientnet_b0", "stage1", 64.0, 160.0, 256 / 64),
        _row("efficientnet_b0", "stage2", 64.0, 160.0, 256 / 64 - 1),  # a faster first epoch adds nothing
    ]}
    projected = projection.project_protocol(cfg, measured)
    stages = [30 + 5 * 6400 / 40 + 1600 / 40 + 4 * 1600 / 1600,   # 874
              20 + 5 * 6400 / 32 + 10 + 5 * 1600 / 80,              # 1130
              5 * (6400 / 64 + 1600 / 160), 5 * (6400 / 64 + 1600 / 160)]  # 550, 550
    expected = 8000 * 0.01 + sum(stages) + 1600 / 40 + 1600 / 160  # data stage, stages, notebook 04 (full passes)
    assert [row["seconds"] for row in projected["stages"]] == pytest.approx(stages)
    assert projected["protocol_minutes"] == pytest.approx(expected / 60)


def test_the_compute_floor_counts_every_forward_pass_at_the_peak():
    cfg = load_profile("paper")
    measured = {"stages": [_row("resnet50", "stage1", 40.0, 1600.0, 7, reuses=True, first_val_rate=40.0),
                           _row("resnet50", "stage2", 32.0, 80.0, 9),
                           _row("efficientnet_b0", "stage1", 64.0, 160.0, 4, reuses=True),
                           _row("efficientnet_b0", "stage2", 64.0, 160.0, 4)]}
    bound = projection.compute_bound(cfg, measured, peak=400.0)
    r, e = bound["forward_gflops_per_image"]["resnet50"], bound["forward_gflops_per_image"]["efficientnet_b0"]
    assert r == pytest.approx(8.17, abs=0.01) and e == pytest.approx(0.77, abs=0.01)  # 2 FLOPs a multiply-add
    forwards = {"resnet50": 10 * 6400 + (1 + 5 + 1) * 1600, "efficientnet_b0": 10 * 6400 + (1 + 5 + 1) * 1600}
    assert bound["protocol_floor_minutes"] == pytest.approx((forwards["resnet50"] * r + forwards["efficientnet_b0"] * e)
                                                            / 400 / 60)
    assert bound["stage_fraction_of_peak"]["resnet50 stage1"] == pytest.approx(40 * r / 400)
    # the work of a training step, by hand: stage 1 adds the head's weight gradient (2048 features, 8
    # classes); stage 2 (the last 10 tensors: layer4.2 from its bn1 on, and the head) adds, at 7 x 7,
    # the 3x3 and the second 1x1 convolution's two gradients each (input and weight; conv1 is frozen,
    # so no gradient reaches it), and the head's two
    assert cfg.stage_config("stage2").trainable == "last_tensors:10"
    head = 2 * 2048 * 8
    conv2, conv3 = 2 * 512 * 512 * 9 * 49, 2 * 512 * 2048 * 49
    stages = {row["stage"]: row for row in measured["stages"] if row["model"] == "resnet50"}
    assert stages["stage1"]["training_gflops_per_image"] == pytest.approx(r + head / 1e9, rel=1e-6)
    assert stages["stage2"]["training_gflops_per_image"] == pytest.approx(r + 2 * (conv2 + conv3 + head) / 1e9,
                                                                          rel=1e-6)
    assert bound["stage_work_fraction_of_peak"]["resnet50 stage2"] == pytest.approx(
        32 * stages["stage2"]["training_gflops_per_image"] / 400)


def test_a_depthwise_convolutions_backward_costs_what_its_forward_does_for_each_gradient():
    # torch's own formula counts its weight gradient as a dense convolution's: 64 times too many here
    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from kvasir_utils.train import flops

    conv = torch.nn.Conv2d(64, 64, 3, padding=1, groups=64, bias=False)
    forward = 2 * 64 * 9 * 56 * 56  # a multiply-add per weight (its 64 x 1 x 3 x 3) per output position
    for needs_input_gradient in (True, False):
        x = torch.zeros(1, 64, 56, 56, requires_grad=needs_input_gradient)
        with flops._counter() as ours:
            conv(x).sum().backward()
        assert ours.get_total_flops() == forward * (3 if needs_input_gradient else 2)  # the forward pass, then 2 or 1
    dense = torch.nn.Conv2d(8, 16, 3, padding=1, bias=False)  # groups=1: the same count as torch's formula
    x = torch.zeros(2, 8, 12, 12, requires_grad=True)
    with flops._counter() as ours:
        dense(x).sum().backward()
    with FlopCounterMode(display=False) as theirs:
        dense(x).sum().backward()
    assert ours.get_total_flops() == theirs.get_total_flops() == 3 * 2 * 2 * 16 * 8 * 9 * 144


def test_a_vits_attention_is_counted_on_a_cpu_as_its_math_kernel_counts_it():
    # torch has no formula for the attention kernel it runs on a CPU (it counted 0 there)
    import torch
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.flop_counter import FlopCounterMode

    from kvasir_utils.train import flops, models

    vit = models.build_model("timm:test_vit.r160_in1k", 8, image_size=32).eval()
    with FlopCounterMode(display=False) as math, sdpa_kernel(SDPBackend.MATH), torch.inference_mode():
        vit(torch.zeros(1, 3, 32, 32))  # the math kernel: matrix products torch counts
    assert flops.forward_gflops(vit, 32) == pytest.approx(math.get_total_flops() / 1e9, rel=1e-6)
    with FlopCounterMode(display=False) as default, torch.inference_mode():
        vit(torch.zeros(1, 3, 32, 32))
    assert default.get_total_flops() < math.get_total_flops()  # what was left out before


def test_a_paired_figure_of_two_identical_settings_reads_one():
    # The same model and runtime as A and as B: alternated over rounds after a warm-up, their median
    # ratio is 1.00 (the old bench, which timed one after the other, read 0.71 for two identical
    # runtimes). Timed by this process's processor time, one thread: the other test worker's load is
    # not what this test is about, and it moves wall time by 20% from round to round on 2 cores.
    import time

    import torch

    from kvasir_utils.bench import timing
    from kvasir_utils.train import hardware
    from kvasir_utils.train.paired import paired_ratio

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # one core each, whatever the other test worker does
    try:
        runtime = hardware.use_runtime(load_profile("paper", ["runtime.compile=off", "runtime.precision=fp32"]).runtime)
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Conv2d(3, 16, 3), torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1),
                                    torch.nn.Flatten(), torch.nn.Linear(16, 8))
        batch, targets = torch.randn(16, 3, 48, 48), torch.randint(0, 8, (16,))
        step = timing.step_function(model, runtime)
        # many short rounds (5 steps of a few ms each): A and B see the same load, round by round
        pair = paired_ratio(step, step, batch, targets, rounds=61, steps=5, clock=time.process_time)
    finally:
        torch.set_num_threads(threads)
    assert pair["rounds"] == 61 and pair["low"] <= pair["ratio"] <= pair["high"]
    assert pair["ratio"] == pytest.approx(1.0, abs=0.05), pair


def _bench_for(cfg, factor: float) -> dict:
    """bench.json's measured figures made so that each stage's projection is its history's seconds
    divided by ``factor`` (so a real run reads ``factor`` times the projection), the data stage and
    the evaluation at one image a second."""
    import pandas as pd

    images = cfg.data.expected_per_class * len(cfg.data.classes)
    stages = []
    for model in cfg.train.models:
        for stage in STAGES:
            seconds = pd.read_csv(cfg.run.history(model, stage))["seconds"].sum()
            rate = factor * cfg.stage_config(stage).epochs * images / seconds  # train + val images an epoch
            stages.append({"model": model, "stage": stage, "train_seconds": [1.0, 1.0], "val_seconds": [1.0, 1.0],
                           "measured_images_per_s": rate, "val_images_per_s": rate, "first_val_images_per_s": 1.0})
    return {"measured": {"data_stage_seconds_per_image": 1.0, "stages": stages}}


@pytest.mark.slow
@pytest.mark.xdist_group("chain")
def test_the_check_puts_the_projection_beside_the_runs_epochs_and_notebooks(smoke_chain, tmp_path):
    from kvasir_utils.bench import check

    frame = check.compare(smoke_chain, _bench_for(smoke_chain, 1.1))
    assert list(frame["part"]) == ["data stage", *[f"{m} {s}" for m in smoke_chain.train.models for s in STAGES],
                                   *[f"{m} evaluation" for m in smoke_chain.train.models]]
    stages = frame[frame["epochs_s"].notna()]
    assert stages["epochs_vs_projected"].to_numpy() == pytest.approx(1.1)
    assert (stages["notebook_s"] > stages["epochs_s"]).all()  # a notebook also starts, builds and saves
    summary = check.summarise(frame)
    assert summary["stages_epochs_vs_projected"] == pytest.approx(1.1) and summary["agrees"]
    assert summary["parts_beyond_agreement"] == []
    slow = check.summarise(check.compare(smoke_chain, _bench_for(smoke_chain, 1.3)))
    assert not slow["agrees"] and len(slow["parts_beyond_agreement"]) == 2 * len(smoke_chain.train.models)
    assert any(line.startswith("why:") for line in check.explain(slow, smoke_chain.profile))


@pytest.mark.parametrize(("ratio", "why"), [
    (0.49, "make clean PROFILE=bench-check-epoch && TORCHINDUCTOR_CACHE_DIR=$(mktemp -d) make evaluate "
           'PROFILE=bench-check-epoch, then make bench BENCH="--check bench-check-epoch"'),
    (0.84, "TORCHINDUCTOR_CACHE_DIR=$(mktemp -d)"),
    (0.86, None), (1.05, None), (1.14, None),
    (1.16, "rerun `make bench` and the check beside each other"), (1.3, "rerun `make bench`")])
def test_the_check_says_why_a_run_is_quicker_or_slower_than_projected(ratio, why):
    from kvasir_utils.bench import check

    summary = {"stages_epochs_vs_projected": ratio, "agrees": abs(ratio - 1) <= check.AGREEMENT,
               "generated_data": True, "notebooks_vs_projected": 2.0, "stage_notebooks_outside_epochs_s": 23.0,
               "parts_beyond_agreement": ["resnet50 stage1"]}
    said = check.explain(summary, "bench-check-epoch")
    verdict = "beyond" if why else "within"
    assert said[0].startswith(f"the stages' epochs took {ratio:.2f}x the projection ({verdict} 15%")
    reasons = [line for line in said if line.startswith("why")]
    assert reasons == ([next(line for line in said if why in line)] if why else [])


def test_the_check_refuses_bench_figures_it_cannot_compare(tmp_path, monkeypatch):
    from kvasir_utils.bench import check
    from kvasir_utils.provenance import ISA_LIMITS, environment

    for name in ISA_LIMITS:
        monkeypatch.delenv(name, raising=False)

    path = tmp_path / "bench.json"
    with pytest.raises(KvasirError, match="run `make bench` first"):
        check.read_bench(path)
    path.write_text(json.dumps({"scale": {"settings": list(projection.SCALES["small"].settings)},
                                "machine": environment()}))
    with pytest.raises(KvasirError, match="reduced scale .* run `make bench` \\(paper scale\\) first"):
        check.read_bench(path)
    path.write_text(json.dumps({"scale": {"settings": []}, "machine": {**environment(), "cpu": "another CPU"}}))
    with pytest.raises(KvasirError, match="measured on another CPU \\(another CPU; this is"):
        check.read_bench(path)
    more = environment()["usable_cores"] + 1  # the same CPU, more of its cores (taskset, a cpuset)
    path.write_text(json.dumps({"scale": {"settings": []}, "machine": {**environment(), "usable_cores": more}}))
    with pytest.raises(KvasirError, match=f"measured on {more} cores and this process may use {more - 1}"):
        check.read_bench(path)
    # figures of the emulated CPU without AVX-512 (docs/development.md) are not this CPU's, nor the other way round
    monkeypatch.setenv("ONEDNN_MAX_CPU_ISA", "AVX2")
    monkeypatch.setenv("MKL_ENABLE_INSTRUCTIONS", "AVX2")
    emulated = environment()
    assert emulated["isa_limits"] == "ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2"
    path.write_text(json.dumps({"scale": {"settings": []}, "machine": emulated, "measured": {}}))
    assert check.read_bench(path)["measured"] == {}
    monkeypatch.delenv("MKL_ENABLE_INSTRUCTIONS")
    with pytest.raises(KvasirError, match="another CPU \\(.* under ONEDNN_MAX_CPU_ISA=AVX2 "
                                          "MKL_ENABLE_INSTRUCTIONS=AVX2; this is .* under ONEDNN_MAX_CPU_ISA=AVX2\\)"):
        check.read_bench(path)
    monkeypatch.delenv("ONEDNN_MAX_CPU_ISA")
    assert "isa_limits" not in environment()
    path.write_text(json.dumps({"scale": {"settings": []}, "machine": environment(), "measured": {}}))
    assert check.read_bench(path)["measured"] == {}


def test_the_check_profile_is_the_papers_protocol_on_a_tenth_of_the_images():
    paper, tenth = load_profile("paper"), load_profile("bench-check")
    assert tenth.data.expected_per_class * 10 == paper.data.expected_per_class
    assert tenth.science_dict()["train"] | {"weights": None} == paper.science_dict()["train"] | {"weights": None}
    assert tenth.transforms == paper.transforms and tenth.split == paper.split and tenth.runtime.compile == "on"


def test_the_one_epoch_check_is_the_papers_protocol_for_one_epoch_a_stage_on_1000_frames():
    paper, epoch = load_profile("paper"), load_profile("bench-check-epoch")
    classes = len(epoch.data.classes)
    assert epoch.data.expected_per_class * classes == 1000 == epoch.data.synthetic.images_per_class * classes
    assert [epoch.stage_config(stage).epochs for stage in STAGES] == [1, 1]
    one_epoch = {stage: {"epochs": 1} for stage in STAGES}
    assert epoch.science_dict()["train"] | {"weights": None} == deep_merge(paper.science_dict()["train"], one_epoch) | {
        "weights": None}
    assert epoch.transforms == paper.transforms and epoch.split == paper.split and epoch.runtime.compile == "on"

