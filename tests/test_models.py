import pytest
import torch
from torch import nn

from kvasir_utils.errors import KvasirError
from kvasir_utils.train import models, weights


@pytest.fixture(scope="module")
def resnet50():
    return models.build_model("resnet50", 8)


@pytest.fixture(scope="module")
def efficientnet_b0():
    return models.build_model("efficientnet_b0", 8)


def _trainable(model):
    return [n for n, p in model.named_parameters() if p.requires_grad]


def test_the_head_is_replaced_whatever_it_is_called(resnet50, efficientnet_b0):
    assert models.head_name(resnet50) == "fc" and resnet50.fc.out_features == 8
    assert models.head_name(efficientnet_b0) == "classifier.1" and efficientnet_b0.classifier[1].out_features == 8
    assert models.build_model("vit_b_16", 8).heads.head.out_features == 8


def test_stage1_head_trains_only_the_new_layer(resnet50):
    assert models.set_trainable(resnet50, "head") == ["fc.weight", "fc.bias"]


# "the last 10 layers unfrozen", read as the last 10 parameter tensors: exactly these (docs/paper-readings.md)
LAST_TEN = {
    "resnet50": ["layer4.2.bn1.weight", "layer4.2.bn1.bias", "layer4.2.conv2.weight", "layer4.2.bn2.weight",
                 "layer4.2.bn2.bias", "layer4.2.conv3.weight", "layer4.2.bn3.weight", "layer4.2.bn3.bias",
                 "fc.weight", "fc.bias"],
    "efficientnet_b0": ["features.7.0.block.2.fc2.weight", "features.7.0.block.2.fc2.bias",
                        "features.7.0.block.3.0.weight", "features.7.0.block.3.1.weight", "features.7.0.block.3.1.bias",
                        "features.8.0.weight", "features.8.1.weight", "features.8.1.bias", "classifier.1.weight",
                        "classifier.1.bias"],
}


@pytest.mark.parametrize("name", ["resnet50", "efficientnet_b0"])
def test_last_tensors_10_unfreezes_exactly_these_parameters(name, request):
    model = request.getfixturevalue(name)
    assert models.set_trainable(model, "last_tensors:10") == LAST_TEN[name]
    assert _trainable(model) == LAST_TEN[name]
    frozen = {n: p.requires_grad for n, p in model.named_parameters()}
    assert frozen.get("layer4.2.conv1.weight", False) is False  # ResNet50's 11th tensor from the end stays frozen


def test_block_reading_is_that_block_plus_the_head(resnet50):
    trainable = models.set_trainable(resnet50, "block:layer4.2")
    expected = [n for n, _ in resnet50.named_parameters() if n.startswith("layer4.2.")] + ["fc.weight", "fc.bias"]
    assert trainable == expected and len(expected) == 11


def test_module_reading_is_that_module_and_everything_after(efficientnet_b0):
    trainable = models.set_trainable(efficientnet_b0, "module:features.8")
    assert trainable == ["features.8.0.weight", "features.8.1.weight", "features.8.1.bias",
                         "classifier.1.weight", "classifier.1.bias"]


def test_all_and_bad_readings(resnet50):
    assert len(models.set_trainable(resnet50, "all")) == len(list(resnet50.parameters()))
    with pytest.raises(KvasirError, match="unknown trainable reading 'last_layers:10'; allowed: head, all"):
        models.set_trainable(resnet50, "last_layers:10")
    with pytest.raises(KvasirError, match="has no module 'layer9'"):
        models.set_trainable(resnet50, "block:layer9")


def test_frozen_batchnorm_statistics_do_not_move_in_a_training_step():
    model = models.build_model("resnet18", 8)
    models.set_trainable(model, "last_tensors:10")
    before = {n: b.clone() for n, b in model.named_buffers()}
    models.set_train_mode(model, "eval")
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    loss = nn.functional.cross_entropy(model(torch.randn(4, 3, 64, 64)), torch.tensor([0, 1, 2, 3]))
    loss.backward()
    optimizer.step()
    moved = {n.rpartition(".")[0] for n, b in model.named_buffers() if not torch.equal(b, before[n])}
    trainable_bn = {n for n, m in model.named_modules()
                    if isinstance(m, nn.BatchNorm2d) and m.weight.requires_grad}
    assert moved == trainable_bn == {"layer4.0.downsample.1", "layer4.1.bn1", "layer4.1.bn2"}
    assert not model.layer1[0].bn1.training and model.layer4[1].bn2.training


