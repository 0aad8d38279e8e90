"""Arithmetic per image, counted by torch's ``FlopCounterMode`` (a multiply-add is 2 FLOPs): a
model's forward pass, and a training step's, which adds the backward pass through what the stage
trains. What ``make bench`` sets a measured rate against (its fraction of the device's peak) and what
``metrics.json`` records of the evaluated model.

Two of torch's formulas are replaced or added here. Its convolution backward counts a grouped
(depthwise) convolution's weight gradient as a dense one's, ``groups`` times too many (64x for a
depthwise 3x3 of 64 channels): ``conv_backward_flops`` counts what each gradient asked for costs, the
forward pass's FLOPs. And it has no formula for the attention kernel torch runs on a CPU, so a ViT's
attention counted 0 there: ``_attention_flops`` gives it the formula of the GPU's kernels.
"""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, conv_flop_count, sdpa_backward_flop_count, sdpa_flop_count

from kvasir_utils.train.models import set_train_mode


def conv_backward_flops(grad_out_shape, x_shape, w_shape, _bias, _stride, _padding, _dilation, transposed,
                        _output_padding, _groups, output_mask, out_shape=None, **kwargs) -> int:
    """``aten.convolution_backward``: the forward's FLOPs (whose weight shape already holds the
    groups) once for the input's gradient and once for the weight's, where each is computed."""
    forward = conv_flop_count(x_shape, w_shape, grad_out_shape, transposed=transposed)
    return forward * (int(output_mask[0]) + int(output_mask[1]))


def _attention_flops(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


def _attention_backward_flops(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None,
                              **kwargs) -> int:
    return sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


def _formulas() -> dict:
    aten = torch.ops.aten
    formulas = {aten.convolution_backward: conv_backward_flops}
    for name, formula in (("_scaled_dot_product_flash_attention_for_cpu", _attention_flops),
                          ("_scaled_dot_product_flash_attention_for_cpu_backward", _attention_backward_flops)):
        if hasattr(aten, name):  # the CPU's attention kernel, in the torch versions that have it
            formulas[getattr(aten, name)] = formula
    return formulas


def _counter() -> FlopCounterMode:
    return FlopCounterMode(display=False, custom_mapping=_formulas())


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
    and the backward pass, which computes a gradient only as far upstream as a parameter needs one (a
    stage that trains the head alone adds next to nothing). Counted on a copy (the model's BatchNorm
    statistics, gradients and modes are left as they were), on a batch of 2 (batch statistics need
    more than one image); the optimiser's elementwise step is not counted."""
    model = set_train_mode(copy.deepcopy(model), frozen_batchnorm)
    images = torch.zeros(2, 3, image_size, image_size, device=next(model.parameters()).device)
    with _counter() as counter:
        logits = model(images)
        if any(p.requires_grad for p in model.parameters()):
            logits.float().sum().backward()
    return counter.get_total_flops() / 2 / 1e9
