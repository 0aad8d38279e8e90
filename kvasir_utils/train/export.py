"""The trained model for use outside the study: ONNX, its preprocessing as data, and a parity check.

``make export`` writes ``reports/<profile>/models/<model>/export/``: ``model.onnx`` (opset
``OPSET``, a dynamic batch dimension), ``preprocessing.json`` (how an image becomes the model's
input, and the class names) and ``parity.json``: ONNX Runtime on the CPU against PyTorch in fp32
over the validation images, at batch 1 and batch 32; the logits must agree within
``PARITY_TOLERANCE`` and the predicted class on every image. The export uses the TorchScript-based
exporter (``dynamo=False``): several public reports show torchvision ResNets exported wrong by the
dynamo exporter; switch when the parity check shows it right. A model trained with LoRA adapters is
exported with them merged into its weights (``lora.merged``: the plain architecture, no peft at
inference), and the parity check holds the merged ONNX model to the adapters' PyTorch model. A model
that fails the check is not written; parity.json says by how much it failed.
"""

from __future__ import annotations

import hashlib
import io
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from kvasir_utils.artefacts import RunFolder
from kvasir_utils.config import Config
from kvasir_utils.data import overlays, prepare
from kvasir_utils.data.images import load_cached
from kvasir_utils.data.split import read_split
from kvasir_utils.errors import KvasirError
from kvasir_utils.files import atomic_folder, write_bytes_atomic, write_json_atomic
from kvasir_utils.train import hardware, lora, presets
from kvasir_utils.train.predict import Predictor, check_model

OPSET = 17
PARITY_TOLERANCE = 1e-3
PARITY_BATCHES = (1, 32)
INPUT, OUTPUT = "image", "logits"


@dataclass
class Export:
    folder: Path
    parity: dict

    def describe(self) -> str:
        checks = "; ".join(f"batch {c['batch_size']}: largest logit difference {c['max_abs_diff']:.2e}, "
                           f"top-1 agreement {c['top1_agreement']:.1%}" for c in self.parity["checks"])
        return (f"wrote {self.folder / 'model.onnx'} (opset {OPSET}) and preprocessing.json; parity with PyTorch fp32 "
                f"on {self.parity['images']} validation images: {checks} (parity.json)")


def onnx_bytes(model: torch.nn.Module, image_size: int) -> bytes:
    """``model`` (fp32, on the CPU) as ONNX: input ``image`` (batch, 3, size, size), output
    ``logits`` (batch, classes), the batch dimension dynamic."""
    encoded = io.BytesIO()
    with warnings.catch_warnings():  # the TorchScript exporter is deprecated, and chosen on purpose (see above)
        warnings.simplefilter("ignore", DeprecationWarning)
        torch.onnx.export(model.eval(), torch.zeros(1, 3, image_size, image_size), encoded, opset_version=OPSET,
                          input_names=[INPUT], output_names=[OUTPUT], dynamo=False,
                          dynamic_axes={INPUT: {0: "batch"}, OUTPUT: {0: "batch"}})
    return encoded.getvalue()


def preprocessing(cfg: Config) -> dict:
    """How an image becomes the model's input, as data (the study's own code: ``Predictor``)."""
    t, mask = cfg.transforms, cfg.transforms.mask_overlays
    regions = {"guide_box": overlays.GUIDE_BOX, "text": overlays.TEXT_REGION}
    return {
        "image_size": t.image_size, "resize_mode": t.eval_resize, "mean": t.mean, "std": t.std,
        "class_names": cfg.classes, "mask_overlays": mask,
        "cache": {"short_side": cfg.cache.short_side, "resample": "bicubic", "reducing_gap": 2.0,
                  "jpeg_draft": True, "jpeg_quality": cfg.cache.quality},
        "mask_regions": {} if mask == "none" else {
            name: {"left_top_right_bottom": region, "margin": overlays.MASK_MARGIN} for name, region in regions.items()
            if name == "guide_box" or mask == "guide_box_and_text"},
        "input": {"name": INPUT, "shape": ["batch", 3, t.image_size, t.image_size], "dtype": "float32"},
        "output": {"name": OUTPUT, "shape": ["batch", len(cfg.classes)],
                   "meaning": "logits in class_names' order; softmax gives the probabilities"},
        "steps": [
            "decode the image as RGB",
            f"resize so the short side is {cfg.cache.short_side} px, the other side rounded (never enlarged; a JPEG "
            "decoded at reduced scale first with PIL's Image.draft, then Image.resize with BICUBIC and "
            f"reducing_gap=2.0), encode as JPEG at quality {cfg.cache.quality} and decode it again (the study's cache)",
            *([f"black out the overlays ({mask}): each region is fractions of the frame, widened by the margin"]
              if mask != "none" else []),
            f"resize to {t.image_size}x{t.image_size} px" + (" (both sides, antialiased bilinear)"
                                                             if t.eval_resize == "squash" else
                                                             " (short side, antialiased bilinear, then centre crop)"),
            "scale to [0, 1], subtract mean and divide by std per channel, channels first (NCHW)",
        ],
        "in_python": "kvasir_utils.train.predict.Predictor does all of this (Predictor.from_run(run_folder, model))",
    }