def test_missing_weights_offline_name_the_file_and_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(KvasirError, match=r"resnet50-0676ba61\.pth is not in .*checkpoints(.|\n)*smoke"):
        models.build_model("resnet50", 8, weights="IMAGENET1K_V1", offline=True)


def test_offline_every_weights_file_a_run_loads_is_checked_before_anything_runs(tmp_path, monkeypatch):
    from kvasir_utils import profiles

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "hub"))
    settings = ["train.weights=IMAGENET1K_V1", "split.near_duplicates.features_model=resnet18"]
    cfg = profiles.load_profile("smoke", settings)
    assert weights.models_needing_weights(cfg) == ["resnet50", "efficientnet_b0", "resnet18"]
    with pytest.raises(KvasirError, match=r"offline: the weights file resnet50-0676ba61\.pth is not in"):
        weights.check_weights_offline(cfg)
    for name in weights.models_needing_weights(cfg):  # present (the hash is checked where it is loaded)
        path = weights.weights_file(name, "IMAGENET1K_V1")
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")
    weights.check_weights_offline(cfg)
    given = profiles.load_profile("smoke", [*settings, f"train.weights_files={{resnet18: {{file: {tmp_path}/r.pth}}}}"])
    with pytest.raises(KvasirError, match=r"weights file of resnet18 in train.weights_files, .*r\.pth, does not exist"):
        weights.check_weights_offline(given)
    weights.check_weights_offline(profiles.load_profile("smoke", [*settings[:1], "runtime.offline=false",
                                                                   "train.weights_files={resnet18: {file: /x}}"]))
    assert weights.models_needing_weights(profiles.load_profile("smoke")) == []  # random init: nothing to load


def _hub_file(tmp_path, monkeypatch, state: dict, name: str = "resnet18") -> str:
    """A weights file in a temporary torch hub folder, named ``<name>-<its own hash prefix>.pth``
    the way torchvision names its files; the weights enum is pointed at it."""
    import hashlib
    import types

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    folder = tmp_path / "hub" / "checkpoints"
    folder.mkdir(parents=True)
    torch.save(state, folder / "tmp.pth")
    prefix = hashlib.sha256((folder / "tmp.pth").read_bytes()).hexdigest()[:8]
    (folder / "tmp.pth").rename(folder / f"{name}-{prefix}.pth")
    enum = types.SimpleNamespace(url=f"https://download.example/models/{name}-{prefix}.pth")
    monkeypatch.setattr(weights, "weights_enum", lambda model, name: enum)  # where build_model looks it up
    return prefix


def test_weights_in_the_torch_hub_cache_are_checked_and_loaded(tmp_path, monkeypatch):
    reference = __import__("torchvision").models.resnet18()
    _hub_file(tmp_path, monkeypatch, reference.state_dict())
    model = models.build_model("resnet18", 8, weights="IMAGENET1K_V1", offline=True)
    assert torch.equal(model.conv1.weight, reference.conv1.weight) and model.fc.out_features == 8


