"""Any torchvision or timm classifier with a new head, where its pretrained weights come from, and
the freeze policies of the two stages.

``train.models`` names torchvision models as they are and timm models as ``timm:<name>`` (with the
pretrained tag: ``timm:vit_small_patch14_dinov2.lvd142m``). Pretrained weights come from each
library's own cache (torch hub's, the Hugging Face hub's) or from a local file per model
(``train.weights_files``); under ``runtime.offline`` nothing is downloaded. timm is imported only
when a timm model is named.
"""

from __future__ import annotations

import copy
import functools

import pandas as pd
import torch
import torchvision
from torch import nn

from kvasir_utils.artefacts import STAGES
from kvasir_utils.config import Config, LoraSettings, TransformsConfig, WeightsFile
from kvasir_utils.errors import KvasirError
from kvasir_utils.profiles import with_model_settings
from kvasir_utils.train import lora
from kvasir_utils.train.weights import (
    checked_file,
    hub_weights,
    is_timm,
    load_file_into,
    load_pretrained_state,
    pretrained_cfg,
    timm_name,
    weights_enum,
)

BATCHNORM = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)
TRAINABLE_READINGS = "head, all, last_tensors:<N>, block:<module name>, module:<module name>, lora"
# torchvision's classification weights are made for 224 px crops normalised with ImageNet's statistics
TORCHVISION_SETTINGS = {"image_size": 224, "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}


def head_name(model: nn.Module) -> str:
    """The classifier's output layer: timm's own name for it (``head``, ``head.fc``), else the last
    nn.Linear (``fc``, ``classifier.1``, ``heads.head``...)."""
    classifier = (getattr(model, "pretrained_cfg", None) or {}).get("classifier")
    if classifier and isinstance(dict(model.named_modules()).get(classifier), nn.Linear):
        return classifier
    linears = [name for name, module in model.named_modules() if isinstance(module, nn.Linear)]
    if not linears:
        raise KvasirError(f"{type(model).__name__} has no nn.Linear output layer to replace; pick another model")
    return linears[-1]


def replace_head(model: nn.Module, num_classes: int) -> nn.Module:
    name = head_name(model)
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, nn.Linear(getattr(parent, child).in_features, num_classes))
    return model


def model_settings(name: str) -> dict:
    """The input a model is made for: ``image_size``, ``mean``, ``std`` (timm: its pretrained
    configuration; torchvision: 224 px and ImageNet's statistics)."""
    if not is_timm(name):
        return dict(TORCHVISION_SETTINGS)
    config = pretrained_cfg(name)
    return {"image_size": int(config["input_size"][-1]), "mean": list(config["mean"]), "std": list(config["std"])}


def model_transforms(transforms: TransformsConfig, name: str) -> TransformsConfig:
    """``transforms`` with each null of ``image_size``, ``mean`` and ``std`` taken from the model
    (``model_settings``); the same object when the profile sets all three."""
    unset = [key for key in TORCHVISION_SETTINGS if getattr(transforms, key) is None]
    if not unset:
        return transforms
    own = model_settings(name)
    return transforms.model_copy(update={key: own[key] for key in unset})


def for_model(cfg: Config, name: str) -> Config:
    """The settings ``name`` trains and is evaluated with: the profile's, with the model's own input
    where the profile leaves ``transforms`` null, and its own stage readings where
    ``train.readings_by_model`` gives them. What a stage's checkpoint records, so every later step
    reads concrete values back; ``cfg`` itself when nothing differs (the paper)."""
    own = model_transforms(cfg.transforms, name)
    return with_model_settings(cfg, {key: getattr(own, key) for key in TORCHVISION_SETTINGS},
                               cfg.train.readings_by_model.get(name, {}))



def random_init(cfg: Config) -> Config:
    """``cfg`` with no pretrained weights (nothing read or downloaded): a model's speed and arithmetic,
    which is what the bench and the sweep pricing measure, are the same from random weights."""
    return cfg.model_copy(update={"train": cfg.train.model_copy(update={"weights": None, "weights_files": {}})})


