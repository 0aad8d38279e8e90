"""The paper's training augmentations on the device, a batch at a time (the ``device`` backend).

``transforms.train_preset`` is the reference: torchvision v2 on PIL images, one image at a time in
the loader workers. On a GPU those CPU workers can hold the model back, so this backend lets the
workers only decode (``to_uint8_tensor``, the overlay masking included) and pad a batch
(``pad_collate``), and ``DeviceAugment`` does the same operations, in the same order, with
parameters drawn from the same distributions, on the whole batch on the training device:
RandomResizedCrop -> RandomHorizontalFlip -> RandomVerticalFlip -> RandomRotation -> ColorJitter
(brightness, contrast) -> float in [0, 1] -> Normalize.

What matches the PIL path:

* the parameters: ``sample_crop_boxes`` follows ``v2.RandomResizedCrop`` (10 attempts of area
  fraction ~ U(scale) and log aspect ratio ~ U(log ratio), each image against its own size, then
  the centre crop clamped to the ratio range); flips with their probabilities; angle ~ U(-deg, deg);
  brightness and contrast factors ~ U(max(0, 1 - x), 1 + x), and, as in ``v2.ColorJitter``, which of
  the two comes first is drawn per image (a factor range of zero turns that operation off);
* the crop and resize: PIL's bilinear resampling (a triangle filter, widened by the scale factor
  when downscaling, i.e. antialiased; weights renormalised at the crop's edges), written as two
  per-image resampling matrices so the whole batch is two batched matrix products; the flips are
  the same matrices reversed. Pixels outside an image's own crop box (the batch padding included)
  get weight zero;
* the rotation: about the centre, nearest neighbour, same output size, fill 0 (kornia's ``rotate``);
* brightness (multiply, clamp) and contrast (blend with the mean of the grayscale image, clamp), as
  torchvision's tensor kernels compute them.

What differs (the tests bound each against torchvision's PIL path):

* PIL rounds to uint8 after every operation (and between the two passes of the resize, in fixed
  point); here everything after the decode stays float32: resized crops differ by under 0.4 grey
  levels on average, at most about 1;
* both paths antialias when the crop is shrunk (PIL always does; the matrices here reproduce its
  filter), so that is not a difference; a plain ``grid_sample`` or kornia's ``crop_and_resize``
  would not antialias;
* PIL's contrast takes the mean of its integer "L" image rounded to an integer, here the float
  mean of 0.2989 R + 0.587 G + 0.114 B (torchvision's tensor formula);
* nearest-neighbour rotation picks the other pixel where a sample falls exactly half-way between
  two (well under 1 % of the pixels);
* the random numbers are different ones: the same distributions, not the same draws as the PIL
  path's for a given seed.

The random draws come only from the ``torch.Generator`` handed to each call, so the same seed gives
the same batch again (a resumed epoch repeats). A CPU generator gives the same parameters whatever
the device (the few numbers are then copied over); the pixels themselves may differ between devices
in the last float bits.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torchvision.transforms import v2

from kvasir_utils.config import TransformsConfig
from kvasir_utils.data.overlays import masking_steps

CROP_ATTEMPTS = 10  # as v2.RandomResizedCrop
# -- CPU side: decode, mask, pad -----------------------------------------------------------
def to_uint8_tensor(t: TransformsConfig) -> v2.Compose:
    """PIL image -> uint8 tensor 3 x H x W, the overlays masked first when ``t.mask_overlays`` says
    so: the loader workers' whole share of the work with the device backend (picklable)."""
    return v2.Compose([*masking_steps(t.mask_overlays), v2.PILToTensor()])


def pad_collate(samples) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """``(uint8 image 3 x h x w, target)`` pairs of differing sizes -> ``(images, sizes, targets)``:
    a uint8 batch B x 3 x Hmax x Wmax with each image at the top left and zeros elsewhere, the
    images' own ``(h, w)`` as a long tensor B x 2, and the targets as a long tensor B."""
    images, targets = zip(*samples)
    sizes = torch.tensor([tuple(image.shape[-2:]) for image in images], dtype=torch.long)
    batch = torch.zeros((len(images), 3, int(sizes[:, 0].max()), int(sizes[:, 1].max())), dtype=torch.uint8)
    for out, image in zip(batch, images):
        out[:, : image.shape[-2], : image.shape[-1]] = image
    return batch, sizes, torch.as_tensor(targets, dtype=torch.long)


