"""The paper's train and eval presets (torchvision.transforms.v2), from PIL images to tensors.

Train, in the paper's words (Sections 2 and 3.1): "Random rotation (+-30 deg)", "Horizontal and
vertical flips (probability 0.5)", "Brightness and contrast adjustments (+-0.2)", "Random cropping
and resizing to 224x224 pixels", then "normalization using ImageNet statistics". The crop comes
first so the other operations work on 224 px, not on the larger cached image; the paper gives no
order. Eval: "resizing to 224x224 pixels" (``transforms.eval_resize`` says how) and normalisation.
The geometric and colour operations run on PIL images (on CPU about 1.4x faster than on uint8
tensors, measured with the cached images); the tensor comes last. With ``transforms.mask_overlays``
the frame's overlays (guide box, burnt-in text) are blacked out first, in training and evaluation
alike; the cache itself stays as the archive's images.
"""

from __future__ import annotations

import torch
from torchvision.transforms import v2

from kvasir_utils.config import TransformsConfig
from kvasir_utils.data.overlays import masking_steps


def _to_normalized_float(t: TransformsConfig) -> list:
    return [v2.PILToTensor(), v2.ToDtype(torch.float32, scale=True), v2.Normalize(mean=t.mean, std=t.std)]


def train_preset(t: TransformsConfig) -> v2.Compose:
    """Augmentations for training: random resized crop, flips, rotation, brightness/contrast."""
    return v2.Compose([
        *masking_steps(t.mask_overlays),
        v2.RandomResizedCrop(t.image_size, scale=tuple(t.crop_scale), ratio=tuple(t.crop_ratio), antialias=True),
        v2.RandomHorizontalFlip(t.hflip_p),
        v2.RandomVerticalFlip(t.vflip_p),
        v2.RandomRotation(t.rotation_degrees),
        v2.ColorJitter(brightness=t.brightness, contrast=t.contrast),
        *_to_normalized_float(t),
    ])


def eval_view(t: TransformsConfig) -> v2.Compose:
    """What the network sees of a validation image, still as a PIL image: the overlays masked (if
    set) and the deterministic resize to its input size (squash, or centre crop)."""
    if t.eval_resize == "squash":
        resize = [v2.Resize((t.image_size, t.image_size), antialias=True)]
    else:
        resize = [v2.Resize(t.image_size, antialias=True), v2.CenterCrop(t.image_size)]
    return v2.Compose([*masking_steps(t.mask_overlays), *resize])


def eval_preset(t: TransformsConfig) -> v2.Compose:
    """Validation: ``eval_view``, then the normalised tensor."""
    return v2.Compose([*eval_view(t).transforms, *_to_normalized_float(t)])
