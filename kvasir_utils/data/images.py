"""Reading images: the one decoder every stage uses (training, display, hashing, the audit), and the
cached copy of an image by its path in the split.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from kvasir_utils.config import cached_name

# Greyscale modes of 16 bits (PNG and TIFF): Pillow's RGB conversion clips them at 255, so a 16-bit
# frame came out white; they are scaled from 16 bits to 8 instead. Pillow's 32-bit mode "I" is scaled
# the same way only where a value exceeds 8 bits (it also holds 8-bit values, which stay as they are).
SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N")


def as_rgb(image: Image.Image) -> Image.Image:
    """``image`` as 8-bit RGB; a 16-bit greyscale one scaled to 8 bits (65,535 -> 255), not clipped."""
    if image.mode in SIXTEEN_BIT_MODES or (image.mode == "I" and image.getextrema()[1] > 255):
        pixels = np.asarray(image, np.float64) / 257
        image = Image.fromarray(np.clip(pixels, 0, 255).round().astype(np.uint8), "L")
    elif image.mode == "F":  # floating point: 0-1 if it stays there, else taken as 0-255
        pixels = np.asarray(image, np.float64)
        pixels = pixels * 255 if pixels.size and np.nanmax(pixels) <= 1.0 else pixels
        image = Image.fromarray(np.clip(np.nan_to_num(pixels), 0, 255).round().astype(np.uint8), "L")
    return image.convert("RGB")


def read_image(path: Path) -> Image.Image:
    """An image file, decoded, as RGB (the presets' PIL operations are the fastest on CPU)."""
    with Image.open(path) as image:
        return as_rgb(image)


def iter_cached(cache_root: Path, paths):
    """The cached images (PIL, RGB) of split-relative ``paths``, one at a time (for passes over every image)."""
    return (read_image(Path(cache_root) / cached_name(p)) for p in paths)


def load_cached(cache_root: Path, paths) -> list:
    """The cached images (PIL, RGB) of split-relative ``paths``, for display."""
    return list(iter_cached(cache_root, paths))


def cached_images_per_class(cache_root: Path, split: pd.DataFrame, per_class: int, seed: int = 0):
    """A few cached images of each class (for the sample grid): list of (label, PIL image)."""
    picked = split.groupby("label", sort=False).sample(frac=1, random_state=seed).groupby("label").head(per_class)
    return list(zip(picked["label"], load_cached(cache_root, picked["path"])))


def write_thumbnails(cache_root: Path, paths, dest: Path, size: int = 160) -> int:
    """Small JPEG copies of the cached images of ``paths`` under ``dest`` (for the reports' error
    browser, which must not reach into the data folder); returns how many were made now."""
    import io

    from kvasir_utils.files import write_bytes_atomic

    made = 0
    for path in paths:
        target = Path(dest) / cached_name(path)
        if target.exists():
            continue
        image = read_image(Path(cache_root) / cached_name(path))
        image.thumbnail((size, size))
        encoded = io.BytesIO()
        image.save(encoded, format="JPEG", quality=85)
        write_bytes_atomic(target, encoded.getvalue())
        made += 1
    return made
