import copy
import shutil

import numpy as np
import pandas as pd
import pytest
import torch

from kvasir_utils.analysis.runs import read_history, read_tensorboard
from kvasir_utils.artefacts import STAGES
from kvasir_utils.errors import KvasirError
from kvasir_utils.report import plots
from kvasir_utils.train import checkpoints, frozen, hardware, loop, models, stages
from kvasir_utils.train.frozen import split_frozen
from tests.helpers import paper_settings, tiny_config


def _train(cfg, model_name="resnet18", stage="stage1", on_epoch_end=None):
    runtime = hardware.resolve_runtime(cfg.runtime)
    model = stages.model_for_stage(cfg, model_name, stage)
    history = stages.fit_stage(model, cfg, model_name, stage, stages.make_loaders(cfg, runtime), runtime,
                               on_epoch_end=on_epoch_end)
    return model, history


def _copy_split(tiny_data, runs):
    (runs / "smoke").mkdir(parents=True)
    shutil.copy(tiny_data / "runs" / "smoke" / "split.csv", runs / "smoke" / "split.csv")


@pytest.fixture
def runs(tiny_data, tmp_path):
    _copy_split(tiny_data, tmp_path / "runs")
    return tmp_path / "runs"


@pytest.mark.slow  # whole processes or several trainings: make test runs it, make test-fast not
def test_a_small_model_learns_the_generated_cues(tiny_data, runs):
    cfg = tiny_config(tiny_data, runs, ["train.models=[resnet18]", "train.stage1.epochs=6",
                                        "train.stage1.lr=2e-3"])
    _, history = _train(cfg)
    # 32 validation images, chance 1/8: 13 or more right by chance has probability about 1e-4 (binomial);
    # fp32, so both CPU models this project runs on train alike up to rounding
    assert history["val_acc"].max() >= 0.4
    assert history["train_loss"].iloc[-1] < history["train_loss"].iloc[0]


@pytest.mark.slow  # whole processes or several trainings: make test runs it, make test-fast not
def test_same_seed_same_history_in_fp32(tiny_data, tmp_path):
    histories = []
    for name in ("a", "b"):
        _copy_split(tiny_data, tmp_path / name)
        cfg = tiny_config(tiny_data, tmp_path / name, ["train.models=[resnet18]", "train.stage1.epochs=2"])
        histories.append(_train(cfg)[1].drop(columns=["seconds", "images_per_s", "val_images_per_s"]))
    pd.testing.assert_frame_equal(*histories, check_exact=True)


