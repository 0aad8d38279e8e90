"""`make export` on the smoke chain's two models: ONNX with a dynamic batch, its preprocessing as data,
and the parity check against PyTorch at batch 1 and 32 (real onnxruntime, real files)."""

import contextlib
import copy
import hashlib
import io
import json

import numpy as np
import onnx
import pytest
import torch
from PIL import Image

from kvasir_utils.data import prepare
from kvasir_utils.data.layout import find_classes
from kvasir_utils.run import cli
from kvasir_utils.train import export, hardware, presets
from kvasir_utils.train.predict import Predictor

pytestmark = [pytest.mark.slow, pytest.mark.xdist_group("chain")]


@pytest.fixture(scope="module")
def exported(smoke_chain):
    """`python -m kvasir_utils export` (what `make export` runs) for each model: {model: (exit code, folder)}."""
    found = {}
    for model in smoke_chain.train.models:
        with contextlib.redirect_stdout(io.StringIO()):
            code = cli.main(["export", "--profile", "smoke", *[a for o in smoke_chain.overrides for a in ("--set", o)],
                             "--model", model])
        found[model] = code, smoke_chain.report.model_dir(model) / "export"
    return found


def test_export_passes_its_parity_check_for_both_models(exported, smoke_chain):
    for model, (code, folder) in exported.items():
        assert code == 0, model
        parity = json.loads((folder / "parity.json").read_text())
        assert parity["passed"] and parity["opset"] == export.OPSET and parity["images"] == 64
        assert [c["batch_size"] for c in parity["checks"]] == [1, 32]
        for check in parity["checks"]:
            assert check["images"] == 64 and check["top1_agreement"] == 1.0
            # 0 is a pass too: where ONNX Runtime and PyTorch pick the same kernels, they agree exactly
            # (that ONNX Runtime is what the check runs: the last test of this module)
            assert 0 <= check["max_abs_diff"] <= 1e-3
        assert parity["onnx_sha256"] == hashlib.sha256((folder / "model.onnx").read_bytes()).hexdigest()
    # the index was rendered again: it links each export instead of naming the command that writes it
    index = smoke_chain.report.index.read_text()
    assert index.count(">model.onnx</a>") == len(exported) and "writes it" not in index


def test_the_onnx_model_names_its_opset_and_takes_any_batch_size(exported):
    for _, folder in exported.values():
        graph = onnx.load(str(folder / "model.onnx"))
        onnx.checker.check_model(graph)
        assert {o.domain: o.version for o in graph.opset_import}[""] == export.OPSET
        (image,), (logits,) = graph.graph.input, graph.graph.output
        assert (image.name, logits.name) == ("image", "logits")
        assert image.type.tensor_type.shape.dim[0].dim_param == "batch"
        assert [d.dim_value for d in logits.type.tensor_type.shape.dim][1:] == [8]


def test_preprocessing_json_followed_literally_gives_the_models_input(exported, smoke_chain):
    """PIL and NumPy only, as a user of model.onnx elsewhere would, from an original image file: the same
    input as the study's own path (Predictor)."""
    steps = json.loads((exported["resnet50"][1] / "preprocessing.json").read_text())
    assert steps["class_names"] == smoke_chain.data.classes and steps["resize_mode"] == "squash"
    assert steps["mask_overlays"] == "none" and steps["image_size"] == smoke_chain.transforms.image_size
    cache, size = steps["cache"], steps["image_size"]
    predictor = Predictor.from_run(smoke_chain.run_dir, "resnet50")
    root = find_classes(prepare.images_dir(smoke_chain), smoke_chain.data.classes).root
    for original in sorted(root.rglob("*.jpg"))[:3]:  # 720x576 or larger: drafted at 1/8 scale
        with Image.open(original) as image:
            scale = min(1.0, cache["short_side"] / min(image.size))
            shape = tuple(max(1, round(side * scale)) for side in image.size)
            image.draft("RGB", shape)
            encoded = io.BytesIO()
            image.convert("RGB").resize(shape, Image.BICUBIC, reducing_gap=cache["reducing_gap"]).save(
                encoded, format="JPEG", quality=cache["jpeg_quality"])
        squashed = Image.open(encoded).convert("RGB").resize((size, size), Image.BILINEAR)
        theirs = ((np.asarray(squashed, np.float32) / 255 - steps["mean"]) / steps["std"]).transpose(2, 0, 1)
        ours = presets.eval_preset(predictor.cfg.transforms)(predictor.read(original)).numpy()
        assert theirs == pytest.approx(ours, abs=1e-5), original


def test_the_parity_check_catches_a_model_that_computes_something_else(smoke_chain):
    predictor = Predictor.from_run(smoke_chain.run_dir, "efficientnet_b0",
                                   hardware.Runtime(torch.device("cpu"), "fp32", workers=0))
    other = copy.deepcopy(predictor.model)
    with torch.no_grad():
        other.classifier[1].bias[3] += 0.01  # one logit moved by ten times the tolerance
    parity = export.parity_check(export.onnx_bytes(other, smoke_chain.transforms.image_size), predictor)
    assert not parity["passed"]
    assert all(c["max_abs_diff"] == pytest.approx(0.01, abs=1e-4) for c in parity["checks"])