def build_model(name: str, num_classes: int, weights: str | None = None, offline: bool = False, *,
                image_size: int | None = None, weights_file: WeightsFile | None = None) -> nn.Module:
    """A torchvision or timm (``timm:<name>``) classifier with a new ``num_classes`` head: random
    init, or pretrained (``weights``: torchvision's weights name; for timm any value means its tag's
    weights), or from ``weights_file``, which wins. A timm model made for a fixed input (a ViT) is
    built for ``image_size``, its position embedding resampled."""
    if is_timm(name):
        return build_timm(name, num_classes, weights is not None or weights_file is not None, offline, image_size,
                          weights_file)
    try:
        model = torchvision.models.get_model(name, weights=None)
    except ValueError as exc:
        raise KvasirError(f"unknown torchvision model {name!r}; see torchvision.models.list_models()") from exc
    if weights_file is not None:
        load_file_into(model, name, weights_file)
    elif weights is not None:
        model.load_state_dict(load_pretrained_state(name, weights, offline))
    return replace_head(model, num_classes)


def build_timm(name: str, num_classes: int, pretrained: bool, offline: bool, image_size: int | None,
               weights_file: WeightsFile | None) -> nn.Module:
    """A timm model; its pretrained weights always from a file (``pretrained_cfg_overlay``): the one
    given, or the Hugging Face hub cache's copy, so nothing downloads behind the study's back."""
    import timm

    arch, kwargs = timm_name(name), {"num_classes": num_classes}
    if image_size is not None and pretrained_cfg(name).get("fixed_input_size"):
        kwargs["img_size"] = image_size
    if pretrained:
        path = checked_file(name, weights_file) if weights_file is not None else hub_weights(name, offline)
        kwargs |= {"pretrained": True, "pretrained_cfg_overlay": {"file": str(path)}}
    try:
        return timm.create_model(arch, **kwargs)
    except RuntimeError as exc:  # a file of another architecture: timm's strict load names the keys
        raise KvasirError(f"the weights for {name} do not fit it: {str(exc)[:500]}") from exc


def stage_uses_lora(cfg: Config, stage: str) -> bool:
    """A stage's model carries adapters when it or a stage before it trains with ``lora``."""
    return any(cfg.stage_config(s).trainable == "lora" for s in STAGES[: STAGES.index(stage) + 1])


def stage_model(cfg: Config, name: str, stage: str) -> nn.Module:
    """The model ``stage`` trains, frozen as its reading says: stage 1 with the pretrained weights,
    a later stage as the architecture (its weights come from the stage before); with adapters where
    the stage (or one before it) trains with ``lora``."""
    cfg = for_model(cfg, name)
    first = stage == STAGES[0]
    model = build_model(name, len(cfg.classes), cfg.train.weights if first else None, cfg.runtime.offline,
                        image_size=cfg.transforms.image_size,
                        weights_file=cfg.train.weights_files.get(name) if first else None)
    if stage_uses_lora(cfg, stage):
        lora.add_lora(model, cfg.train.lora)
    set_trainable(model, cfg.stage_config(stage).trainable)
    return model


def load_weights(model: nn.Module, state: dict) -> nn.Module:
    """Load a state dict; a model with adapters also takes its plain model's (stage 1's)."""
    if lora.has_lora(model) and not any(lora.is_adapter(k) for k in state):
        state = lora.wrapped_state(model, state)
    model.load_state_dict(state)
    return model


def restore(cfg: Config, name: str, stage: str, state: dict) -> nn.Module:
    """A trained model from its stage's checkpoint (``cfg``: the settings it recorded): the
    architecture that stage trained, adapters included, with the checkpoint's weights."""
    cfg = for_model(cfg, name)
    model = build_model(name, len(cfg.classes), image_size=cfg.transforms.image_size)
    if stage_uses_lora(cfg, stage):
        lora.add_lora(model, cfg.train.lora)
    return load_weights(model, state)


def trainable_counts(cfg: Config, name: str) -> dict[str, int]:
    """Per stage, how many parameters its reading trains (0 for a stage of no epoch), counted on
    the architecture built without memory (the meta device)."""
    cfg = for_model(cfg, name)
    counts, size = {}, cfg.transforms.image_size  # a ViT's position embedding counts
    for stage in STAGES:
        with torch.device("meta"):
            model = build_model(name, len(cfg.classes), image_size=size)
        if stage_uses_lora(cfg, stage):
            lora.add_lora(model, cfg.train.lora)
        set_trainable(model, cfg.stage_config(stage).trainable)
        counts[stage] = sum(p.numel() for p in model.parameters() if p.requires_grad) \
            if cfg.stage_config(stage).epochs > 0 else 0
    return counts