def test_an_interrupted_stage_resumes_to_the_same_weights(tiny_data, tmp_path):
    settings = ["train.models=[resnet18]", "train.stage1.epochs=2", "train.stage1.trainable=last_tensors:10"]
    _copy_split(tiny_data, tmp_path / "whole")
    whole, _ = _train(tiny_config(tiny_data, tmp_path / "whole", settings))

    cfg, resumed, history = _interrupted_and_resumed(tiny_data, tmp_path / "cut", settings)
    assert checkpoints.load_checkpoint(cfg.run.checkpoint("resnet18", "stage1"), cfg.profile).epoch == 2
    assert list(history["epoch"]) == [1, 2]
    for (name, a), b in zip(whole.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name


def _interrupted_and_resumed(tiny_data, runs, settings):
    """Stage 1 stopped by a KeyboardInterrupt after its first epoch's checkpoint, then run again."""
    _copy_split(tiny_data, runs)
    cfg = tiny_config(tiny_data, runs, settings)

    def interrupt(row):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _train(cfg, on_epoch_end=interrupt)
    assert checkpoints.load_checkpoint(cfg.run.checkpoint("resnet18", "stage1"), cfg.profile).epoch == 1
    return (cfg, *_train(cfg))


def test_stage2_starts_from_stage1_and_tensorboard_holds_the_scalars(tiny_data, runs):
    cfg = tiny_config(tiny_data, runs, ["train.models=[resnet18]", "train.stage1.epochs=2",
                                        "train.stage2.epochs=1", "train.stage2.trainable=head"])
    stage1, _ = _train(cfg)
    initial = stages.model_for_stage(cfg, "resnet18", "stage2")
    stage2, _ = _train(cfg, stage="stage2")
    # stage 2 froze conv1, so it still holds what stage 1 learned, not the initial weights
    assert torch.equal(stage2.conv1.weight, stage1.conv1.weight)
    assert not torch.equal(stage2.conv1.weight, initial.conv1.weight)
    scalars = read_tensorboard({s: cfg.run.tensorboard("resnet18", s) for s in ("stage1", "stage2")})
    history_frame = read_history(cfg, "resnet18")
    assert set(scalars["tag"]) == set(plots.CURVE_TAGS)
    val_acc = scalars[scalars["tag"] == "accuracy/val"]
    assert list(val_acc["step"]) == [1, 2, 3]
    assert val_acc["value"].to_numpy() == pytest.approx(history_frame["val_acc"].to_numpy(), abs=1e-6)
    # transforms.backend: auto trains with the PIL path on a CPU, and the checkpoint says so
    recorded = checkpoints.load_checkpoint(cfg.run.checkpoint("resnet18", "stage1"), cfg.profile).runtime
    assert recorded["augment"] == "pil" and recorded["device"] == "cpu"


def test_a_diverging_stage_stops_with_the_remedy_and_writes_nothing_of_that_epoch(tiny_data, runs):
    cfg = tiny_config(tiny_data, runs, ["train.models=[resnet18]", "train.stage1.epochs=2", "train.stage1.lr=1e30"])
    with pytest.raises(KvasirError, match=r"resnet18 stage1 epoch 1/2: the training loss is (nan|inf).*diverged.*"
                                          r"lower train.stage1.lr \(now 1e\+30\), e.g. SET=\"train.stage1.lr=1e\+29\""):
        _train(cfg)
    assert not cfg.run.checkpoint("resnet18", "stage1").exists()
    assert not cfg.run.history("resnet18", "stage1").exists()


def test_resuming_under_other_settings_is_refused(tiny_data, runs):
    cfg = tiny_config(tiny_data, runs, ["train.models=[resnet18]", "train.stage1.epochs=1"])
    _train(cfg)
    changed = tiny_config(tiny_data, runs, ["train.models=[resnet18]", "train.stage1.epochs=1",
                                            "train.stage1.lr=0.5"])
    with pytest.raises(KvasirError, match=r"other settings or data: train.stage1.lr changed(.|\n)*make clean"):
        _train(changed)
    # a later stage's settings do not invalidate an earlier stage
    _train(tiny_config(tiny_data, runs, ["train.models=[resnet18]", "train.stage1.epochs=1", "train.stage2.lr=0.5"]))


def test_settings_that_do_not_change_the_stage_do_not_refuse_it(tiny_data, runs):
    cfg = tiny_config(tiny_data, runs, ["train.models=[resnet18,resnet34]", "train.stage1.epochs=1"])
    _train(cfg)
    path = cfg.run.checkpoint("resnet18", "stage1")
    before = path.stat().st_mtime_ns
    other = tiny_config(tiny_data, runs, ["train.models=[resnet18]", "train.stage1.epochs=1", "cache.workers=3",
                                          "runtime.workers=1", "eval.bootstrap_samples=20"])
    _, again = _train(other)
    assert path.stat().st_mtime_ns == before and len(again) == 1  # reused as it was, not retrained


def _swap_sides(split_csv, count=2):
    split = pd.read_csv(split_csv)
    val, train = split.index[split["split"] == "val"][:count], split.index[split["split"] == "train"][:count]
    split.loc[val, "split"], split.loc[train, "split"] = "train", "val"
    split.to_csv(split_csv, index=False)


def test_a_finished_stage_is_not_reused_on_another_split(tiny_data, runs):
    cfg = tiny_config(tiny_data, runs, ["train.models=[resnet18]", "train.stage1.epochs=1",
                                        "train.stage2.epochs=1", "train.stage2.trainable=head"])
    _train(cfg)
    _train(cfg, stage="stage2")
    _train(cfg)  # same inputs: reused, in both directions the check passes
    _swap_sides(cfg.run.split)
    for stage in STAGES:
        with pytest.raises(KvasirError, match=r"split.csv \(SHA-256 \w+ then, \w+ now\) changed"):
            _train(cfg, stage=stage)
    with pytest.raises(KvasirError, match="split.csv"):
        checkpoints.load_trained_model(cfg, "resnet18")  # what notebook 04 calls before it evaluates


@pytest.mark.slow  # whole processes or several trainings: make test runs it, make test-fast not
def test_stage2_is_not_reused_after_stage1_was_retrained(tiny_data, runs):
    settings = ["train.models=[resnet18]", "train.stage1.epochs=1", "train.stage2.epochs=1",
                "train.stage2.trainable=head"]
    cfg = tiny_config(tiny_data, runs, settings)
    _train(cfg)
    _train(cfg, stage="stage2")
    checkpoints.load_trained_model(cfg, "resnet18")
    shutil.rmtree(cfg.run.stage_dir("resnet18", "stage1"))
    _train(tiny_config(tiny_data, runs, [*settings, "train.stage1.lr=3e-4"]))
    with pytest.raises(KvasirError, match=r"stage1 checkpoint \(SHA-256"):
        checkpoints.load_trained_model(tiny_config(tiny_data, runs, [*settings, "train.stage1.lr=3e-4"]), "resnet18")


def test_continue_optimizer_carries_adam_state_by_parameter_name(tiny_data, runs):
    cfg = tiny_config(tiny_data, runs, ["train.models=[resnet18]", "train.stage1.epochs=1",
                                        "train.stage1.trainable=all", "train.stage2.epochs=1",
                                        "train.stage2.trainable=head", "train.stage2_init=continue_optimizer"])
    _train(cfg)
    stage1 = checkpoints.load_checkpoint(cfg.run.checkpoint("resnet18", "stage1"), cfg.profile)
    fc_weight = stage1.optimizer["state"][stage1.optimizer_params.index("fc.weight")]
    model = stages.model_for_stage(cfg, "resnet18", "stage2")
    order = models.set_trainable(model, "head")
    optimizer = loop.adam([dict(model.named_parameters())[n] for n in order], 1e-3)  # the stages' own, fused
    assert stages.carry_adam_state(optimizer, order, stage1) == 2
    carried = optimizer.state_dict()["state"][order.index("fc.weight")]
    assert torch.equal(carried["exp_avg"], fc_weight["exp_avg"]) and carried["step"] == fc_weight["step"]
    _train(cfg, stage="stage2")  # and the stage trains with it (Adam crashed on conv1's moments before)


def test_frozen_batchnorm_train_lets_frozen_statistics_move(tiny_data, runs):
    moved = {}
    for mode in ("eval", "train"):
        cfg = tiny_config(tiny_data, runs / mode, ["train.models=[resnet18]", "train.stage1.epochs=1",
                                                   "train.stage1.trainable=head", f"train.frozen_batchnorm={mode}"])
        shutil.copytree(runs / "smoke", runs / mode / "smoke")
        initial = stages.model_for_stage(cfg, "resnet18", "stage1").state_dict()
        trained, _ = _train(cfg)
        moved[mode] = not torch.equal(trained.layer1[0].bn1.running_mean, initial["layer1.0.bn1.running_mean"])
        assert torch.equal(trained.layer1[0].bn1.weight, initial["layer1.0.bn1.weight"])  # frozen either way
    assert moved == {"eval": False, "train": True}


def test_epoch_seeds_never_collide_across_seeds_stages_and_epochs():
    keys = [(seed, stage, epoch) for seed in range(20) for stage in STAGES for epoch in range(1, 301)]
    seeds = [loop.epoch_seed(*key) for key in keys]
    assert len(set(seeds)) == len(keys)
    assert loop.epoch_seed(1, "stage1", 101) != loop.epoch_seed(1, "stage2", 1)
    assert loop.epoch_seed(1, "stage1", 3) == loop.epoch_seed(1, "stage1", 3) < 2**63


@pytest.mark.parametrize(("mode", "deterministic", "warn_only"), [("auto", True, True), ("on", True, False),
                                                                   ("off", False, False)])
def test_runtime_deterministic_sets_torchs_switches(mode, deterministic, warn_only):
    try:
        torch.use_deterministic_algorithms(not deterministic)
        runtime = hardware.resolve_runtime(paper_settings("runtime", deterministic=mode))
        assert torch.are_deterministic_algorithms_enabled() != deterministic  # resolving changes nothing
        assert hardware.apply_determinism(runtime) is runtime
        assert torch.are_deterministic_algorithms_enabled() == deterministic
        assert torch.is_deterministic_algorithms_warn_only_enabled() == warn_only
        assert f"deterministic algorithms {mode}" in runtime.describe()
    finally:
        hardware.use_runtime(paper_settings("runtime", deterministic="auto"))


def test_every_runtime_choice_gives_the_predictions_of_fp32_contiguous_on_a_trained_model(tiny_data, runs):
    # what the runtime probe may choose (train.probe): each against the reference, fp32 contiguous
    cfg = tiny_config(tiny_data, runs, ["train.models=[resnet18]", "train.stage1.epochs=3", "train.stage1.lr=2e-3"])
    model, _ = _train(cfg)
    loader = stages.make_loaders(cfg, hardware.resolve_runtime(cfg.runtime))["val"]
    reference = hardware.resolve_runtime(paper_settings("runtime", precision="fp32", memory_format="contiguous"))
    fp32 = loop.predict(hardware.prepare_model(model, reference), loader, reference)[0]
    # so no image whose two top fp32 probabilities are more than twice the tolerance apart can change its class
    top2 = np.sort(fp32, axis=1)[:, -2:]
    clear = top2[:, 1] - top2[:, 0] > 0.1
    assert clear.sum() >= len(fp32) // 2
    for precision, layout in [("fp32", "channels_last"), ("bf16", "contiguous"), ("bf16", "channels_last")]:
        runtime = hardware.resolve_runtime(paper_settings("runtime", precision=precision, memory_format=layout))
        assert runtime.channels_last == (layout == "channels_last") and runtime.pending == ()
        found = loop.predict(hardware.prepare_model(copy.deepcopy(model), runtime), loader, runtime)[0]
        assert found.dtype == fp32.dtype == np.float32
        assert np.abs(found - fp32).max() < (1e-4 if precision == "fp32" else 0.05), (precision, layout)
        assert (found.argmax(1) == fp32.argmax(1))[clear].all(), (precision, layout)


def test_trainable_table_counts_parameters():
    model = models.build_model("resnet18", 8)
    models.set_trainable(model, "head")
    table = models.trainable_table(model).set_index("module")
    assert table.loc["fc", "trainable"] == 512 * 8 + 8
    assert table.loc["total", "trainable"] == 512 * 8 + 8
    assert table.loc["total", "parameters"] == models.count_parameters(model)


@pytest.mark.slow  # whole processes or several trainings: make test runs it, make test-fast not
def test_an_interrupted_stage2_resumes_to_the_same_weights(tiny_data, tmp_path):
    settings = ["train.models=[resnet18]", "train.stage1.epochs=1", "train.stage1.trainable=head",
                "train.stage2.epochs=2", "train.stage2.trainable=last_tensors:10"]
    finals = []
    for name, interrupt in (("whole", False), ("cut", True)):
        _copy_split(tiny_data, tmp_path / name)
        cfg = tiny_config(tiny_data, tmp_path / name, settings)
        _train(cfg)
        if interrupt:
            def stop(row):
                raise KeyboardInterrupt

            with pytest.raises(KeyboardInterrupt):
                _train(cfg, stage="stage2", on_epoch_end=stop)
        finals.append(_train(cfg, stage="stage2")[0])
    for (name, a), b in zip(finals[0].state_dict().items(), finals[1].state_dict().values()):
        assert torch.equal(a, b), name


def test_the_weights_file_and_its_hash_are_recorded_when_stage1_loads_them(tiny_data, runs, tmp_path, monkeypatch):
    import hashlib

    from kvasir_utils.provenance import weights_provenance
    from tests.test_models import _hub_file

    prefix = _hub_file(tmp_path / "hub-home", monkeypatch, __import__("torchvision").models.resnet18().state_dict())
    path = tmp_path / "hub-home" / "hub" / "checkpoints" / f"resnet18-{prefix}.pth"
    cfg = tiny_config(tiny_data, runs, ["train.models=[resnet18]", "train.stage1.epochs=1",
                                        "train.weights=IMAGENET1K_V1"])
    assert weights_provenance(cfg, "resnet18") is None  # before stage 1
    _train(cfg)
    expected = {"weights": "IMAGENET1K_V1", "file": path.name, "sha256": hashlib.sha256(path.read_bytes()).hexdigest(),
                "source": "torch hub cache"}
    path.unlink()  # the record stands for the file stage 1 loaded, wherever the evaluation runs later
    recorded = weights_provenance(cfg, "resnet18")
    assert {key: recorded[key] for key in expected} == expected and recorded["path"] == str(path)


@pytest.mark.parametrize("trainable", ["head", "last_tensors:4"])
def test_validation_reuses_the_frozen_parts_outputs_bit_for_bit(tiny_data, runs, trainable):
    cfg = tiny_config(tiny_data, runs, ["train.models=[resnet18]", "train.stage1.epochs=2",
                                        f"train.stage1.trainable={trainable}"])
    model, history = _train(cfg)
    runtime = hardware.resolve_runtime(cfg.runtime)
    loader = stages.make_loaders(cfg, runtime)["val"]
    full = loop.evaluate(model, loader, runtime)
    # the last epoch's validation ran the trained part on what the frozen part gave in the first epoch
    assert history["val_loss"].iloc[-1] == full["loss"] and history["val_acc"].iloc[-1] == full["acc"]

    features = frozen.ValidationFeatures.for_model(model)
    probs, targets, _ = loop.predict(model, loader, runtime)
    for _ in range(2):
        reused = loop.predict(model, loader, runtime, features=features)
        assert features.computed == 1
        np.testing.assert_array_equal(reused[0], probs)
        np.testing.assert_array_equal(reused[1], targets)
    with torch.no_grad():  # a frozen part that changed (here a BatchNorm statistic) is noticed and recomputed
        model.bn1.running_mean += 0.5
    probs = loop.predict(model, loader, runtime)[0]
    np.testing.assert_array_equal(loop.predict(model, loader, runtime, features=features)[0], probs)
    assert features.computed == 2
    other = stages.make_loaders(cfg, runtime)["val"]  # another loader is never answered from the kept outputs
    np.testing.assert_array_equal(loop.predict(model, other, runtime, features=features)[0], probs)
    assert features.computed == 3
    assert isinstance(model.fc, torch.nn.Linear) and "fc.weight" in model.state_dict()  # the model is untouched
    # too large to keep: still right, recomputed every pass
    small = frozen.ValidationFeatures(model, max_bytes=1)
    for computed in (1, 2):
        np.testing.assert_array_equal(loop.predict(model, loader, runtime, features=small)[0], probs)
        assert small.computed == computed


def test_no_split_where_the_rest_needs_the_input_itself():
    with torch.device("meta"):
        vit = models.build_model("vit_b_16", 8)
    for reading in ("all", "module:conv_proj"):
        models.set_trainable(vit, reading)
        assert split_frozen(vit) is None


@pytest.mark.parametrize("name", ["resnet50", "efficientnet_b0"])
@pytest.mark.parametrize("trainable", ["head", "last_tensors:10", "all"])
def test_the_split_model_runs_the_models_operations(name, trainable):
    model = models.build_model(name, 8)
    models.set_trainable(model, trainable)
    parts = split_frozen(model)
    if trainable == "all":
        assert parts is None  # nothing frozen to keep
        return
    prefix, suffix = parts
    model.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.inference_mode(), torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.equal(model(x), suffix(*prefix(x)))
    frozen = {id(p) for p in prefix.parameters()}
    assert frozen and not any(p.requires_grad for p in prefix.parameters())
    assert {id(p) for p in model.parameters() if p.requires_grad} <= {id(p) for p in suffix.parameters()}
    assert frozen <= {id(p) for p in model.parameters()}  # shared, not copied


def test_runtime_compile_decides_by_the_stages_length():
    rt = hardware.resolve_runtime(paper_settings("runtime", device="cpu"))
    assert rt.compile == "auto"
    assert hardware.compile_for(rt, hardware.COMPILE_MIN_IMAGES).compile == "on"
    assert hardware.compile_for(rt, hardware.COMPILE_MIN_IMAGES - 1).compile == "off"
    off = hardware.resolve_runtime(paper_settings("runtime", device="cpu", compile="off"))
    assert hardware.compile_for(off, 10**9).compile == "off"
    assert "torch.compile" in hardware.compile_for(rt, 10**9).describe()


@pytest.mark.slow  # compiling from an empty cache: half a minute
@pytest.mark.skipif(not hardware.compiler_found(), reason="torch.compile builds C++ kernels: needs g++ or clang++")
def test_a_compiled_stage_saves_plain_weights_and_validates_like_the_eager_model(tiny_data, runs):
    # Only the head trains: a compile with no cache builds half the kernels (41 s instead of 60, alone
    # on 2 cores). Validation still goes through the whole compiled graph (no frozen features reused).
    cfg = tiny_config(tiny_data, runs, ["train.models=[resnet18]", "train.stage1.epochs=1",
                                        "train.stage1.trainable=last_tensors:2", "runtime.reuse_frozen=false",
                                        "runtime.compile=on"])
    model, history = _train(cfg)
    checkpoint = checkpoints.load_checkpoint(cfg.run.checkpoint("resnet18", "stage1"), cfg.profile)
    assert checkpoint.runtime["compile"] == "on"
    assert checkpoint.runtime["folded_batchnorm"] == 20  # every conv + BatchNorm of resnet18: only fc trains
    # batches of 16: on a CPU the frozen part 8 images at a time (on a GPU whole batches, 0)
    assert checkpoint.runtime["frozen_chunk"] == hardware.resolve_runtime(cfg.runtime).frozen_chunk
    assert not any(key.startswith("_orig_mod") for key in checkpoint.model)
    # validation ran through the compiled graph; the eager model counts the same correct images
    runtime = hardware.resolve_runtime(cfg.runtime)
    eager = loop.evaluate(model, stages.make_loaders(cfg, runtime)["val"], runtime)
    assert eager["acc"] == history["val_acc"].iloc[-1]
    assert eager["loss"] == pytest.approx(history["val_loss"].iloc[-1], abs=1e-4)


def test_the_device_backend_trains_resumes_exactly_and_is_recorded(tiny_data, tmp_path):
    """transforms.backend=device on the CPU: padded uint8 batches, augmented in the training loop;
    an interrupted stage resumes to the weights of an uninterrupted one, as with the PIL path."""
    settings = ["train.models=[resnet18]", "train.stage1.epochs=2", "train.stage1.trainable=last_tensors:4",
                "transforms.backend=device"]
    _copy_split(tiny_data, tmp_path / "whole")
    whole_cfg = tiny_config(tiny_data, tmp_path / "whole", settings)
    runtime = hardware.resolve_runtime(whole_cfg.runtime)
    images, sizes, targets = next(iter(stages.make_loaders(whole_cfg, runtime)["train"]))
    assert images.dtype == torch.uint8 and sizes.shape == (len(targets), 2)
    whole, history = _train(whole_cfg)
    assert history["train_loss"].notna().all()
    checkpoint = checkpoints.load_checkpoint(whole_cfg.run.checkpoint("resnet18", "stage1"), whole_cfg.profile)
    assert checkpoint.runtime["augment"] == "device"

    _, resumed, _ = _interrupted_and_resumed(tiny_data, tmp_path / "cut", settings)
    for (name, a), b in zip(whole.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name
    # the PIL path draws other augmentations: same settings otherwise, other weights
    _copy_split(tiny_data, tmp_path / "pil")
    pil, _ = _train(tiny_config(tiny_data, tmp_path / "pil", settings[:-1] + ["transforms.backend=pil"]))
    assert not torch.equal(pil.fc.weight, whole.fc.weight)


@pytest.mark.parametrize("name, trainable, pairs", [("resnet18", "last_tensors:2", 20),
                                                    ("resnet18", "block:layer4", 15),
                                                    ("efficientnet_b0", "last_tensors:10", 47)])
def test_folding_frozen_batchnorms_trains_the_model_itself_and_computes_what_it_computes(name, trainable, pairs):
    # What a compiled stage trains (fold_frozen_batchnorm): only pairs with nothing trainable fold; a
    # trainable BatchNorm keeps its running statistics, in the model; gradients reach the model's
    # parameters; the model keeps its modules (its checkpoint is the unfolded one).
    torch.manual_seed(0)
    model = models.build_model(name, 8)
    with torch.no_grad():
        model.train()(torch.randn(8, 3, 64, 64))  # running statistics that are not the initial ones
    models.set_trainable(model, trainable)
    before, modules = copy.deepcopy(model.state_dict()), list(model.modules())
    folded, count = frozen.fold_frozen_batchnorm(model)
    assert count == pairs and folded is not model and list(model.modules()) == modules
    images = torch.randn(4, 3, 64, 64)
    outputs = []
    for net in (model, folded):
        models.set_train_mode(net, "eval")
        torch.manual_seed(1)  # EfficientNet's stochastic depth draws the same
        outputs.append(net(images))
    assert outputs[1].detach() == pytest.approx(outputs[0].detach(), abs=1e-5)
    outputs[1].sum().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)
    moved = {k for k, v in model.state_dict().items() if not torch.equal(v, before[k])}
    trainable_norms = {n for n, m in model.named_modules() if isinstance(m, torch.nn.BatchNorm2d)
                       and any(p.requires_grad for p in m.parameters())}
    statistics = ("running_mean", "running_var", "num_batches_tracked")
    assert moved == {f"{n}.{b}" for n in trainable_norms for b in statistics}
    everything = models.build_model("resnet18", 8)  # every parameter trains: nothing folds
    assert frozen.fold_frozen_batchnorm(everything) == (everything, 0)


def _unchanged(part):
    return part


@pytest.mark.parametrize("name, trainable", [("resnet18", "head"), ("resnet18", "block:layer4"),
                                             ("efficientnet_b0", "last_tensors:10")])
def test_the_frozen_part_in_chunks_computes_what_the_whole_batch_does(name, trainable):
    # What a compiled CPU stage trains (frozen.chunked): the frozen part on 3, 3 and 2 images, the rest
    # (trainable BatchNorms too) on all 8; the same logits and gradients as the whole model, to rounding
    torch.manual_seed(0)
    model = models.build_model(name, 8)
    with torch.no_grad():
        model.train()(torch.randn(8, 3, 64, 64))  # running statistics that are not the initial ones
    models.set_trainable(model, trainable)
    folded, _ = frozen.fold_frozen_batchnorm(model)
    net = frozen.chunked(folded, 3, 8, 64, _unchanged)
    assert isinstance(net, frozen.ChunkedFrozen) and net.chunk == 3
    images, results = torch.randn(8, 3, 64, 64), []
    for candidate in (folded, net):
        models.set_train_mode(candidate, "eval")
        if name == "efficientnet_b0":  # stochastic depth draws per chunk: compared where it does not act
            for module in candidate.modules():
                if type(module).__name__ == "StochasticDepth":
                    module.eval()
        model.zero_grad()
        torch.manual_seed(1)  # the head's dropout draws the same
        logits = candidate(images)
        logits.logsumexp(1).sum().backward()
        results.append((logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}))
    (whole, whole_grads), (parts, part_grads) = results
    assert parts == pytest.approx(whole, abs=1e-5)
    assert part_grads.keys() == whole_grads.keys() and whole_grads
    for name in whole_grads:
        torch.testing.assert_close(part_grads[name], whole_grads[name], rtol=1e-4, atol=1e-6)
    assert frozen.chunked(folded, 8, 8, 64, _unchanged) is None  # a chunk as large as the batch: whole
    assert frozen.chunked(folded, 0, 8, 64, _unchanged) is None  # 0: whole batches


