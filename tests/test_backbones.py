"""timm backbones beside torchvision's, their pretrained weights from a file or the hub cache (never
the network), and LoRA stages (peft): tiny timm test models at 32 px, random init, in seconds."""

import json
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from kvasir_utils import artefacts
from kvasir_utils.errors import KvasirError
from kvasir_utils.train import checkpoints, explain, export, hardware, lora, models, stages, weights
from tests.helpers import paper_settings, tiny_config

VIT = "timm:test_vit"  # timm's smallest ViT (patch 16, 6 blocks of width 64, fused qkv): 0.3 M parameters
DINOV2_S = "timm:vit_small_patch14_dinov2.lvd142m"


def _train(cfg, model_name, stage, on_epoch_end=None):
    runtime = hardware.resolve_runtime(cfg.runtime)
    model = stages.model_for_stage(cfg, model_name, stage)
    history = stages.fit_stage(model, cfg, model_name, stage, stages.make_loaders(cfg, runtime), runtime,
                               on_epoch_end=on_epoch_end)
    return model, history


@pytest.fixture
def runs(tiny_data, tmp_path):
    (tmp_path / "runs" / "smoke").mkdir(parents=True)
    shutil.copy(tiny_data / "runs" / "smoke" / "split.csv", tmp_path / "runs" / "smoke" / "split.csv")
    return tmp_path / "runs"


def _lora_config(tiny_data, runs, *extra):
    return tiny_config(tiny_data, runs, [f"train.models=['{VIT}']", "train.stage1.epochs=1",
                                         "train.stage1.trainable=head", "train.stage2.epochs=2",
                                         "train.stage2.trainable=lora", "train.stage2.lr=1e-2", *extra])


# -- names and folders ---------------------------------------------------------------------
def test_a_timm_model_has_a_path_safe_folder_and_model_takes_either_form(tmp_path):
    assert artefacts.model_folder(DINOV2_S) == "timm-vit_small_patch14_dinov2.lvd142m"
    assert artefacts.model_folder("resnet50") == "resnet50"
    run = artefacts.RunFolder(tmp_path)
    assert run.checkpoint(DINOV2_S, "stage1") == tmp_path / "timm-vit_small_patch14_dinov2.lvd142m/stage1/checkpoint.pt"
    assert ":" not in artefacts.Figure.of_model(DINOV2_S, "confusion")
    names = ["resnet50", DINOV2_S]
    assert artefacts.model_named(names, "timm-vit_small_patch14_dinov2.lvd142m") == DINOV2_S
    assert artefacts.model_named(names, DINOV2_S) == DINOV2_S
    assert artefacts.model_named(names, "resnet50") == "resnet50"
    assert artefacts.model_named(names, "vit_small_patch14_dinov2.lvd142m") is None


# -- building ------------------------------------------------------------------------------
@pytest.mark.parametrize(("name", "head"), [(VIT, "head"), ("timm:test_convnext", "head.fc"),
                                            ("timm:test_efficientnet", "classifier")])
def test_timm_models_get_a_new_head_of_the_classes(name, head):
    model = models.build_model(name, 8)
    assert models.head_name(model) == head
    assert model.get_submodule(head).out_features == 8
    assert model(torch.zeros(2, 3, 32, 32)).shape == (2, 8)
    assert models.set_trainable(model, "head") == [f"{head}.weight", f"{head}.bias"]


def test_dinov2_is_built_at_the_profiles_size_not_the_518_px_timm_reports():
    with torch.device("meta"):
        model = models.build_model(DINOV2_S, 8, image_size=56)
    assert models.model_settings(DINOV2_S)["image_size"] == 518  # what timm's pretrained configuration says
    assert tuple(model.patch_embed.grid_size) == (4, 4)
    assert model.pos_embed.shape == (1, 1 + 16, 384)  # the class token and a 4 x 4 grid of 14 px patches


def test_null_transforms_take_the_models_own_input_and_set_ones_win(tiny_data, runs):
    paper = tiny_config(tiny_data, runs)
    assert models.for_model(paper, VIT) is paper  # every value set: the profile's, untouched
    cfg = tiny_config(tiny_data, runs, ["transforms.mean=null", "transforms.std=null"])
    own = models.for_model(cfg, VIT).transforms
    assert (own.image_size, own.mean, own.std) == (32, [0.5, 0.5, 0.5], [0.5, 0.5, 0.5])  # test_vit's statistics
    resnet = models.for_model(cfg, "resnet18").transforms
    assert (resnet.mean, resnet.std) == (models.TORCHVISION_SETTINGS["mean"], models.TORCHVISION_SETTINGS["std"])
    sized = models.for_model(tiny_config(tiny_data, runs, ["transforms.image_size=null", "cache.short_side=160"]), VIT)
    assert sized.transforms.image_size == 160