def _trainable_names(model: nn.Module, policy: str) -> list[str]:
    names = [name for name, _ in model.named_parameters()]
    head = head_name(model)
    head_params = [n for n in names if n.startswith(head + ".")]
    kind, _, arg = policy.partition(":")
    if kind == "head" and not arg:
        return head_params
    if kind == "lora" and not arg:
        if not lora.has_lora(model):
            raise KvasirError(f"trainable reading 'lora': {type(model).__name__} carries no adapters "
                              f"(models.stage_model adds train.lora's before freezing)")
        return [n for n in names if lora.is_adapter(n) or n in head_params]
    if kind == "all" and not arg:
        return names
    if kind == "last_tensors" and arg.isdigit() and int(arg) > 0:
        return names[-int(arg):]
    if kind in ("block", "module") and arg:
        modules = dict(model.named_modules())
        if arg not in modules:
            top = ", ".join(n for n, _ in model.named_children())
            raise KvasirError(f"trainable reading {policy!r}: {type(model).__name__} has no module {arg!r} "
                              f"(top-level modules: {top})")
        inside = [n for n in names if n.startswith(arg + ".")]
        if kind == "block":
            return inside + [n for n in head_params if n not in inside]
        return names[names.index(inside[0]):] if inside else head_params
    raise KvasirError(f"unknown trainable reading {policy!r}; allowed: {TRAINABLE_READINGS}")


def check_readings(model_names: list[str], readings: dict[str, str], weights: str | None,
                   lora_settings: LoraSettings | None = None) -> None:
    """Build every model's architecture on the meta device (no memory, no weights) and check each
    trainable reading and the weights name against it, so a reading a model does not have stops
    the run before anything is downloaded or trained. ``readings`` maps setting name to reading;
    a ``lora`` reading is checked on the model with ``lora_settings``' adapters."""
    lora_json = lora_settings.model_dump_json() if lora_settings is not None else None
    problems = [problem for name in model_names
                for problem in _model_problems(name, tuple(readings.items()), weights, lora_json)]
    if problems:
        raise KvasirError("the profile does not fit its models:\n  " + "\n  ".join(problems))


@functools.lru_cache(maxsize=256)
def _model_problems(name: str, readings: tuple, weights: str | None, lora_json: str | None) -> tuple[str, ...]:
    """``check_readings`` for one model, remembered: a sweep checks the same few models and readings
    for each of its members (90 for the leakage sweep)."""
    lora_settings = LoraSettings.model_validate_json(lora_json) if lora_json is not None else None
    try:
        model = _meta_model(name)
    except KvasirError as exc:
        return (f"train.models: {exc}",)
    problems = []
    for setting, reading in readings:
        problems += _problems(f"{setting} for {name}", _check_reading, name, model, reading, lora_settings)
    if weights is not None and not is_timm(name):
        problems += _problems(f"train.weights for {name}", weights_enum, name, weights)
    return tuple(problems)


def _check_reading(name: str, model: nn.Module, reading: str, lora_settings: LoraSettings | None) -> None:
    if reading == "lora":
        if lora_settings is None:
            raise KvasirError("the reading lora needs train.lora's settings")
        with torch.device("meta"):
            model = lora.add_lora(build_model(name, 2), lora_settings)
    _trainable_names(model, reading)