def validation_batches(predictor: Predictor, batch_size: int = 32):
    """The run's validation images as the evaluation feeds them (cached copy, eval preset), in batches."""
    cfg = predictor.cfg
    split = read_split(RunFolder(predictor.run_folder).split, cfg.classes)
    paths = split.loc[split["split"] == "val", "path"].tolist()
    preset, cache = presets.eval_preset(cfg.transforms), prepare.cache_dir(cfg)
    for start in range(0, len(paths), batch_size):
        yield torch.stack([preset(image) for image in load_cached(cache, paths[start:start + batch_size])])


def parity_check(onnx: bytes, predictor: Predictor) -> dict:
    """ONNX Runtime (CPU) at each of ``PARITY_BATCHES`` against PyTorch fp32 over the validation
    images: the largest absolute logit difference and the share of images with the same top class."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = torch.get_num_threads()  # the machine's compute budget, as torch has it
    session = onnxruntime.InferenceSession(onnx, options, providers=["CPUExecutionProvider"])
    reference, ours = [], {size: [] for size in PARITY_BATCHES}
    for batch in validation_batches(predictor, max(PARITY_BATCHES)):
        with torch.inference_mode():
            reference.append(predictor.model(batch).numpy())
        for size in PARITY_BATCHES:
            ours[size] += [session.run([OUTPUT], {INPUT: batch[i:i + size].numpy()})[0]
                           for i in range(0, len(batch), size)]
    reference = np.concatenate(reference)
    # batch_size: the largest batch the check ran (fewer validation images than PARITY_BATCHES' largest: all of them)
    checks = [{"batch_size": min(size, len(reference)), "images": len(reference),
               "max_abs_diff": float(np.abs(np.concatenate(ours[size]) - reference).max()),
               "top1_agreement": float((np.concatenate(ours[size]).argmax(1) == reference.argmax(1)).mean())}
              for size in PARITY_BATCHES]
    passed = all(c["max_abs_diff"] <= PARITY_TOLERANCE and c["top1_agreement"] == 1.0 for c in checks)
    return {"model": predictor.model_name, "passed": passed, "images": len(reference), "tolerance": PARITY_TOLERANCE,
            "reference": f"PyTorch fp32 on the CPU, batches of up to {max(PARITY_BATCHES)}", "checks": checks,
            "opset": OPSET,
            "exporter": "torch.onnx.export, TorchScript-based (dynamo=False)", "provider": "CPUExecutionProvider",
            "onnxruntime": onnxruntime.__version__, "torch": torch.__version__, "checkpoint": str(predictor.checkpoint),
            "onnx_sha256": hashlib.sha256(onnx).hexdigest()}


def export_model(cfg: Config, model_name: str) -> Export:
    """Export the profile's trained ``model_name`` and check it (see the module's description)."""
    model_name = check_model(cfg, model_name)
    fp32 = hardware.Runtime(torch.device("cpu"), "fp32", workers=0)
    predictor = Predictor.from_run(cfg.run_dir, model_name, fp32, cfg.profile_argument)
    onnx = onnx_bytes(lora.merged(predictor.model), predictor.cfg.transforms.image_size)
    parity = parity_check(onnx, predictor) | {"lora_merged": lora.has_lora(predictor.model)}
    folder = cfg.report.model_dir(model_name) / "export"
    with atomic_folder(folder) as work:  # a failed check leaves parity.json alone, no model.onnx
        write_json_atomic(work / "parity.json", parity)
        if parity["passed"]:
            write_bytes_atomic(work / "model.onnx", onnx)
            write_json_atomic(work / "preprocessing.json", preprocessing(predictor.cfg))
    if not parity["passed"]:
        found = "; ".join(f"batch {c['batch_size']}: largest logit difference {c['max_abs_diff']:.3g} (allowed "
                          f"{PARITY_TOLERANCE:g}), top-1 agreement {c['top1_agreement']:.2%}" for c in parity["checks"])
        raise KvasirError(
            f"the ONNX export of {model_name} does not compute what the PyTorch model computes: {found}, over "
            f"{parity['images']} validation images. model.onnx was not written ({folder / 'parity.json'} has the "
            f"numbers). The PyTorch checkpoint is unaffected (make predict uses it); report this with parity.json, "
            f"and the versions of torch and onnxruntime it names.")
    return Export(folder, parity)