def test_the_profile_check_names_what_does_not_fit(tiny_data, runs):
    with pytest.raises(KvasirError, match=r"unknown timm model 'resnet5000'"):
        models.check_profile(tiny_config(tiny_data, runs, ["train.models=['timm:resnet5000']"]))
    with pytest.raises(KvasirError, match=r"ResNet has no such linear layer .* its linear layers are named fc"):
        models.check_profile(tiny_config(tiny_data, runs, ["train.models=[resnet18]", "train.stage2.trainable=lora"]))
    with pytest.raises(KvasirError, match=r"train.weights_files names 'resnet5000', which is no model"):
        models.check_profile(tiny_config(tiny_data, runs, ["train.weights_files={resnet5000: x.pth}"]))
    with pytest.raises(KvasirError, match=r"train.readings_by_model names 'timm:vit_huge', which is no model"):
        models.check_profile(tiny_config(tiny_data, runs, ["train.readings_by_model={timm:vit_huge: {stage2: lora}}"]))
    # a model the profile does not train may have an entry (a sweep's member trains one model of a profile)
    models.check_profile(tiny_config(tiny_data, runs, ["train.weights_files={resnet50: x.pth}"]))
    with pytest.raises(KvasirError, match=r"timm:test_vit takes 160 px .* more than cache.short_side \(40\)"):
        models.check_profile(tiny_config(tiny_data, runs, [f"train.models=['{VIT}']", "transforms.image_size=null"]))
    models.check_profile(_lora_config(tiny_data, runs))


# -- weights -------------------------------------------------------------------------------
def _weights_file(path, **kwargs):
    """A random test_vit's weights (32 px, 1000 classes, as a hub file would hold them), saved as ``path``."""
    torch.manual_seed(7)
    state = {k: v.contiguous() for k, v in models.build_model(VIT, 1000, image_size=32).state_dict().items()}
    save_file(state, str(path))
    return state


def test_a_run_with_weights_files_trains_from_that_file_bit_for_bit(tiny_data, runs, tmp_path):
    state = _weights_file(tmp_path / "vit.safetensors")
    cfg = tiny_config(tiny_data, runs, [f"train.models=['{VIT}']", "train.stage1.epochs=1",
                                        "train.stage1.trainable=head", "train.stage1.lr=1e-2",
                                        f"train.weights_files={{'{VIT}': {tmp_path / 'vit.safetensors'}}}"])
    _train(cfg, VIT, "stage1")
    trained = checkpoints.load_checkpoint(cfg.run.checkpoint(VIT, "stage1"), cfg.profile).model
    frozen = [k for k in trained if not k.startswith("head.")]
    assert len(frozen) == len(state) - 2  # the file's every tensor but its 1000-class head
    for key in frozen:
        assert torch.equal(trained[key], state[key]), key
    assert not torch.equal(trained["head.weight"], state["head.weight"][:8])
    record = weights.weights_origin(cfg, VIT)
    assert record["source"] == "file (train.weights_files)" and record["file"] == "vit.safetensors"
    assert record == json.loads(cfg.run.weights_record(VIT).read_text())  # weights.json, which provenance reads


def test_a_weights_file_is_checked_against_its_sha256_and_a_missing_one_is_named(tiny_data, runs, tmp_path):
    _weights_file(tmp_path / "vit.safetensors")
    wrong = "0" * 64
    cfg = tiny_config(tiny_data, runs, [f"train.models=['{VIT}']",
                                        f"train.weights_files={{'{VIT}': {{file: {tmp_path / 'vit.safetensors'}, "
                                        f"sha256: '{wrong}'}}}}"])
    with pytest.raises(KvasirError, match=r"is not the file train.weights_files names: its SHA-256 is [0-9a-f]{64}, "
                                          f"expected {wrong}"):
        models.stage_model(cfg, VIT, "stage1")
    missing = tiny_config(tiny_data, runs, [f"train.models=['{VIT}']",
                                            f"train.weights_files={{'{VIT}': {tmp_path / 'none.pth'}}}"])
    with pytest.raises(KvasirError, match=r"weights file of timm:test_vit .*none.pth, does not exist. Put the file "
                                          r"there \(downloaded from the Hugging Face hub repository timm/test_vit"):
        models.stage_model(missing, VIT, "stage1")


def test_offline_a_timm_model_loads_from_the_hub_cache_or_names_the_file_and_the_hub_id(tmp_path, monkeypatch):
    import huggingface_hub.constants

    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(KvasirError, match=r"offline: the weights of timm:test_vit \(model.safetensors of the Hugging "
                                          r"Face hub repository timm/test_vit.r160_in1k\) are not in the hub cache"):
        models.build_model(VIT, 8, "pretrained", offline=True, image_size=32)
    # the hub cache's layout: refs/main names the snapshot that holds the file
    repo = tmp_path / "hub" / "models--timm--test_vit.r160_in1k"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("abc123")
    (repo / "snapshots" / "abc123").mkdir(parents=True)
    state = _weights_file(repo / "snapshots" / "abc123" / "model.safetensors")
    model = models.build_model(VIT, 8, "pretrained", offline=True, image_size=32)
    assert torch.equal(model.blocks[0].attn.qkv.weight, state["blocks.0.attn.qkv.weight"])


