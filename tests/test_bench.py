"""make bench's projection, checked by hand on given rates (the rates themselves are measured)."""

import pytest

from kvasir_utils import bench
from kvasir_utils.config import load_profile


def test_the_protocol_is_projected_from_the_measured_stage_rates():
    cfg = load_profile("paper")  # 8,000 images: 6,400 train, 1,600 validation; 5 + 5 epochs
    measured = {"data_stage_seconds_per_image": 0.01, "stages": [
        {"model": "resnet50", "stage": "stage1", "measured_images_per_s": 40.0, "val_images_per_s": 80.0},
        {"model": "resnet50", "stage": "stage2", "measured_images_per_s": 32.0, "val_images_per_s": 80.0},
        {"model": "efficientnet_b0", "stage": "stage1", "measured_images_per_s": 64.0, "val_images_per_s": 160.0},
        {"model": "efficientnet_b0", "stage": "stage2", "measured_images_per_s": 64.0, "val_images_per_s": 160.0},
    ]}
    projection = bench.project_protocol(cfg, measured)
    expected = (8000 * 0.01                                    # data stage
                + 5 * (6400 / 40 + 1600 / 80) + 5 * (6400 / 32 + 1600 / 80)   # ResNet50: 900 + 1100
                + 10 * (6400 / 64 + 1600 / 160)                 # EfficientNet-B0: 1100
                + 1600 / 80 + 1600 / 160)                       # notebook 04, both models
    assert projection["protocol_minutes"] == pytest.approx(expected / 60)
    assert [row["seconds"] for row in projection["stages"]] == pytest.approx([900, 1100, 550, 550])
