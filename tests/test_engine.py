import shutil

import pandas as pd
import pytest
import torch

from kvasir_utils import engine, models, plots
from kvasir_utils.config import RuntimeConfig
from tests.conftest import tiny_config


def _train(cfg, model_name="resnet18", stage="stage1", on_epoch_end=None):
    runtime = engine.resolve_runtime(cfg.runtime)
    model = engine.model_for_stage(cfg, model_name, stage)
    history = engine.fit_stage(model, cfg, model_name, stage, engine.make_loaders(cfg, runtime), runtime,
                               on_epoch_end=on_epoch_end)
    return model, history


def _copy_split(tiny_data, runs):
    (runs / "smoke").mkdir(parents=True)
    shutil.copy(tiny_data / "runs" / "smoke" / "split.csv", runs / "smoke" / "split.csv")


@pytest.fixture
def runs(tiny_data, tmp_path):
    _copy_split(tiny_data, tmp_path / "runs")
    return tmp_path / "runs"


def test_a_small_model_learns_the_generated_cues(tiny_data, runs):
    cfg = tiny_config(tiny_data, runs, ["train.models=[resnet18]", "train.stage1.epochs=6",
                                        "train.stage1.lr=2e-3"])
    _, history = _train(cfg)
    assert history["val_acc"].max() >= 0.4  # chance is 1/8
    assert history["train_loss"].iloc[-1] < history["train_loss"].iloc[0]


def test_same_seed_same_history_in_fp32(tiny_data, tmp_path):
    histories = []
    for name in ("a", "b"):
        _copy_split(tiny_data, tmp_path / name)
        cfg = tiny_config(tiny_data, tmp_path / name, ["train.models=[resnet18]", "train.stage1.epochs=2"])
        histories.append(_train(cfg)[1].drop(columns=["seconds", "images_per_s"]))
    pd.testing.assert_frame_equal(*histories, check_exact=True)


def test_an_interrupted_stage_resumes_to_the_same_weights(tiny_data, tmp_path):
    settings = ["train.models=[resnet18]", "train.stage1.epochs=2", "train.stage1.trainable=last_tensors:10"]
    _copy_split(tiny_data, tmp_path / "whole")
    whole, _ = _train(tiny_config(tiny_data, tmp_path / "whole", settings))

    _copy_split(tiny_data, tmp_path / "cut")
    cfg = tiny_config(tiny_data, tmp_path / "cut", settings)

    def interrupt(row):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _train(cfg, on_epoch_end=interrupt)
    assert engine.load_checkpoint(cfg.stage_dir("resnet18", "stage1") / "checkpoint.pt")["epoch"] == 1
    resumed, history = _train(cfg)
    assert list(history["epoch"]) == [1, 2]
    for (name, a), b in zip(whole.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name


def test_stage2_starts_from_stage1_and_tensorboard_holds_the_scalars(tiny_data, runs):
    cfg = tiny_config(tiny_data, runs, ["train.models=[resnet18]", "train.stage1.epochs=2",
                                        "train.stage2.epochs=1", "train.stage2.trainable=head"])
    stage1, _ = _train(cfg)
    initial = engine.model_for_stage(cfg, "resnet18", "stage2")
    stage2, _ = _train(cfg, stage="stage2")
    # stage 2 froze conv1, so it still holds what stage 1 learned, not the initial weights
    assert torch.equal(stage2.conv1.weight, stage1.conv1.weight)
    assert not torch.equal(stage2.conv1.weight, initial.conv1.weight)
    scalars = plots.read_tensorboard({s: cfg.stage_dir("resnet18", s) / "tensorboard" for s in ("stage1", "stage2")})
    history = engine.read_history(cfg, "resnet18")
    assert set(scalars["tag"]) == set(plots.CURVE_TAGS)
    val_acc = scalars[scalars["tag"] == "accuracy/val"]
    assert list(val_acc["step"]) == [1, 2, 3]
    assert val_acc["value"].to_numpy() == pytest.approx(history["val_acc"].to_numpy(), abs=1e-6)


def test_resuming_under_other_settings_is_refused(tiny_data, runs):
    cfg = tiny_config(tiny_data, runs, ["train.models=[resnet18]", "train.stage1.epochs=1"])
    _train(cfg)
    changed = tiny_config(tiny_data, runs, ["train.models=[resnet18]", "train.stage1.epochs=1",
                                            "train.stage1.lr=0.5"])
    with pytest.raises(Exception, match=r"trained with other settings \(train.stage1.lr\)(.|\n)*make clean"):
        _train(changed)
    # a later stage's settings do not invalidate an earlier stage
    _train(tiny_config(tiny_data, runs, ["train.models=[resnet18]", "train.stage1.epochs=1", "train.stage2.lr=0.5"]))


def test_runtime_auto_uses_bf16_only_where_the_hardware_has_it():
    runtime = engine.resolve_runtime(RuntimeConfig())
    assert runtime.precision == ("bf16" if engine.cpu_has_native_bf16() or torch.cuda.is_available() else "fp32")
    assert runtime.channels_last == (runtime.precision == "bf16")


def test_trainable_table_counts_parameters():
    model = models.build_model("resnet18", 8)
    models.set_trainable(model, "head")
    table = models.trainable_table(model).set_index("module")
    assert table.loc["fc", "trainable"] == 512 * 8 + 8
    assert table.loc["total", "trainable"] == 512 * 8 + 8
    assert table.loc["total", "parameters"] == models.count_parameters(model)


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