# -- parameters ------------------------------------------------------------------------------
def _uniform(shape: tuple[int, ...], generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """U[0, 1) float32 numbers drawn from ``generator`` (on its own device), moved to ``device``."""
    return torch.rand(shape, generator=generator, device=generator.device).to(device)


def sample_crop_boxes(sizes: torch.Tensor, scale: Sequence[float], ratio: Sequence[float],
                      generator: torch.Generator, attempts: int = CROP_ATTEMPTS) -> torch.Tensor:
    """``v2.RandomResizedCrop``'s crop for each image of its own ``(h, w)`` (``sizes``, B x 2),
    vectorised: long tensor B x 4 of ``(top, left, height, width)`` on ``sizes``' device.

    Each of ``attempts`` tries draws an area fraction ~ U(scale) and a log aspect ratio ~
    U(log ratio), rounds width and height, and the first try that fits is placed uniformly; when none
    fits, the centre crop of the whole image, clamped to the ratio range."""
    device = sizes.device
    height, width = sizes[:, 0:1].float(), sizes[:, 1:2].float()
    u = _uniform((len(sizes), 2 * attempts + 2), generator, device)
    target_area = height * width * (scale[0] + (scale[1] - scale[0]) * u[:, :attempts])
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])
    aspect = torch.exp(log_lo + (log_hi - log_lo) * u[:, attempts: 2 * attempts])
    w = torch.round(torch.sqrt(target_area * aspect))
    h = torch.round(torch.sqrt(target_area / aspect))
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = fits.to(torch.uint8).argmax(dim=1, keepdim=True)  # the first try that fits
    found = fits.any(dim=1, keepdim=True)

    # fallback: the whole image, narrowed to the ratio range, in the centre
    in_ratio = width / height
    low, high = min(ratio), max(ratio)
    fallback_w = torch.where(in_ratio > high, torch.round(height * high), width)
    fallback_h = torch.where(in_ratio < low, torch.round(width / low), height)
    w = torch.where(found, w.gather(1, first), fallback_w)
    h = torch.where(found, h.gather(1, first), fallback_h)

    def place(free: torch.Tensor, draw: torch.Tensor) -> torch.Tensor:  # randint(0, free + 1)
        uniform = torch.minimum(torch.floor(draw * (free + 1)), free)
        return torch.where(found, uniform, torch.floor(free / 2))

    top = place(height - h, u[:, 2 * attempts: 2 * attempts + 1])
    left = place(width - w, u[:, 2 * attempts + 1:])
    return torch.cat([top, left, h, w], dim=1).long()


# -- operations --------------------------------------------------------------------------------
def resample_weights(start: torch.Tensor, length: torch.Tensor, in_size: int, out_size: int,
                     flip: torch.Tensor | None = None) -> torch.Tensor:
    """B x out_size x in_size weights that take pixels ``[start, start + length)`` of an axis of
    ``in_size`` pixels to ``out_size`` pixels as PIL's bilinear resize does: output pixel ``s`` is a
    triangle-filter average centred on ``(s + 0.5) * length / out_size``, the filter as wide as the
    scale factor when shrinking (antialiasing), weights renormalised at the span's edges. Pixels
    outside the span get weight zero. ``flip`` (bool, B) reverses the output for those images."""
    dtype, device = torch.float32, start.device
    start, length = start.to(dtype)[:, None, None], length.to(dtype)[:, None, None]
    scale = length / out_size
    support = torch.clamp(scale, min=1.0)
    centre = (torch.arange(out_size, dtype=dtype, device=device)[None, :, None] + 0.5) * scale  # B x S x 1
    # the taps: from PIL's first pixel on, enough for the widest filter a span of this axis can have
    taps = math.ceil(2 * max(in_size / out_size, 1.0)) + 1
    x = torch.floor(centre - support + 0.5).clamp_(min=0) + torch.arange(taps, dtype=dtype, device=device)
    weights = torch.clamp(1.0 - torch.abs(x + 0.5 - centre) / support, min=0.0) * (x < length)
    weights = weights / weights.sum(dim=-1, keepdim=True)
    if flip is not None:
        weights = torch.where(flip[:, None, None], weights.flip(1), weights)
        x = torch.where(flip[:, None, None], x.flip(1), x)
    index = (x + start).clamp_(max=in_size - 1).long()  # taps past the span have weight zero
    dense = torch.zeros((len(weights), out_size, in_size), dtype=dtype, device=device)
    return dense.scatter_add_(2, index, weights)


def resized_crop(images: torch.Tensor, boxes: torch.Tensor, size: int, hflip: torch.Tensor | None = None,
                 vflip: torch.Tensor | None = None) -> torch.Tensor:
    """Each image's box ``(top, left, height, width)`` resized to ``size`` x ``size`` (PIL's
    antialiased bilinear, see ``resample_weights``), flipped where ``hflip``/``vflip``: float32 in the
    input's value range."""
    _, _, in_h, in_w = images.shape
    across = resample_weights(boxes[:, 1], boxes[:, 3], in_w, size, hflip)  # B x S x W
    down = resample_weights(boxes[:, 0], boxes[:, 2], in_h, size, vflip)  # B x S x H
    rows = torch.matmul(images.float(), across.transpose(1, 2)[:, None])  # B x 3 x H x S
    return torch.matmul(down[:, None], rows)  # B x 3 x S x S


def rotate(images: torch.Tensor, angle: torch.Tensor) -> torch.Tensor:
    """``v2.RandomRotation``'s defaults: anticlockwise by ``angle`` degrees (B) about the centre,
    nearest neighbour, same size, zeros outside."""
    import kornia  # only the device backend needs it (and it costs a notebook half a second to import)

    return kornia.geometry.transform.rotate(images, angle.to(images.dtype), mode="nearest", padding_mode="zeros")