def test_the_frozen_part_in_chunks_keeps_stochastic_depth_acting_in_training():
    # EfficientNet's frozen blocks drop their residual branch at random in training (their mode), as in
    # the whole model: the split for training keeps each such module a call of its own, not its eval form
    torch.manual_seed(0)
    model = models.build_model("efficientnet_b0", 8)
    models.set_trainable(model, "head")
    net = frozen.chunked(frozen.fold_frozen_batchnorm(model)[0], 4, 8, 64, _unchanged)
    calls = {type(net.prefix.get_submodule(n.target)).__name__ for n in net.prefix.graph.nodes if n.op == "call_module"}
    assert "StochasticDepth" in calls  # a call of its own, deciding by its mode when it runs
    images, drawn = torch.randn(8, 3, 64, 64), {}
    for mode in ("train", "eval"):
        models.set_train_mode(net, "eval") if mode == "train" else net.eval()
        for dropout in (m for m in net.modules() if isinstance(m, torch.nn.Dropout)):
            dropout.eval()  # the head's dropout (frozen with it in stage 1) would differ by itself
        for seed in (1, 2):
            torch.manual_seed(seed)
            drawn[mode, seed] = net.prefix(images)[0]
    assert not torch.equal(drawn["train", 1], drawn["train", 2])
    assert torch.equal(drawn["eval", 1], drawn["eval", 2])


