"""The device backend against the PIL reference (presets.train_preset): same parameter
distributions, same pixels where the parameters are fixed, padding that never shows."""

import pickle

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import stats
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

from kvasir_utils.config import TransformsConfig
from kvasir_utils.data import overlays, synthetic
from kvasir_utils.train import augment, presets
from tests.helpers import paper_settings

SIZES = [(256, 320), (256, 459), (256, 256)]  # (h, w): the cache's short side 256, long side varies
DRAWS = 4002  # parameter sets per backend, the sizes in turn
KS_MIN_P = 1e-3


def _frame(size=(256, 320), seed=0) -> Image.Image:
    """A synthetic endoscopy frame (h, w) with fine noise on top, so resampling differences show."""
    rng = np.random.default_rng(seed)
    pixels = np.asarray(synthetic.make_image(rng, seed % 8, (size[1], size[0]))).astype(np.int16)
    pixels = pixels + rng.integers(-40, 40, pixels.shape)
    return Image.fromarray(pixels.clip(0, 255).astype(np.uint8))


def _batch(frames, t=None):
    to_tensor = augment.to_uint8_tensor(t or paper_settings("transforms"))
    return augment.pad_collate([(to_tensor(frame), i) for i, frame in enumerate(frames)])


def _fixed_params(boxes, **changes) -> dict:
    """Parameters with nothing random left: the given crop boxes, no flip, rotation or colour."""
    n = len(boxes)
    params = {"boxes": torch.tensor(boxes), "hflip": torch.zeros(n, dtype=torch.bool),
              "vflip": torch.zeros(n, dtype=torch.bool), "angle": torch.zeros(n), "brightness": None,
              "contrast": None, "brightness_first": torch.ones(n, dtype=torch.bool)}
    return params | changes


def _unnormalize(x: torch.Tensor, t: TransformsConfig) -> torch.Tensor:
    return x * torch.tensor(t.std)[:, None, None] + torch.tensor(t.mean)[:, None, None]


# -- parameters: the same distributions as torchvision's ------------------------------------------
def _summaries(sizes, boxes, hflip, vflip, angle, brightness, contrast, brightness_first) -> dict:
    sizes, boxes = np.asarray(sizes, float), np.asarray(boxes, float)
    top, left, h, w = boxes.T
    return {
        "area_fraction": h * w / (sizes[:, 0] * sizes[:, 1]),
        "log_aspect": np.log(w / h),
        "centre_x": (left + w / 2) / sizes[:, 1],
        "centre_y": (top + h / 2) / sizes[:, 0],
        "angle": np.asarray(angle, float),
        "brightness": np.asarray(brightness, float),
        "contrast": np.asarray(contrast, float),
        "hflip": np.asarray(hflip, float),
        "vflip": np.asarray(vflip, float),
        "brightness_first": np.asarray(brightness_first, float),
    }


def _device_draws(t: TransformsConfig, seed=0) -> dict:
    sizes = torch.tensor([SIZES[i % len(SIZES)] for i in range(DRAWS)])
    p = augment.DeviceAugment(t).sample_params(sizes, torch.Generator().manual_seed(seed))
    return _summaries(sizes, p["boxes"], p["hflip"], p["vflip"], p["angle"], p["brightness"], p["contrast"],
                      p["brightness_first"])


def _torchvision_draws(t: TransformsConfig, seed=0) -> dict:
    """The same number of draws from torchvision's own parameter functions (the PIL path's)."""
    crop = v2.RandomResizedCrop(t.image_size, scale=tuple(t.crop_scale), ratio=tuple(t.crop_ratio))
    rotation = v2.RandomRotation(t.rotation_degrees)
    jitter = v2.ColorJitter(brightness=t.brightness, contrast=t.contrast)
    images = [Image.new("RGB", (w, h)) for h, w in SIZES]
    torch.manual_seed(seed)
    rows = []
    for i in range(DRAWS):
        box = crop.make_params([images[i % len(SIZES)]])
        colour = jitter.make_params([])
        order = colour["fn_idx"].tolist()
        rows.append(([box["top"], box["left"], box["height"], box["width"]], torch.rand(1).item() < t.hflip_p,
                     torch.rand(1).item() < t.vflip_p, rotation.make_params([])["angle"],
                     colour["brightness_factor"], colour["contrast_factor"], order.index(0) < order.index(1)))
    boxes, hflip, vflip, angle, brightness, contrast, first = zip(*rows)
    sizes = [SIZES[i % len(SIZES)] for i in range(DRAWS)]
    return _summaries(sizes, boxes, hflip, vflip, angle, brightness, contrast, first)