# -- LoRA ----------------------------------------------------------------------------------
def test_the_lora_count_of_dinov2_vit_s_at_224_px():
    """The issue's measurement: rank 4 on qkv over 12 blocks of width 384, and the 8-class head."""
    with torch.device("meta"):
        model = lora.add_lora(models.build_model(DINOV2_S, 8, image_size=224), paper_settings("train").lora)
    trainable = models.set_trainable(model, "lora")
    assert lora.lora_parameter_count(model) == 12 * 4 * (384 + 3 * 384) == 73_728
    assert sum(model.get_parameter(n).numel() for n in trainable) == 73_728 + 384 * 8 + 8 == 76_808


def test_a_lora_stage_trains_the_adapters_and_the_head_and_records_its_count(tiny_data, runs):
    cfg = _lora_config(tiny_data, runs)
    stage1, _ = _train(cfg, VIT, "stage1")
    model, history = _train(cfg, VIT, "stage2")
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable == lora.adapter_names(model) + ["head.weight", "head.bias"]
    # computed from the model's layers: rank x (in + out) over the wrapped qkv layers, plus the head
    head = model.head.weight.numel() + model.head.bias.numel()
    assert models.trainable_counts(cfg, VIT) == {"stage1": head, "stage2": lora.lora_parameter_count(model) + head}
    width = model.embed_dim  # test_vit: 6 blocks of width 64; qkv maps width to 3 x width, rank 4
    assert lora.lora_parameter_count(model) == len(model.blocks) * 4 * (width + 3 * width) == 6144
    saved = checkpoints.load_checkpoint(cfg.run.checkpoint(VIT, "stage2"), cfg.profile)
    assert "blocks.0.attn.qkv.base_layer.weight" in saved.model  # peft's wrapped state dict
    # the frozen base is stage 1's, bit for bit; the adapters moved
    plain = checkpoints.load_checkpoint(cfg.run.checkpoint(VIT, "stage1"), cfg.profile).model
    assert torch.equal(saved.model["blocks.3.attn.qkv.base_layer.weight"], plain["blocks.3.attn.qkv.weight"])
    assert saved.model["blocks.3.attn.qkv.lora_B.default.weight"].abs().sum() > 0
    assert len(history) == 2


def test_an_interrupted_lora_stage_resumes_to_the_same_weights(tiny_data, tmp_path):
    whole_runs, cut_runs = tmp_path / "whole", tmp_path / "cut"
    for folder in (whole_runs, cut_runs):
        (folder / "smoke").mkdir(parents=True)
        shutil.copy(tiny_data / "runs" / "smoke" / "split.csv", folder / "smoke" / "split.csv")
    whole = _lora_config(tiny_data, whole_runs)
    _train(whole, VIT, "stage1")
    expected, _ = _train(whole, VIT, "stage2")

    cut = _lora_config(tiny_data, cut_runs)
    _train(cut, VIT, "stage1")

    def interrupt(row):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        _train(cut, VIT, "stage2", on_epoch_end=interrupt)
    assert checkpoints.load_checkpoint(cut.run.checkpoint(VIT, "stage2"), cut.profile).epoch == 1
    resumed, history = _train(cut, VIT, "stage2")
    assert list(history["epoch"]) == [1, 2]
    for (name, a), b in zip(expected.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), name


def test_a_lora_model_restores_merges_and_exports_with_onnx_parity(tiny_data, runs):
    import onnxruntime

    cfg = _lora_config(tiny_data, runs)
    trained = models.stage_model(cfg, VIT, "stage2")
    with torch.no_grad():  # adapters as training leaves them: B no longer zero
        for name in lora.adapter_names(trained):
            trained.get_parameter(name).normal_(0, 0.5)
    model = models.restore(cfg, VIT, "stage2", trained.state_dict()).eval()  # a checkpoint's peft state dict
    merged = lora.merged(model)
    assert not lora.has_lora(merged) and lora.has_lora(model)  # the model itself keeps its adapters
    assert set(merged.state_dict()) == set(models.build_model(VIT, 8, image_size=32).state_dict())
    images = torch.randn(4, 3, 32, 32)
    # the adapters are folded into the weights, not dropped
    assert not torch.equal(merged.blocks[0].attn.qkv.weight, model.blocks[0].attn.qkv.base_layer.weight)
    with torch.inference_mode():
        reference = model(images).numpy()
    session = onnxruntime.InferenceSession(export.onnx_bytes(merged, 32), providers=["CPUExecutionProvider"])
    ours = session.run([export.OUTPUT], {export.INPUT: images.numpy()})[0]
    assert np.abs(ours - reference).max() < 1e-4


def test_grad_cam_of_a_vit_is_a_map_of_its_patch_grid():
    from PIL import Image

    model = models.build_model(VIT, 8, image_size=32)
    assert explain.cam_map_size(model, 32) == (2, 2)  # 32 px in 16 px patches
    images = [Image.new("RGB", (40, 40), (120, 60, 30))] * 2
    overlays = explain.gradcam_overlays(model, images, torch.randn(2, 3, 32, 32), [0, 3])
    assert [o.shape for o in overlays] == [(40, 40, 3)] * 2