class _BatchAsNumber(torch.nn.Module):
    """A frozen part that hands the batch size on as a number to the trainable rest, as a ViT may."""

    def __init__(self):
        super().__init__()
        self.conv, self.head = torch.nn.Conv2d(3, 2, 3), torch.nn.Linear(2 * 14 * 14, 8)

    def forward(self, x):
        return self.head(self.conv(x).flatten(1)).reshape(x.shape[0], -1)


def test_a_frozen_part_that_hands_on_the_batch_size_as_a_number_runs_whole():
    model = _BatchAsNumber()
    models.set_trainable(model, "head")
    assert frozen.chunked(model, 4, 8, 16, _unchanged) is None


def test_folding_leaves_a_model_it_cannot_fold_untouched():
    # timm's BatchNormAct2d (a BatchNorm with its activation) is no plain pair: nothing folds, and
    # tracing it ran its forward in training mode, which counted a batch into every BatchNorm of the
    # model before tracing took leaf modules with parameters or buffers of their own as single calls
    model = models.build_model("timm:test_efficientnet", 8)
    models.set_trainable(model, "head")
    before = copy.deepcopy(model.state_dict())
    assert frozen.fold_frozen_batchnorm(model) == (model, 0)
    assert all(torch.equal(value, before[key]) for key, value in model.state_dict().items())
    assert model.training  # its modes as they were


def test_a_stage_resumed_with_another_number_of_folded_batchnorms_says_so(capsys):
    from types import SimpleNamespace

    from kvasir_utils import profiles

    cfg = profiles.load_profile("smoke")
    runtime = hardware.Runtime(torch.device("cpu"), "fp32", 0)
    before = SimpleNamespace(runtime=runtime.record(), epoch=1)  # a checkpoint from before folding: no count
    stages.warn_numerics_change(before, runtime, {"folded_batchnorm": 0, "frozen_chunk": 0}, cfg, "resnet50", "stage1")
    assert capsys.readouterr().out == ""
    stages.warn_numerics_change(before, runtime, {"folded_batchnorm": 53, "frozen_chunk": 8}, cfg, "resnet50",
                                "stage1")
    assert "goes on with folded BatchNorms 0 -> 53, frozen part's chunk of images 0 -> 8" in capsys.readouterr().out