@pytest.fixture(scope="module")
def torchvision_draws():
    return _torchvision_draws(paper_settings("transforms"))


def _binomial_close(a: np.ndarray, b: np.ndarray) -> bool:
    """Two rates agree within 4.5 standard errors of their difference."""
    pooled = (a.sum() + b.sum()) / (len(a) + len(b))
    se = np.sqrt(pooled * (1 - pooled) * (1 / len(a) + 1 / len(b)))
    return abs(a.mean() - b.mean()) <= 4.5 * se + 1e-12


def test_parameters_follow_torchvision_distributions(torchvision_draws):
    device = _device_draws(paper_settings("transforms"))
    for name in ("area_fraction", "log_aspect", "centre_x", "centre_y", "angle", "brightness", "contrast"):
        p = stats.ks_2samp(device[name], torchvision_draws[name]).pvalue
        assert p > KS_MIN_P, (name, p)
    for name in ("hflip", "vflip", "brightness_first"):
        assert _binomial_close(device[name], torchvision_draws[name]), name
        assert _binomial_close(device[name], np.full(DRAWS, 0.5)), name
    assert device["angle"].min() >= -30 and device["angle"].max() <= 30
    assert device["brightness"].min() >= 0.8 and device["brightness"].max() <= 1.2


def test_distribution_check_rejects_a_different_crop_scale(torchvision_draws):
    device = _device_draws(paper_settings("transforms", crop_scale=[0.3, 1.0]))
    assert stats.ks_2samp(device["area_fraction"], torchvision_draws["area_fraction"]).pvalue < 1e-6


def test_flip_probabilities_and_switched_off_colour_follow_the_settings():
    t = paper_settings("transforms", hflip_p=0.0, vflip_p=1.0, brightness=0.0, contrast=0.5, rotation_degrees=0)
    p = augment.DeviceAugment(t).sample_params(torch.tensor([[256, 320]] * 500), torch.Generator().manual_seed(1))
    assert not p["hflip"].any() and p["vflip"].all() and (p["angle"] == 0).all()
    assert p["brightness"] is None and p["contrast"].min() >= 0.5 and p["contrast"].max() <= 1.5


@pytest.mark.parametrize("size, scale, ratio", [
    ((100, 400), (1.0, 1.0), (0.75, 4 / 3)),  # too wide for the ratio range: full height, centred
    ((400, 100), (1.0, 1.0), (0.75, 4 / 3)),  # too tall: full width, centred
    ((100, 100), (1.0, 1.0), (0.5, 0.6)),  # square, ratio range below 1
    ((256, 320), (1.0, 1.0), (1.25, 1.25)),  # the whole image
])
def test_crop_fallback_is_torchvision_centre_crop(size, scale, ratio):
    expected = v2.RandomResizedCrop(8, scale=scale, ratio=ratio).make_params([Image.new("RGB", size[::-1])])
    boxes = augment.sample_crop_boxes(torch.tensor([size] * 3), scale, ratio, torch.Generator().manual_seed(0))
    assert boxes.tolist() == [[expected["top"], expected["left"], expected["height"], expected["width"]]] * 3


def test_crop_boxes_lie_inside_each_image_not_the_padded_batch():
    sizes = torch.tensor([[256, 256], [256, 459], [300, 256]] * 300)
    boxes = augment.sample_crop_boxes(sizes, (0.08, 1.0), (3 / 4, 4 / 3), torch.Generator().manual_seed(2))
    top, left, h, w = boxes.T
    assert (top >= 0).all() and (left >= 0).all() and (h > 0).all() and (w > 0).all()
    assert (top + h <= sizes[:, 0]).all() and (left + w <= sizes[:, 1]).all()