def check_profile(cfg: Config) -> None:
    """``check_readings`` for every model and stage reading of a profile; every model of
    ``train.weights_files`` one of the profile's, and the cache large enough for every model's input."""
    for name in cfg.train.models:
        own = for_model(cfg, name) if name in cfg.train.readings_by_model else cfg
        readings = {f"train.{stage}.trainable": own.stage_config(stage).trainable for stage in STAGES}
        check_readings([name], readings, cfg.train.weights, cfg.train.lora)
    # An entry for a model the profile does not train is kept (a sweep's member trains one of a
    # profile's models at a time), but it must name a model there is.
    problems = [f"train.{setting} names {name!r}, which is no model: {exc}"
                for setting in ("weights_files", "readings_by_model") for name in getattr(cfg.train, setting)
                if name not in cfg.train.models for exc in _problems(name, _build_on_meta, name)]
    if "features" in cfg.split.near_duplicates.detectors:  # notebook 01 builds it, after the download
        problems += [f"split.near_duplicates.features_model: {exc}" for exc in
                     _problems(cfg.split.near_duplicates.features_model, _build_on_meta,
                               cfg.split.near_duplicates.features_model)]
    for name in cfg.train.models:
        size = model_transforms(cfg.transforms, name).image_size
        if size > cfg.cache.short_side:
            problems.append(f"transforms.image_size: {name} takes {size} px (its own, as transforms.image_size is "
                            f"null), more than cache.short_side ({cfg.cache.short_side}): crops would upsample; "
                            f"set cache.short_side >= {size} or transforms.image_size")
    if problems:
        raise KvasirError("the profile does not fit its models:\n  " + "\n  ".join(problems))


def _meta_model(name: str) -> nn.Module:
    """``name``'s architecture on the meta device (no memory, no weights), built once (a sweep checks
    the same few models for every member); each caller gets its own copy to change."""
    return copy.deepcopy(_built_on_meta(name))


@functools.lru_cache(maxsize=32)
def _built_on_meta(name: str) -> nn.Module:
    with torch.device("meta"):
        return build_model(name, 2)


def _build_on_meta(name: str) -> None:
    _built_on_meta(name)  # only whether it builds: no copy needed


def _problems(what: str, check, *args) -> list[str]:
    try:
        check(*args)
    except KvasirError as exc:
        return [f"{what}: {exc}"]
    return []


def set_trainable(model: nn.Module, policy: str) -> list[str]:
    """Freeze the model except what ``policy`` names; returns the trainable parameter names.

    Readings of what to train (the paper's "frozen weights" and "last 10 layers unfrozen"):
      head              only the new output layer (stage 1);
      all               every parameter;
      last_tensors:N    the last N parameter tensors in registration order (common PyTorch idiom);
      block:NAME        that module (e.g. ``layer4.2``, Keras' "last 10 layers") plus the head;
      module:NAME       that module and every parameter registered after it;
      lora              the adapters (``train.lora``, added by ``stage_model``) and the head.
    Run ``set_train_mode`` after ``model.train()`` so frozen BatchNorm layers keep their statistics.
    """
    trainable = set(_trainable_names(model, policy))
    for name, param in model.named_parameters():
        param.requires_grad_(name in trainable)
    return [n for n, _ in model.named_parameters() if n in trainable]


def set_train_mode(model: nn.Module, frozen_batchnorm: str = "eval") -> nn.Module:
    """``model.train()``, but BatchNorm layers whose weights are frozen stay in eval mode
    (``frozen_batchnorm="eval"``) so their running statistics do not move."""
    model.train()
    if frozen_batchnorm == "eval":
        for module in model.modules():
            if isinstance(module, BATCHNORM) and not any(p.requires_grad for p in module.parameters()):
                module.eval()
    return model


def trainable_table(model: nn.Module) -> pd.DataFrame:
    """Per top-level module: parameters, how many are trainable, and which tensors."""
    rows = []
    for child_name, child in model.named_children():
        params = list(child.named_parameters())
        if not params:
            continue
        trainable = [n for n, p in params if p.requires_grad]
        rows.append({
            "module": child_name,
            "parameters": sum(p.numel() for _, p in params),
            "trainable": sum(p.numel() for _, p in params if p.requires_grad),
            "trainable tensors": f"{len(trainable)} of {len(params)}",
        })
    table = pd.DataFrame(rows)
    total = {"module": "total", "parameters": table["parameters"].sum(), "trainable": table["trainable"].sum(),
             "trainable tensors": f"{sum(p.requires_grad for p in model.parameters())} of "
                                  f"{len(list(model.parameters()))}"}
    return pd.concat([table, pd.DataFrame([total])], ignore_index=True)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
