"""`make smoke PROFILE=smoke-backbones` as a user runs it: ResNet50, a DINOv2 ViT-S/14 whose stage 2
trains LoRA adapters, and ConvNeXt-Tiny (timm) through the whole study; then `make export` (ONNX
parity) and `make predict` on each timm model. The long tier (make test-long)."""

import json
import shutil
from pathlib import Path

import pandas as pd
import pytest

from kvasir_utils import artefacts, profiles
from kvasir_utils.config import cached_name
from kvasir_utils.data import prepare
from kvasir_utils.report import formats
from tests.helpers import lora_count, tmp_overrides
from tests.processes import run_make

pytestmark = [pytest.mark.long, pytest.mark.xdist_group("backbones")]
VIT, CONVNEXT = "timm:vit_small_patch14_dinov2.lvd142m", "timm:convnext_tiny.fb_in22k_ft_in1k"


def test_the_backbones_study_runs_whole_and_its_timm_models_export_and_predict(tmp_path):
    sets = f"SET={' '.join([*tmp_overrides(tmp_path), 'eval.bootstrap_samples=50'])}"
    done = run_make("smoke", "PROFILE=smoke-backbones", sets, timeout=2400)
    assert done.returncode == 0, done.stdout[-4000:]
    cfg = profiles.load_profile("smoke-backbones", [*tmp_overrides(tmp_path), "eval.bootstrap_samples=50"])
    index = cfg.report.index.read_text()
    assert "The 3 models side by side" in index
    for model in cfg.train.models:
        assert formats.model_name(model) in index
        assert cfg.run.metrics(model).exists()
    metrics = artefacts.read_metrics(cfg.run.metrics(VIT))
    assert metrics["trainable_parameters"]["stage2"] == lora_count(cfg, VIT)  # rank 4 on each qkv, and the head
    # the smoke profile trains every parameter in stage 1; the evaluated model adds stage 2's adapters
    head = (384 + 1) * len(cfg.classes)  # ViT-S/14's 384 features to the new head
    assert metrics["trainable_parameters"]["stage1"] + lora_count(cfg, VIT) - head == metrics["parameters"]

    images = tmp_path / "frames"  # six validation frames, as a user would bring a folder of images
    images.mkdir()
    split = pd.read_csv(cfg.run.split)
    for path in split.loc[split["split"] == "val", "path"].head(6):
        shutil.copy(prepare.cache_dir(cfg) / cached_name(path), images / Path(path).name)
    for model in (VIT, CONVNEXT):
        exported = run_make("export", "PROFILE=smoke-backbones", f"MODEL={model}", sets)
        assert exported.returncode == 0, exported.stdout[-3000:]
        parity = json.loads((cfg.report.model_dir(model) / "export" / "parity.json").read_text())
        assert parity["passed"], parity
        name = artefacts.model_folder(model)  # MODEL= takes the folder name too
        predicted = run_make("predict", "PROFILE=smoke-backbones", f"MODEL={name}", f"IMAGES={images}",
                             f"NAME={name}", sets)
        assert predicted.returncode == 0, predicted.stdout[-3000:]
        table = pd.read_csv(cfg.report.predict_dir(name) / artefacts.PREDICTIONS)
        assert len(table) == 6 and set(table["predicted"]) <= set(cfg.classes)