# -- the output -------------------------------------------------------------------------------------------
def test_output_shape_dtype_device_and_range():
    t = paper_settings("transforms", image_size=64)
    images, sizes, targets = _batch([_frame(s, seed=i) for i, s in enumerate(SIZES)])
    assert images.dtype == torch.uint8 and images.shape == (3, 3, 256, 459)
    assert sizes.tolist() == [list(s) for s in SIZES] and targets.tolist() == [0, 1, 2]
    out = augment.DeviceAugment(t)(images, sizes, torch.Generator().manual_seed(0))
    assert out.shape == (3, 3, 64, 64) and out.dtype == torch.float32 and out.device == images.device
    pixels = _unnormalize(out, t)
    assert pixels.min() >= -1e-5 and pixels.max() <= 1 + 1e-5 and pixels.std() > 0.05
    with pytest.raises(ValueError, match="larger than the padded batch"):
        augment.DeviceAugment(t)(images[:, :, :200], sizes, torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match="uint8 batch"):
        augment.DeviceAugment(t)(images.float(), sizes, torch.Generator().manual_seed(0))


def test_padding_never_leaks_into_the_crop():
    t = paper_settings("transforms", image_size=64)
    small, large = _frame((256, 256), seed=1), _frame((300, 459), seed=2)
    images, sizes, _ = _batch([small, large])
    images[0, :, 256:, :] = 255  # fill the small image's padding with white: none of it may show
    images[0, :, :, 256:] = 255
    aug = augment.DeviceAugment(t)
    params = aug.sample_params(sizes, torch.Generator().manual_seed(3))
    params["boxes"][0] = torch.tensor([0, 0, 256, 256])  # the whole image, up to the padding's edge
    alone, _, _ = _batch([small])
    together = aug.apply(images, params)
    first = {k: None if v is None else v[:1] for k, v in params.items()}
    torch.testing.assert_close(together[:1], aug.apply(alone, first), atol=1e-5, rtol=0)


def test_same_seed_same_batch_other_seed_other_batch():
    aug = augment.DeviceAugment(paper_settings("transforms", image_size=48))
    images, sizes, _ = _batch([_frame(s, seed=i) for i, s in enumerate(SIZES)])
    first = aug(images, sizes, torch.Generator().manual_seed(7))
    assert torch.equal(first, aug(images, sizes, torch.Generator().manual_seed(7)))
    assert not torch.equal(first, aug(images, sizes, torch.Generator().manual_seed(8)))


def test_loader_side_pieces_pickle_and_mask_the_overlays():
    t = paper_settings("transforms", mask_overlays="guide_box_and_text")
    to_tensor = pickle.loads(pickle.dumps(augment.to_uint8_tensor(t)))
    frame = _frame()
    expected = torch.from_numpy(np.array(overlays.MaskOverlays(t.mask_overlays)(frame))).permute(2, 0, 1)
    assert torch.equal(to_tensor(frame), expected) and not torch.equal(to_tensor(frame), F.pil_to_tensor(frame))
    assert torch.equal(augment.to_uint8_tensor(paper_settings("transforms"))(frame), F.pil_to_tensor(frame))
    assert pickle.loads(pickle.dumps(augment.pad_collate)) is augment.pad_collate


# -- the pixels: as the PIL path's where nothing is random ----------------------------------------------
PIXEL_TOLERANCE = 0.01  # mean |difference| in normalised units; rounding to uint8 alone gives ~0.005


