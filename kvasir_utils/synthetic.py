"""A generated Kvasir-shaped archive for the smoke profile, the tests and the benchmark.

Same zip layout as Kvasir v2 (``kvasir-dataset-v2/<class>/<uuid>.jpg``), the real resolutions,
an endoscope's round field of view with a dark vignette, and one class-specific cue (colour and
shape of a lesion-like blob) strong enough for a small CNN to learn in a few epochs. Numbers
computed on it say nothing about Kvasir.
"""

from __future__ import annotations

import io
import uuid
import zipfile
from pathlib import Path

import numpy as np
from PIL import Image

from kvasir_utils.io import atomic_path

ARCHIVE_TOP = "kvasir-dataset-v2"
COMMON_SIZE = (720, 576)
LARGE_SIZES = ((1920, 1072), (1280, 1024), (1350, 1080))
# One cue per class: blob colour (RGB) and shape. Eight well-separated colours.
CUES = (
    ((40, 80, 220), "disc"),
    ((30, 160, 200), "ring"),
    ((230, 40, 40), "stripes"),
    ((230, 210, 60), "disc"),
    ((20, 20, 20), "ring"),
    ((245, 245, 245), "stripes"),
    ((200, 60, 160), "disc"),
    ((60, 200, 80), "ring"),
)
_ZIP_DATE = (2017, 1, 1, 0, 0, 0)


def _image_size(rng: np.random.Generator, large_fraction: float) -> tuple[int, int]:
    if rng.random() < large_fraction:
        return LARGE_SIZES[rng.integers(len(LARGE_SIZES))]
    return COMMON_SIZE


def make_image(rng: np.random.Generator, class_index: int, size: tuple[int, int]) -> Image.Image:
    """One endoscopy-like RGB image of ``size`` (width, height) carrying class ``class_index``'s cue."""
    width, height = size
    small_w, small_h = max(width // 8, 8), max(height // 8, 8)
    yy, xx = np.mgrid[0:small_h, 0:small_w].astype(np.float32)
    cx, cy = small_w / 2, small_h / 2
    radius = np.hypot((xx - cx) / (small_w / 2), (yy - cy) / (small_h / 2))

    tissue = np.array([190, 95, 80], np.float32) + rng.normal(0, 12, 3)
    shade = 1.0 + 0.15 * rng.standard_normal((small_h, small_w, 1)).astype(np.float32)
    img = tissue * shade

    color, shape = CUES[class_index % len(CUES)]
    bx, by = cx + rng.uniform(-0.2, 0.2) * small_w, cy + rng.uniform(-0.2, 0.2) * small_h
    blob_r = rng.uniform(0.22, 0.32) * min(small_w, small_h)
    dist = np.hypot(xx - bx, yy - by) / blob_r
    if shape == "disc":
        mask = dist < 1.0
    elif shape == "ring":
        mask = (dist > 0.6) & (dist < 1.2)
    else:
        angle = rng.uniform(0, np.pi)
        along = (xx - bx) * np.cos(angle) + (yy - by) * np.sin(angle)
        mask = (np.sin(along / blob_r * 6) > 0.3) & (dist < 1.5)
    img[mask] = 0.25 * img[mask] + 0.75 * np.array(color, np.float32)

    vignette = np.clip(1.15 - 0.6 * radius**2, 0, 1)[..., None]
    field_of_view = (radius < 0.98)[..., None]
    img = img * vignette * field_of_view
    full = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8)).resize((width, height), Image.BILINEAR)
    grain = rng.normal(0, 4, (height, width, 1)).astype(np.float32)
    pixels = np.clip(np.asarray(full, np.float32) + grain, 0, 255).astype(np.uint8)
    return Image.fromarray(pixels)


def make_archive(
    path: Path,
    classes: list[str],
    images_per_class: int,
    seed: int = 0,
    large_fraction: float = 0.1,
    top: str = ARCHIVE_TOP,
) -> Path:
    """Write a Kvasir-layout zip to ``path`` (atomically); the same arguments give the same bytes."""
    path = Path(path)
    with atomic_path(path, ".zip") as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as archive:
        for class_index, name in enumerate(classes):
            rng = np.random.default_rng([seed, class_index])
            for _ in range(images_per_class):
                image = make_image(rng, class_index, _image_size(rng, large_fraction))
                buffer = io.BytesIO()
                image.save(buffer, format="JPEG", quality=90)
                stem = uuid.UUID(bytes=rng.bytes(16), version=4)
                info = zipfile.ZipInfo(f"{top}/{name}/{stem}.jpg", date_time=_ZIP_DATE)
                archive.writestr(info, buffer.getvalue())
    return path