def test_a_damaged_weights_file_is_named_with_its_expected_hash(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    path = weights.weights_file("resnet50", "IMAGENET1K_V1")
    path.parent.mkdir(parents=True)
    path.write_bytes(b"PK\x03\x04 the first bytes of a truncated copy")
    with pytest.raises(KvasirError, match=r"resnet50-0676ba61\.pth is damaged .* expected 0676ba61(.|\n)*Delete it and "
                                          r"download it again from https://download.pytorch.org"):
        models.build_model("resnet50", 8, weights="IMAGENET1K_V1", offline=True)


def test_weights_of_another_file_under_the_name_are_refused(tmp_path, monkeypatch):
    prefix = _hub_file(tmp_path, monkeypatch, __import__("torchvision").models.resnet18().state_dict())
    path = tmp_path / "hub" / "checkpoints" / f"resnet18-{prefix}.pth"
    torch.save(__import__("torchvision").models.resnet18().state_dict(), path)  # other random weights
    with pytest.raises(KvasirError, match=f"expected {prefix}"):
        models.build_model("resnet18", 8, weights="IMAGENET1K_V1", offline=True)


def test_every_model_and_reading_is_checked_without_building_weights():
    models.check_readings(["resnet50", "efficientnet_b0"], {"a": "head", "b": "last_tensors:10"}, "IMAGENET1K_V1")
    with pytest.raises(KvasirError) as error:
        models.check_readings(["resnet50", "efficientnet_b0", "resnet51"], {"train.stage2.trainable": "block:layer4.2"},
                              "IMAGENET1K_V2")
    lines = str(error.value).splitlines()[1:]
    assert [line.split(":")[0].strip() for line in lines] == [
        "train.stage2.trainable for efficientnet_b0", "train.weights for efficientnet_b0", "train.models"]


def test_unknown_weights_and_models_list_what_is_allowed():
    with pytest.raises(KvasirError, match="allowed: IMAGENET1K_V1, IMAGENET1K_V2 or null"):
        models.build_model("resnet50", 8, weights="V3")
    with pytest.raises(KvasirError, match="unknown torchvision model 'resnet51'"):
        models.build_model("resnet51", 8)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_a_torchvision_model_takes_its_weights_from_a_file_bit_for_bit(tmp_path, suffix):
    from safetensors.torch import save_file

    from kvasir_utils.config import WeightsFile
    from kvasir_utils.files import sha256_file

    reference = __import__("torchvision").models.resnet18().state_dict()
    path = tmp_path / f"resnet18{suffix}"
    torch.save(reference, path) if suffix == ".pth" else save_file(reference, str(path))
    model = models.build_model("resnet18", 8, weights_file=WeightsFile(file=str(path), sha256=sha256_file(path)))
    for name, tensor in model.state_dict().items():
        if not name.startswith("fc."):
            assert torch.equal(tensor, reference[name]), name
    with pytest.raises(KvasirError, match=r"resnet18\.(pth|safetensors) \(train.weights_files\) does not fit resnet34"):
        models.build_model("resnet34", 8, weights_file=WeightsFile(file=str(path)))


def test_torchvision_models_keep_their_paths_and_readings_beside_timm():
    """The paper's models are built and named as before timm came in: same folders, same heads."""
    from kvasir_utils.artefacts import model_folder

    assert [model_folder(n) for n in ("resnet50", "efficientnet_b0")] == ["resnet50", "efficientnet_b0"]
    models.check_readings(["resnet50", "timm:test_vit"], {"a": "head", "b": "last_tensors:10"}, "IMAGENET1K_V1")


def test_the_weights_check_runs_only_while_a_step_that_loads_them_is_to_run(tmp_path, monkeypatch):
    from kvasir_utils import profiles
    from kvasir_utils.run import cli, notebooks
    from tests.helpers import tmp_overrides

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "hub"))
    settings = [*tmp_overrides(tmp_path), "train.weights=IMAGENET1K_V1"]
    cfg = profiles.load_profile("smoke", settings)
    assert cli.weights_still_needed(cfg) and not cli.weights_still_needed(profiles.load_profile("smoke"))
    sets = [a for o in settings for a in ("--set", o)]
    assert cli.main(["makevars", "--profile", "smoke", *sets]) == 1  # stops: the file is missing
    assert cli.main(["makevars", "--profile", "smoke", "--no-weights-check", *sets]) == 0  # make clean
    for name, model in [("01_download_and_split", None), *(("02_train", m) for m in cfg.train.models)]:
        stamp = notebooks.executed_notebook_path(cfg, name, model)
        stamp.parent.mkdir(parents=True, exist_ok=True)
        stamp.write_text("{}")
    assert not cli.weights_still_needed(cfg)  # trained: later steps load checkpoints only
    assert cli.main(["makevars", "--profile", "smoke", *sets]) == 0
