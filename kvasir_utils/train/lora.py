"""Low-rank adapters (LoRA, through peft) for a ``trainable: lora`` stage, and their merge for export.

The adapters are injected into the model in place (``peft.inject_adapter_in_model``, peft's API for
models that are not a ``PeftModel``), so the notebooks' model object, the freeze readings, the
optimizer and the checkpoints see one ordinary ``nn.Module``. Its state dict is peft's wrapped one:
a wrapped layer's weight is ``<name>.base_layer.weight``, its adapters ``<name>.lora_A.default.weight``
and ``<name>.lora_B.default.weight``. The head is not put in peft's ``modules_to_save`` (which keeps a
frozen copy of it beside the trained one): the freeze reading trains it in place, the same count.
peft is imported here only, when a LoRA stage needs it (it imports transformers: seconds).
"""

from __future__ import annotations

import copy

from torch import nn

from kvasir_utils.config import LoraSettings
from kvasir_utils.errors import KvasirError

ADAPTER_KEYS = (".lora_A.", ".lora_B.")  # in a parameter's name: it belongs to an adapter
BASE_LAYER = ".base_layer."


def add_lora(model: nn.Module, settings: LoraSettings) -> nn.Module:
    """Wrap ``settings.target_modules`` of ``model`` (in place) with rank-``settings.rank`` adapters;
    B starts at zero, so the wrapped model computes what the model did."""
    from peft import LoraConfig, inject_adapter_in_model

    config = LoraConfig(r=settings.rank, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                        target_modules=list(settings.target_modules), bias="none")
    try:
        inject_adapter_in_model(config, model)
    except ValueError as exc:  # peft: "Target modules {...} not found in the base model"
        linears = sorted({name.rpartition(".")[2] for name, m in model.named_modules() if isinstance(m, nn.Linear)})
        raise KvasirError(f"train.lora.target_modules {list(settings.target_modules)}: {type(model).__name__} has "
                          f"no such linear layer ({exc}); its linear layers are named {', '.join(linears)}") from None
    return model


def has_lora(model: nn.Module) -> bool:
    return any(is_adapter(name) for name, _ in model.named_parameters())


def is_adapter(name: str) -> bool:
    return any(key in name for key in ADAPTER_KEYS)


def adapter_names(model: nn.Module) -> list[str]:
    """The adapters' parameter names, in registration order."""
    return [name for name, _ in model.named_parameters() if is_adapter(name)]


def wrapped_state(model: nn.Module, plain: dict) -> dict:
    """A plain model's state dict (stage 1's) as the LoRA-wrapped ``model`` names it: each wrapped
    layer's tensors under ``base_layer``, the adapters as ``model`` holds them (their initialisation)."""
    own = model.state_dict()
    return {name: own[name] if is_adapter(name) else plain[name.replace(BASE_LAYER, ".")] for name in own}


def lora_parameter_count(model: nn.Module) -> int:
    """rank x (in + out) over every wrapped layer: the adapters' size from the layers themselves."""
    from peft.tuners.lora import LoraLayer

    return sum(layer.r["default"] * (layer.in_features + layer.out_features)
               for layer in model.modules() if isinstance(layer, LoraLayer))


def merged(model: nn.Module) -> nn.Module:
    """A copy of ``model`` with each adapter merged into its layer's weight and the layer unwrapped
    (peft's ``merge_and_unload``, for a model whose adapters were injected in place): the plain
    architecture, for ONNX. ``model`` itself is unchanged; a model without adapters is returned as it is."""
    if not has_lora(model):
        return model
    from peft.tuners.tuners_utils import BaseTunerLayer

    copied = copy.deepcopy(model)
    wrapped = [name for name, module in copied.named_modules() if isinstance(module, BaseTunerLayer)]
    for name in wrapped:
        parent_name, _, child = name.rpartition(".")
        parent = copied.get_submodule(parent_name) if parent_name else copied
        layer = getattr(parent, child)
        layer.merge()
        setattr(parent, child, layer.get_base_layer())
    return copied