@pytest.mark.parametrize("flip_p", [0.0, 1.0])
def test_pixels_match_the_pil_preset_with_fixed_settings(flip_p):
    h, w = 256, 320
    t = paper_settings("transforms", hflip_p=flip_p, vflip_p=flip_p, rotation_degrees=0, brightness=0, contrast=0,
                         crop_scale=[1.0, 1.0], crop_ratio=[w / h, w / h])
    frame = _frame((h, w))
    reference = presets.train_preset(t)(frame)
    images, sizes, _ = _batch([frame])
    out = augment.DeviceAugment(t)(images, sizes, torch.Generator().manual_seed(0))[0]
    assert (out - reference).abs().mean() < PIXEL_TOLERANCE
    # the tolerance tells a wrong flip or channel order apart
    assert (out.flip(-1) - reference).abs().mean() > 10 * PIXEL_TOLERANCE
    assert (out.flip(-2) - reference).abs().mean() > 10 * PIXEL_TOLERANCE
    assert (out[[2, 1, 0]] - reference).abs().mean() > 10 * PIXEL_TOLERANCE


@pytest.mark.parametrize("box", [(0, 0, 256, 320), (10, 20, 100, 80), (30, 5, 226, 300), (200, 250, 56, 70)])
def test_resized_crop_matches_pil_antialiased_bilinear(box):
    """Downscaled (antialiased in PIL) and upscaled crops, off centre and up to the edges."""
    frame = _frame()
    reference = F.pil_to_tensor(F.resized_crop(frame, *box, [224, 224], antialias=True)).float()
    images, _, _ = _batch([frame])
    out = augment.resized_crop(images, torch.tensor([box]), 224)[0]
    difference = (out - reference).abs()  # in grey levels: PIL rounds to uint8 (twice)
    assert difference.mean() < 0.4 and difference.max() <= 1.5


def test_rotation_matches_pil_nearest():
    t = paper_settings("transforms", image_size=224, brightness=0, contrast=0)
    frame = _frame((224, 224), seed=4)
    images, _, _ = _batch([frame] * 4)
    angles = torch.tensor([-30.0, -7.3, 12.5, 29.9])
    params = _fixed_params([(0, 0, 224, 224)] * 4, angle=angles)
    out = _unnormalize(augment.DeviceAugment(t).apply(images, params), t)
    for rotated, angle in zip(out, angles.tolist()):
        reference = F.pil_to_tensor(F.rotate(frame, angle)).float() / 255
        assert ((rotated - reference).abs() > 1e-4).float().mean() < 0.005  # only exact half-way ties differ
        assert rotated[:, 0, 0].abs().max() < 1e-4 and reference[:, 0, 0].max() == 0  # the corners: fill 0


def test_brightness_and_contrast_match_torchvision_in_either_order():
    x = torch.rand(2, 3, 16, 16)
    b, c = torch.tensor([1.3, 0.7]), torch.tensor([0.6, 1.4])
    out = augment.brightness_contrast(x.clone(), b, c, torch.tensor([True, False]))
    first = F.adjust_contrast(F.adjust_brightness(x[0], 1.3), 0.6)
    second = F.adjust_brightness(F.adjust_contrast(x[1], 1.4), 0.7)
    torch.testing.assert_close(out, torch.stack([first, second]), atol=1e-6, rtol=0)
    assert not torch.allclose(first, F.adjust_brightness(F.adjust_contrast(x[0], 0.6), 1.3), atol=1e-3)
    only_contrast = augment.brightness_contrast(x.clone(), None, c, torch.tensor([True, False]))
    torch.testing.assert_close(only_contrast[1], F.adjust_contrast(x[1], 1.4), atol=1e-6, rtol=0)


def test_colour_jitter_on_the_pil_path_agrees_with_fixed_factors():
    """The same fixed factors on the PIL path's uint8 image (ImageEnhance) land within rounding."""
    frame = _frame((64, 64), seed=5)
    reference = F.pil_to_tensor(F.adjust_contrast(F.adjust_brightness(frame, 1.15), 0.85)).float() / 255
    x = F.pil_to_tensor(frame)[None].float() / 255
    out = augment.brightness_contrast(x, torch.tensor([1.15]), torch.tensor([0.85]), torch.tensor([True]))[0]
    assert (out - reference).abs().mean() < 1.5 / 255
