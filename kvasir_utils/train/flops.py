"""Arithmetic per image, counted by torch's ``FlopCounterMode`` (a multiply-add is 2 FLOPs): a
model's forward pass, and a training step's, which adds the backward pass through what the stage
trains. What ``make bench`` sets a measured rate against (its fraction of the device's peak) and what
``metrics.json`` records of the evaluated model.

Torch's formula for a convolution's backward pass counts a grouped (depthwise) convolution as a dense
one, over 60 times too many for a depthwise 3x3 of 64 channels; ``conv_backward_flops`` takes its
place here: each gradient asked for (of the input, of the weight) costs what the forward pass does.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, conv_flop_count

from kvasir_utils.train.models import set_train_mode


def conv_backward_flops(grad_out_shape, x_shape, w_shape, _bias, _stride, _padding, _dilation, transposed,
                        _output_padding, _groups, output_mask, out_shape=None, **kwargs) -> int:
    """``aten.convolution_backward``: the forward's FLOPs (whose weight shape already holds the
    groups) once for the input's gradient and once for the weight's, where each is computed."""
    forward = conv_flop_count(x_shape, w_shape, grad_out_shape, transposed=transposed)
    return forward * (int(output_mask[0]) + int(output_mask[1]))


def _counter() -> FlopCounterMode:
    return FlopCounterMode(display=False, custom_mapping={torch.ops.aten.convolution_backward: conv_backward_flops})


def forward_gflops(model: nn.Module, image_size: int = 224) -> float:
    """Forward GFLOPs for one image, in eval mode."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    with _counter() as counter, torch.inference_mode():
        model(torch.zeros(1, 3, image_size, image_size, device=device))
    model.train(was_training)
    return counter.get_total_flops() / 1e9


def training_gflops(model: nn.Module, image_size: int = 224, frozen_batchnorm: str = "eval") -> float:
    """GFLOPs of one image's training step as the model is frozen: the forward pass in training mode,
    and the backward pass, which computes a gradient only where a parameter after it needs one (a
    stage that trains the head alone adds next to nothing). Counted on a batch of 2 (batch statistics
    need more than one image); the optimiser's elementwise step is not counted."""
    device = next(model.parameters()).device
    was_training = model.training
    set_train_mode(model, frozen_batchnorm)
    images = torch.zeros(2, 3, image_size, image_size, device=device)
    with _counter() as counter:
        model(images).float().sum().backward()
    model.zero_grad(set_to_none=True)
    model.train(was_training)
    return counter.get_total_flops() / 2 / 1e9
