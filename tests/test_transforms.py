"""The paper's presets: what each does to an image, checked on real PIL images."""

import numpy as np
import pytest
import torch
from PIL import Image

from kvasir_utils.config import TransformsConfig
from kvasir_utils.data import overlays, synthetic
from kvasir_utils.train import presets
from tests.helpers import paper_settings


def _frame(width=120, height=80) -> Image.Image:
    """A frame whose left half is red and right half blue, with a green top row, so crops,
    flips and squashes are visible in the output."""
    pixels = np.zeros((height, width, 3), np.uint8)
    pixels[:, : width // 2, 0] = 255
    pixels[:, width // 2:, 2] = 255
    pixels[0, :, 1] = 255
    return Image.fromarray(pixels)


def _unnormalize(tensor: torch.Tensor, t: TransformsConfig) -> np.ndarray:
    mean, std = torch.tensor(t.mean)[:, None, None], torch.tensor(t.std)[:, None, None]
    return ((tensor * std + mean).clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()


def test_eval_squash_keeps_the_whole_frame_and_normalizes_with_imagenet_statistics():
    t = paper_settings("transforms", image_size=32)
    out = presets.eval_preset(t)(_frame())
    assert out.shape == (3, 32, 32) and out.dtype == torch.float32
    image = _unnormalize(out, t)
    assert image[16, 2, 0] > 200 and image[16, 29, 2] > 200  # both halves are still there
    red = (torch.tensor([1.0, 0, 0])[:, None] - torch.tensor(t.mean)[:, None]) / torch.tensor(t.std)[:, None]
    assert out[:, 16, 2] == pytest.approx(red[:, 0], abs=0.05)


def test_eval_center_crop_cuts_the_sides_of_a_wide_frame():
    t = paper_settings("transforms", image_size=32, eval_resize="center_crop")
    image = _unnormalize(presets.eval_preset(t)(_frame(width=200, height=40)), t)
    squash_preset = presets.eval_preset(paper_settings("transforms", image_size=32))
    squash = _unnormalize(squash_preset(_frame(width=200, height=40)), t)
    # the centre crop of a 5:1 frame is mostly the middle: red and blue meet in the middle column
    assert image[20, 0, 0] > 200 and image[20, 31, 2] > 200
    assert image.shape == squash.shape == (32, 32, 3)
    assert not np.array_equal(image, squash)


def test_train_preset_draws_crops_flips_rotations_and_colour_from_the_seed():
    t = paper_settings("transforms", image_size=32)
    preset = presets.train_preset(t)
    frame = _frame()
    torch.manual_seed(0)
    first = [preset(frame) for _ in range(8)]
    torch.manual_seed(0)
    again = [preset(frame) for _ in range(8)]
    assert all(torch.equal(a, b) for a, b in zip(first, again))
    assert all(x.shape == (3, 32, 32) for x in first)
    assert len({x.numpy().tobytes() for x in first}) == 8  # every draw differs


def test_flips_happen_at_their_probability():
    t = paper_settings("transforms", image_size=32, crop_scale=[1.0, 1.0], crop_ratio=[1.5, 1.5], rotation_degrees=0,
                         brightness=0, contrast=0, vflip_p=0.0, hflip_p=0.5)
    preset = presets.train_preset(t)
    torch.manual_seed(1)
    red_left = [_unnormalize(preset(_frame()), t)[16, 2, 0] > 200 for _ in range(400)]
    assert 0.42 < 1 - np.mean(red_left) < 0.58  # about half are mirrored


def test_masking_blacks_out_the_guide_box_before_the_other_transforms():

    frame = synthetic.draw_overlays(Image.new("RGB", (720, 576), (150, 80, 70)), True, 0.5, "ID 1")
    assert overlays.has_guide_box(frame)
    t = paper_settings("transforms", image_size=64, mask_overlays="guide_box")
    image = _unnormalize(presets.eval_preset(t)(frame), t)
    left, top, right, bottom = overlays.region_pixels((64, 64), overlays.GUIDE_BOX)
    assert image[top + 2:bottom - 2, left + 2:right - 2].max() <= 1  # black where the box was
    assert image[5:20, 40:60].mean() > 50  # the rest of the frame is untouched
    unmasked = _unnormalize(presets.eval_preset(paper_settings("transforms", image_size=64))(frame), t)
    assert unmasked[top + 2:bottom - 2, left + 2:right - 2].max() > 100
    assert "MaskOverlays" in repr(presets.train_preset(t))
