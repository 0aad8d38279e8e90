"""``make predict``: a folder of images through a trained model, into ``predictions.csv``, the
files it skipped and an HTML gallery under ``reports/<profile>/predict/<name>/``.

The folder is written whole or not at all (``files.atomic_folder``): an interrupted prediction leaves
the previous one as it was. ``python -m kvasir_utils predict`` exits 0 when every file was
predicted, ``SKIPPED_EXIT`` (3) when some could not be read as images (the others are predicted),
1 on an error.
"""

from __future__ import annotations

import io
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
from PIL import Image

from kvasir_utils import artefacts
from kvasir_utils.config import Config
from kvasir_utils.errors import KvasirError
from kvasir_utils.files import (
    atomic_folder,
    is_utf8_name,
    shown_name,
    write_bytes_atomic,
    write_csv_atomic,
    write_json_atomic,
    write_text_atomic,
)
from kvasir_utils.provenance import study_version
from kvasir_utils.report import gallery
from kvasir_utils.train import hardware
from kvasir_utils.train.predict import Predictor, check_model, image_files

SKIPPED_EXIT = 3
THUMBNAIL_PX = 256  # the longer side of the gallery's images


@dataclass
class PredictOutcome:
    folder: Path  # reports/<profile>/predict/<name>/
    predictions: pd.DataFrame
    skipped: pd.DataFrame  # file, reason

    @property
    def exit_code(self) -> int:
        return SKIPPED_EXIT if len(self.skipped) else 0

    def describe(self) -> str:
        lines = [f"wrote {self.folder / 'predictions.csv'} ({len(self.predictions)} image(s)) and "
                 f"{self.folder / 'index.html'}"]
        if len(self.skipped):
            lines.append(f"skipped {len(self.skipped)} file(s) that could not be read as images:")
            lines += [f"  {row.file}: {row.reason}" for row in self.skipped.itertuples()]
        return "\n".join(lines)


def prediction_name(images: Path, name: str | None) -> str:
    """The prediction's folder name: ``name``, or the images' folder (or file) name."""
    name = name or (images.stem if images.is_file() else images.name)
    if not name or name.startswith(".") or "/" in name or "\\" in name:
        raise KvasirError(f"NAME={name!r} cannot name a folder under reports/<profile>/predict/; "
                          "give NAME=<a plain name>")
    return name


def _jpeg(image: Image.Image) -> bytes:
    encoded = io.BytesIO()
    image.save(encoded, format="JPEG", quality=90)
    return encoded.getvalue()


def write_images(folder: Path, first_row: int, views: list, overlays: list) -> None:
    """Each image as the model received it (at most ``THUMBNAIL_PX``) and its Grad-CAM overlay."""
    for row, (view, overlay) in enumerate(zip(views, overlays, strict=True), start=first_row):
        thumbnail, gradcam = gallery.image_names(row)
        small = view.copy()
        small.thumbnail((THUMBNAIL_PX, THUMBNAIL_PX))
        write_bytes_atomic(folder / thumbnail, _jpeg(small))
        write_bytes_atomic(folder / gradcam, _jpeg(Image.fromarray(overlay)))


def predict_folder(cfg: Config, model_name: str, images: Path | str, name: str | None = None,
                   progress: bool = True) -> PredictOutcome:
    """Predict every file under ``images`` with the profile's trained ``model_name`` on the device
    and in the precision ``cfg.runtime`` resolves to; write predictions.csv, skipped.csv,
    predict.json and the gallery (index.html, thumbnails/, gradcam/)."""
    model_name = check_model(cfg, model_name)
    if not str(images).strip():
        raise KvasirError("no images given: make predict IMAGES=<a folder of images, or one image file>")
    source = Path(images).expanduser().resolve()
    if not is_utf8_name(str(source)):  # it goes into predict.json and the page, which cannot hold it
        raise KvasirError(f"the path {shown_name(str(source))} is not valid UTF-8: rename the folder (e.g. convmv "
                          "-f latin1 -t utf8) or give IMAGES= through a folder whose path is")
    files = image_files(source)
    root = source.parent if source.is_file() else source
    dest = cfg.report.predict_dir(prediction_name(source, name))
    predictor = Predictor.from_run(cfg.run_dir, model_name, hardware.use_runtime(cfg.runtime), cfg.profile_argument)
    tables, skipped = [], []
    with atomic_folder(dest) as work:
        for batch in predictor.predict_files(files, root, progress=progress):
            write_images(work, sum(len(t) for t in tables), batch.views, batch.overlays)
            tables.append(batch.table)
            skipped += batch.skipped
        predictions = pd.concat(tables, ignore_index=True)
        if predictions.empty:  # the folder is left as it was: no gallery of nothing that looks finished
            reasons = "; ".join(f"{file}: {reason}" for file, reason in skipped[:3]) + "; ..." * (len(skipped) > 3)
            raise KvasirError(f"none of the {len(files)} file(s) under {source} could be read as an image "
                              f"({reasons}); nothing was written. Give IMAGES= a folder of image files (JPEG, PNG, "
                              "...) or one of them.")
        skipped = pd.DataFrame(skipped, columns=["file", "reason"])
        write_csv_atomic(predictions, work / artefacts.PREDICTIONS)
        write_csv_atomic(skipped, work / artefacts.SKIPPED)
        write_json_atomic(work / artefacts.PREDICT_RECORD, {
            "model": model_name, "profile": cfg.profile, "name": dest.name, "images": str(source),
            "files": len(files), "predicted": len(predictions), "skipped": len(skipped),
            "checkpoint": str(predictor.checkpoint), "runtime": predictor.runtime.record(),
            "near_duplicates_checked": predictor.training_hashes() is not None, "study": study_version()})
        write_text_atomic(work / "index.html", gallery.render_gallery(work, cfg))
    return PredictOutcome(dest, predictions, skipped)
