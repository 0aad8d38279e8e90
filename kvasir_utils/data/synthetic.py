"""A generated Kvasir-shaped archive for the smoke profile, the tests and the benchmark.

Same zip layout as Kvasir v2 (``kvasir-dataset-v2/<class>/<uuid>.jpg``), the real resolutions,
an endoscope's round field of view with a dark vignette, and one class-specific cue (colour and
shape of a lesion-like blob) strong enough for a small CNN to learn in a few epochs. Numbers
computed on it say nothing about Kvasir.

It also carries the real data's traps, so the audit has something to find: the teal position-guide
box in some lower-GI frames at class-specific rates (``GUIDE_BOX_RATES``), burnt-in text at the top
left and black borders, and a few near-duplicate frames per class (shifted, re-encoded copies of an
earlier frame). ``planted_traps`` says which frames got what, without reading the archive.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import io
import itertools
import threading
import uuid
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw, ImageFont

from kvasir_utils.data.duplicates import COPY_KINDS, video_copy
from kvasir_utils.data.overlays import GUIDE_BOX, GUIDE_BOX_RGB, TEXT_REGION, region_pixels
from kvasir_utils.datasets import KVASIR_V2_CLASSES
from kvasir_utils.files import atomic_folder, atomic_path, write_bytes_atomic
from kvasir_utils.provenance import usable_cores

ARCHIVE_TOP = "kvasir-dataset-v2"
# Bumped whenever the generator draws other images, so an archive made by an older version (its
# file name carries this) is never reused for a newer one.
GENERATOR_VERSION = 3
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
# Share of a class's original frames that get the guide box (copies keep their source's), Kvasir v2's
# classes in table order: lower-GI classes at high and low rates, none in upper-GI ones. Classes not
# named here get none.
GUIDE_BOX_RATES = dict(zip(KVASIR_V2_CLASSES, (0.8, 0.6, 0.0, 0.7, 0.0, 0.0, 0.3, 0.1), strict=True))


# Near-duplicates per class (one of each of duplicates.COPY_KINDS), at most a quarter of its frames:
# the copies are its last frames.
NEAR_DUPLICATES_PER_CLASS = len(COPY_KINDS)
JPEG_QUALITY = 90
DUPLICATE_JPEG_QUALITY = 75
BORDER_FRACTION = 0.02
_PLAN_STREAM = 1
_COPY_STREAM = 2
# From this many images, kvasir_frames draws its classes in parallel threads (one per class, as many
# at once as there are cores; numpy's array arithmetic and PIL's resizing and encoding run outside
# Python's lock): each class has its own random stream, so the bytes are the same either way.
PARALLEL_FROM = 1000


def _image_size(rng: np.random.Generator, large_fraction: float) -> tuple[int, int]:
    if rng.random() < large_fraction:
        return LARGE_SIZES[rng.integers(len(LARGE_SIZES))]
    return COMMON_SIZE


def _lighting(rng: np.random.Generator, xx: np.ndarray, yy: np.ndarray) -> np.ndarray:
    """Uneven light and a dark lumen at a random place: what makes one frame unlike the next at a
    glance, so that only the planted copies look alike to a perceptual hash."""
    small_h, small_w = xx.shape
    coarse = rng.normal(0, 1, (5, 6)).astype(np.float32)
    field = np.asarray(Image.fromarray(coarse).resize((small_w, small_h), Image.BICUBIC))
    lx, ly = rng.uniform(0.15, 0.85) * small_w, rng.uniform(0.15, 0.85) * small_h
    spread = rng.uniform(0.1, 0.3) * min(small_w, small_h)
    lumen = np.exp(-((xx - lx) ** 2 + (yy - ly) ** 2) / (2 * spread**2))
    return np.clip(1.0 + 0.5 * field, 0.3, 1.8) * (1.0 - 0.9 * lumen)


def make_image(rng: np.random.Generator, cue, size: tuple[int, int]) -> Image.Image:
    """One endoscopy-like RGB image of ``size`` (width, height) carrying a class's cue: an index into
    ``CUES`` (class ``i`` of a Kvasir-shaped archive has cue ``i``), or a (colour, shape) pair."""
    width, height = size
    small_w, small_h = max(width // 8, 8), max(height // 8, 8)
    yy, xx = np.mgrid[0:small_h, 0:small_w].astype(np.float32)
    cx, cy = small_w / 2, small_h / 2
    radius = np.hypot((xx - cx) / (small_w / 2), (yy - cy) / (small_h / 2))

    tissue = np.array([190, 95, 80], np.float32) + rng.normal(0, 12, 3)
    shade = 1.0 + 0.15 * rng.standard_normal((small_h, small_w, 1)).astype(np.float32)
    img = tissue * shade * _lighting(rng, xx, yy)[..., None]

    color, shape = CUES[cue % len(CUES)] if isinstance(cue, int | np.integer) else cue
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


@functools.lru_cache(maxsize=8)
def _font(height: int) -> ImageFont.ImageFont:
    return ImageFont.load_default(size=max(height // 36, 8))


def draw_overlays(image: Image.Image, guide_box: bool, marker: float, caption: str) -> Image.Image:
    """Black borders, burnt-in text at the top left and, if ``guide_box``, the teal guide box with a
    colon sketch and the scope's position (``marker``, 0 to 1 along it) drawn inside."""
    width, height = image.size
    pixels = np.array(image)
    bx, by = max(round(BORDER_FRACTION * width), 1), max(round(BORDER_FRACTION * height), 1)
    pixels[:by], pixels[-by:], pixels[:, :bx], pixels[:, -bx:] = 0, 0, 0, 0
    framed = Image.fromarray(pixels)
    draw = ImageDraw.Draw(framed)
    left, top, _, _ = region_pixels(image.size, TEXT_REGION)
    draw.multiline_text((left + 0.03 * width, top + 0.03 * height), caption, fill=(235, 235, 235),
                        font=_font(height))
    if guide_box:
        x0, y0, x1, y1 = region_pixels(image.size, GUIDE_BOX)
        draw.rectangle((x0, y0, x1 - 1, y1 - 1), fill=GUIDE_BOX_RGB)
        w, h = x1 - x0, y1 - y0
        sketch = [(x0 + 0.3 * w, y0 + 0.85 * h), (x0 + 0.25 * w, y0 + 0.2 * h), (x0 + 0.75 * w, y0 + 0.2 * h),
                  (x0 + 0.7 * w, y0 + 0.85 * h)]
        draw.line(sketch, fill=(240, 240, 240), width=max(w // 60, 2), joint="curve")
        sx, sy = sketch[min(int(marker * 3), 2)]
        r = max(w // 25, 3)
        draw.ellipse((sx - r, sy - r, sx + r, sy + r), fill=(20, 20, 20))
    return framed


def class_plan(seed: int, class_index: int, name: str, images_per_class: int) -> pd.DataFrame:
    """Which frames of one class get the box, which are copies of which, their names: from a stream of
    its own, so ``planted_traps`` can say it without drawing a single image."""
    rng = np.random.default_rng([seed, class_index, _PLAN_STREAM])
    copies = min(NEAR_DUPLICATES_PER_CLASS, images_per_class // 4)
    originals = images_per_class - copies
    sources = rng.choice(originals, copies, replace=False)
    box = np.zeros(originals, bool)
    box[rng.choice(originals, round(GUIDE_BOX_RATES.get(name, 0.0) * originals), replace=False)] = True
    marker = rng.random(originals)
    paths = [f"{name}/{uuid.UUID(bytes=rng.bytes(16), version=4)}.jpg" for _ in range(images_per_class)]
    return pd.DataFrame({
        "path": paths, "label": name,
        "guide_box": np.concatenate([box, box[sources]]),
        "source": np.concatenate([np.full(originals, -1), sources]),
        "copy_kind": [""] * originals + [COPY_KINDS[k % len(COPY_KINDS)] for k in range(copies)],
        "marker": np.concatenate([marker, marker[sources]]),
    })


def planted_traps(classes: list[str], images_per_class: int, seed: int = 0) -> pd.DataFrame:
    """What ``make_archive`` with the same arguments plants: one row per image in archive order, with
    ``path`` (``<class>/<name>.jpg``, as ``data.layout.find_classes`` names it), ``label``, ``guide_box``,
    ``duplicate_of`` (the path of the frame it copies; missing for an original) and ``copy_kind``
    (how the copy differs, one of ``duplicates.COPY_KINDS``; empty for an original)."""
    plans = []
    for class_index, name in enumerate(classes):
        plan = class_plan(seed, class_index, name, images_per_class)
        source = plan["source"].to_numpy()
        plan["duplicate_of"] = [plan["path"].iat[s] if s >= 0 else None for s in source]
        plans.append(plan[["path", "label", "guide_box", "duplicate_of", "copy_kind"]])
    return pd.concat(plans, ignore_index=True)


def jpeg_bytes(image: Image.Image, quality: int) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=quality)
    return buffer.getvalue()


def class_frames(seed: int, stream: int, name: str, images_per_class: int, large_fraction: float, cue,
                 caption: str = "KVASIR SYNTH"):
    """One class's generated frames in order, as (``<name>/<uuid>.jpg``, JPEG bytes): drawn from the
    random stream ``[seed, stream]`` with ``cue`` (an index into ``CUES``, or a (colour, shape) pair);
    its plan (``class_plan``) says which are near-duplicate copies and which carry the guide box."""
    rng = np.random.default_rng([seed, stream])
    plan = class_plan(seed, stream, name, images_per_class)
    sources, kept = set(plan["source"]), {}  # kept: scenes a later copy changes; overlays stay put
    for index, frame in enumerate(plan.itertuples()):
        if frame.source < 0:
            scene = make_image(rng, cue, _image_size(rng, large_fraction))
            quality = JPEG_QUALITY
        else:
            rng_copy = np.random.default_rng([seed, stream, _COPY_STREAM, index])
            scene = video_copy(kept[frame.source], frame.copy_kind, rng_copy)
            quality = DUPLICATE_JPEG_QUALITY
        if index in sources:
            kept[index] = scene
        text = f"{caption}\n2017-01-01\nID {seed:04d}\n#{index:04d}"
        yield frame.path, jpeg_bytes(draw_overlays(scene, frame.guide_box, frame.marker, text), quality)


def kvasir_frames(classes: list[str], images_per_class: int, seed: int, large_fraction: float):
    """Every class's frames (``class_frames``) in class order; drawn in parallel threads from
    ``PARALLEL_FROM`` images where there is more than one core, at most one class a core in flight
    (each held whole until its turn comes). Closing the generator (Ctrl-C, an error) stops every
    thread at its next frame."""
    jobs = [(seed, index, name, images_per_class, large_fraction, index) for index, name in enumerate(classes)]
    workers = min(len(jobs), usable_cores())
    if workers < 2 or len(classes) * images_per_class < PARALLEL_FROM:
        for job in jobs:
            yield from class_frames(*job)
        return
    stop = threading.Event()

    def draw(job: tuple) -> list[tuple[str, bytes]]:
        frames = []
        for frame in class_frames(*job):
            if stop.is_set():
                break
            frames.append(frame)
        return frames

    pool = ThreadPoolExecutor(workers)
    try:
        waiting = iter(jobs)
        running = collections.deque(pool.submit(draw, job) for job in itertools.islice(waiting, workers))
        while running:
            frames = running.popleft().result()
            job = next(waiting, None)
            if job is not None:
                running.append(pool.submit(draw, job))
            yield from frames
    finally:
        stop.set()
        pool.shutdown(wait=True, cancel_futures=True)


def make_archive(
    path: Path,
    classes: list[str],
    images_per_class: int,
    seed: int = 0,
    large_fraction: float = 0.1,
    top: str = ARCHIVE_TOP,
) -> Path:
    """Write a Kvasir-layout zip to ``path`` (atomically); the same arguments give the same bytes.

    ``images_per_class`` counts the near-duplicate copies too; ``planted_traps`` lists them.
    """
    path = Path(path)
    with atomic_path(path, ".zip") as tmp, zipfile.ZipFile(tmp, "w", zipfile.ZIP_STORED) as archive:
        for name, payload in kvasir_frames(classes, images_per_class, seed, large_fraction):
            archive.writestr(zipfile.ZipInfo(f"{top}/{name}", date_time=_ZIP_DATE), payload)
    return path


def write_tree(path: Path, files) -> Path:
    """Write ``files`` ((relative path, bytes) pairs) as the folder ``path``, whole or not at all; a
    generator of them is closed on an error (``kvasir_frames``' threads stop at once)."""
    with atomic_folder(path) as partial, contextlib.closing(iter(files)) as pairs:
        for name, payload in pairs:
            write_bytes_atomic(partial / name, payload)
    return Path(path)


def make_folder(path: Path, classes: list[str], images_per_class: int, seed: int = 0,
                large_fraction: float = 0.1) -> Path:
    """The images ``make_archive`` zips, as a plain folder of class folders (``<path>/<class>/<uuid>.jpg``):
    a dataset brought as a folder, not an archive."""
    return write_tree(path, kvasir_frames(classes, images_per_class, seed, large_fraction))