def _grayscale_mean(images: torch.Tensor) -> torch.Tensor:
    """The mean of torchvision's grayscale (0.2989 R + 0.587 G + 0.114 B), from the channel means."""
    weights = torch.tensor([0.2989, 0.587, 0.114], device=images.device, dtype=images.dtype)
    return (images.mean(dim=(-2, -1)) @ weights)[:, None, None, None]


def brightness_contrast(images: torch.Tensor, brightness: torch.Tensor | None, contrast: torch.Tensor | None,
                        brightness_first: torch.Tensor) -> torch.Tensor:
    """``v2.ColorJitter(brightness, contrast)`` on float images in [0, 1] with per-image factors (B,
    or None for an operation that is off), brightness before contrast where ``brightness_first``.
    Brightness multiplies, contrast blends with the mean of the grayscale image; both clamp to [0, 1].
    A factor of 1 leaves an image as it is, so the per-image order is brightness (for those that
    take it first), contrast, brightness (for the others)."""
    if brightness is None and contrast is None:
        return images
    one = torch.ones((), device=images.device)
    if brightness is not None:  # the factors are >= 0, so only the upper bound can clip
        images = images * torch.where(brightness_first, brightness, one)[:, None, None, None]
        images = images.clamp_(max=1.0)
    if contrast is not None:
        factor = contrast[:, None, None, None]
        images = (images * factor).add_(_grayscale_mean(images) * (1.0 - factor)).clamp_(0.0, 1.0)
    if brightness is not None:
        images = images.mul_(torch.where(brightness_first, one, brightness)[:, None, None, None]).clamp_(max=1.0)
    return images


# -- the backend ---------------------------------------------------------------------------------
class DeviceAugment:
    """``transforms.train_preset(t)`` for a padded uint8 batch on its device (see the module doc).

    ``DeviceAugment(t)(images, sizes, generator)``: ``images`` uint8 B x 3 x Hmax x Wmax as
    ``pad_collate`` makes them (any device), ``sizes`` the images' own ``(h, w)`` (B x 2), the
    random draws from ``generator`` -> normalised float32 B x 3 x S x S on the images' device."""

    def __init__(self, t: TransformsConfig):
        self.t = t
        self.brightness = self._factor_range(t.brightness)
        self.contrast = self._factor_range(t.contrast)

    @staticmethod
    def _factor_range(value: float) -> tuple[float, float] | None:
        """ColorJitter's range for a number: ``(max(0, 1 - value), 1 + value)``; None when zero."""
        return None if value == 0 else (max(0.0, 1.0 - value), 1.0 + value)

    def __repr__(self) -> str:
        return f"DeviceAugment({self.t!r})"

    def sample_params(self, sizes: torch.Tensor, generator: torch.Generator) -> dict[str, torch.Tensor | None]:
        """One batch's random parameters, on ``sizes``' device: ``boxes`` (B x 4: top, left, height,
        width), ``hflip``, ``vflip`` (bool), ``angle`` (degrees), ``brightness`` and ``contrast``
        (factors, None when off) and ``brightness_first`` (bool)."""
        t, device = self.t, sizes.device
        boxes = sample_crop_boxes(sizes, t.crop_scale, t.crop_ratio, generator)
        u = _uniform((len(sizes), 6), generator, device)

        def factors(bounds, draw):
            return None if bounds is None else bounds[0] + (bounds[1] - bounds[0]) * draw

        return {
            "boxes": boxes,
            "hflip": u[:, 0] < t.hflip_p,
            "vflip": u[:, 1] < t.vflip_p,
            "angle": t.rotation_degrees * (2.0 * u[:, 2] - 1.0),
            "brightness": factors(self.brightness, u[:, 3]),
            "contrast": factors(self.contrast, u[:, 4]),
            "brightness_first": u[:, 5] < 0.5,
        }

    def apply(self, images: torch.Tensor, params: dict[str, torch.Tensor | None]) -> torch.Tensor:
        """The operations with given parameters (``sample_params``' dict) on a uint8 batch."""
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"expected a uint8 batch B x 3 x H x W, got {images.dtype} {tuple(images.shape)}")
        device = images.device
        p = {key: None if value is None else value.to(device) for key, value in params.items()}
        with torch.autocast(device.type, enabled=False):  # resampling in float32, also inside autocast
            out = resized_crop(images, p["boxes"], self.t.image_size, p["hflip"], p["vflip"]).div_(255.0)
            if self.t.rotation_degrees != 0:
                out = rotate(out, p["angle"])
            out = brightness_contrast(out, p["brightness"], p["contrast"], p["brightness_first"])
            mean = torch.tensor(self.t.mean, device=device)[:, None, None]
            std = torch.tensor(self.t.std, device=device)[:, None, None]
            return out.sub_(mean).div_(std)

    def __call__(self, images: torch.Tensor, sizes: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        if (sizes[:, 0] > images.shape[-2]).any() or (sizes[:, 1] > images.shape[-1]).any():
            raise ValueError("an image's size is larger than the padded batch")
        sizes = sizes.to(images.device)
        return self.apply(images, self.sample_params(sizes, generator))
