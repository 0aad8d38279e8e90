"""Where the network looks: Grad-CAM (pytorch-grad-cam) on the last module with a spatial feature map,
found for any torchvision or timm CNN, and for a vision transformer on its last block's input tokens
laid back on the patch grid; Figure 3's material.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from PIL import Image

from kvasir_utils.analysis.runs import pick_examples_per_class
from kvasir_utils.config import Config
from kvasir_utils.data import prepare
from kvasir_utils.data.images import load_cached
from kvasir_utils.errors import KvasirError
from kvasir_utils.train import checkpoints, models, presets


def token_grid(model) -> tuple[int, int] | None:
    """A vision transformer's patch grid (rows, columns) at the size it was built for, or None for a
    model that is not one (timm's ViTs: ``patch_embed.grid_size`` and ``num_prefix_tokens``)."""
    grid = getattr(getattr(model, "patch_embed", None), "grid_size", None)
    return tuple(int(v) for v in grid) if grid is not None and hasattr(model, "blocks") else None


def vit_reshape(model):
    """pytorch-grad-cam's reshape transform for a ViT: its tokens (batch, prefix + rows x columns,
    channels) as a feature map (batch, channels, rows, columns), the class and register tokens left out."""
    rows, columns = token_grid(model)
    prefix = int(getattr(model, "num_prefix_tokens", 1))

    def reshape(tokens):
        patches = tokens[:, prefix:, :]
        return patches.reshape(patches.shape[0], rows, columns, patches.shape[2]).permute(0, 3, 1, 2)

    return reshape


def cam_target(model, input_size: int = 224):
    """(the module Grad-CAM explains, its reshape transform or None). A ViT: its last block's first
    norm, whose output is what that block's attention mixes (the usual choice for ViT Grad-CAM; the
    last block's output reaches the head through the class token alone, so its gradients say little
    about the patches); a CNN: ``cam_target_layer``."""
    if token_grid(model) is not None:
        return model.blocks[-1].norm1, vit_reshape(model)
    return cam_target_layer(model, input_size), None


def cam_target_layer(model, input_size: int = 224):
    """The module whose output Grad-CAM should explain: the last one to hand on a spatial feature map.

    Found by one forward pass on a blank image, so it works for any torchvision CNN classifier. Hooks
    fire when a module finishes, so a block that contains the last convolution (resnet ``layer4``,
    efficientnet ``features``) comes after its parts and is the one chosen; pooled 1x1 maps are not
    spatial and are skipped.
    """
    return _last_spatial(model, input_size)[0]


def cam_map_size(model, input_size: int = 224) -> tuple[int, int]:
    """Height and width of the feature map Grad-CAM explains (coarse maps give blobs, not shapes)."""
    return token_grid(model) or _last_spatial(model, input_size)[1]


def _last_spatial(model, input_size: int):
    import torch

    spatial = []

    def record(module, _inputs, output):
        if isinstance(output, torch.Tensor) and output.ndim == 4 and min(output.shape[2:]) > 1:
            spatial.append((module, tuple(int(v) for v in output.shape[2:])))

    hooks = [m.register_forward_hook(record) for m in model.modules() if m is not model]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            parameter = next(model.parameters())
            model(torch.zeros(1, 3, input_size, input_size, device=parameter.device, dtype=parameter.dtype))
    finally:
        for hook in hooks:
            hook.remove()
        model.train(was_training)
    if not spatial:
        raise KvasirError(f"{type(model).__name__} has no module with a spatial feature map for Grad-CAM; "
                          "it needs a convolutional classifier (resnet, efficientnet, densenet, ...).")
    return spatial[-1]


def gradcam_overlays(model, images: list[Image.Image], tensors, targets: list[int]) -> list[np.ndarray]:
    """Grad-CAM heat maps for class ``targets`` laid over ``images`` (uint8 RGB, each image's own size).

    ``tensors`` are the same images as the model sees them (normalised batch); the model is put in
    eval mode.
    """
    import cv2
    from pytorch_grad_cam import GradCAM
    from pytorch_grad_cam.utils.image import show_cam_on_image
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    layer, reshape = cam_target(model, input_size=min(tensors.shape[-2:]))
    with GradCAM(model=model, target_layers=[layer], reshape_transform=reshape) as cam:
        maps = cam(input_tensor=tensors, targets=[ClassifierOutputTarget(int(t)) for t in targets])
    overlays = []
    for image, heat in zip(images, maps, strict=True):
        heat = np.asarray(Image.fromarray(heat.astype(np.float32)).resize(image.size, Image.BILINEAR))
        rgb = np.asarray(image.convert("RGB"), np.float32) / 255
        # viridis, perceptually uniform, instead of pytorch-grad-cam's default jet that hides the tissue
        overlays.append(show_cam_on_image(rgb, np.clip(heat, 0, 1), use_rgb=True, colormap=cv2.COLORMAP_VIRIDIS))
    return overlays


def gradcam_examples(cfg: Config, model_name: str, predictions: pd.DataFrame, correct: int = 1, incorrect: int = 1):
    """Figure 3's material: per class, correct and incorrect validation examples (where they exist)
    with the Grad-CAM overlay of the class the model predicted. Returns (overlays, rows, the
    explained feature map's size, the frames as the model saw them, for beside the overlays)."""
    cfg = models.for_model(cfg, model_name)  # the input the model was trained with
    rows = pick_examples_per_class(predictions, correct, incorrect, cfg.eval.seed)
    cached = load_cached(prepare.cache_dir(cfg), rows["path"])
    view, preset = presets.eval_view(cfg.transforms), presets.eval_preset(cfg.transforms)
    seen = [view(image) for image in cached]  # the map is drawn on what the model saw (crop, mask)
    tensors = torch.stack([preset(image) for image in cached])
    model = checkpoints.load_trained_model(cfg, model_name).float()  # Grad-CAM needs fp32 gradients, on the CPU
    overlays = gradcam_overlays(model, seen, tensors, rows["pred"].to_numpy(np.int64).tolist())
    return overlays, rows, cam_map_size(model, min(tensors.shape[-2:])), seen
