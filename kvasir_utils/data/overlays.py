"""What the frames carry besides tissue, as geometry: the teal position-guide box and the burnt-in text,
found by colour and place, and blacked out on request (``transforms.mask_overlays``).

Regions are fractions of the frame (left, top, right, bottom), so one definition serves 720x576
colonoscopy frames, 1280x1024 gastroscopy frames and the resized cache alike.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

from kvasir_utils.errors import KvasirError

# The teal position-guide box in the bottom-left of many colonoscopy frames, as reported for real
# Kvasir v2 frames (issue 9).
GUIDE_BOX = (0.05, 0.67, 0.34, 0.96)
GUIDE_BOX_RGB = (19, 164, 136)
# RGB distance within which a pixel counts as box teal: wide enough for JPEG noise, narrow enough
# that indigo dye (about 110 away) and pink tissue never count.
GUIDE_BOX_TOLERANCE = 45.0
# The drawing inside the box and JPEG edges take part of the region; a frame without a box never
# comes close to half of it teal.
GUIDE_BOX_MIN_FRACTION = 0.5
# Masks reach a little past the box: its placement varies by a few pixels and JPEG smears its edge.
MASK_MARGIN = 0.01
# Burnt-in examination text (date, patient fields) at the top left.
TEXT_REGION = (0.0, 0.0, 0.32, 0.22)
MASK_MODES = ("none", "guide_box", "guide_box_and_text")


def region_pixels(size: tuple[int, int], region: tuple[float, float, float, float],
                  margin: float = 0.0) -> tuple[int, int, int, int]:
    """Pixel box (left, top, right, bottom) of a fractional ``region`` in a frame of ``size`` (width, height)."""
    width, height = size
    left, top, right, bottom = region
    return (max(0, round((left - margin) * width)), max(0, round((top - margin) * height)),
            min(width, round((right + margin) * width)), min(height, round((bottom + margin) * height)))


def teal_fraction(image: Image.Image) -> float:
    """Share of the guide-box region's pixels within ``GUIDE_BOX_TOLERANCE`` of the box colour."""
    crop = np.asarray(image.crop(region_pixels(image.size, GUIDE_BOX)).convert("RGB"), np.float32)
    if crop.size == 0:
        return 0.0
    distance = np.linalg.norm(crop - np.array(GUIDE_BOX_RGB, np.float32), axis=-1)
    return float((distance < GUIDE_BOX_TOLERANCE).mean())


def has_guide_box(image: Image.Image) -> bool:
    """Whether the frame carries the teal position-guide box in its bottom-left corner."""
    return teal_fraction(image) >= GUIDE_BOX_MIN_FRACTION


def mask_overlays(image: Image.Image, mode: str) -> Image.Image:
    """A copy of ``image`` with the overlays named by ``mode`` (one of ``MASK_MODES``) filled with black."""
    if mode not in MASK_MODES:
        raise KvasirError(f"Unknown overlay mask mode {mode!r}; use one of {', '.join(MASK_MODES)} "
                          "(setting transforms.mask_overlays).")
    masked = image.copy()
    if mode in ("guide_box", "guide_box_and_text"):
        masked.paste(0, region_pixels(image.size, GUIDE_BOX, MASK_MARGIN))
    if mode == "guide_box_and_text":
        masked.paste(0, region_pixels(image.size, TEXT_REGION, MASK_MARGIN))
    return masked


def masking_steps(mode: str) -> list:
    """The transforms that mask ``mode``'s overlays (none for ``none``): the first step of every preset."""
    return [] if mode == "none" else [MaskOverlays(mode)]


class MaskOverlays:
    """``audit.mask_overlays`` as a transform (a class, so loader workers can pickle it)."""

    def __init__(self, mode: str):
        self.mode = mode

    def __call__(self, image):
        return mask_overlays(image, self.mode)

    def __repr__(self) -> str:
        return f"MaskOverlays(mode={self.mode!r})"
