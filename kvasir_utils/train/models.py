"""Any torchvision classifier with a new 8-class head, and the freeze policies of the two stages."""

from __future__ import annotations

import urllib.error
from pathlib import Path

import pandas as pd
import torch
import torchvision
from torch import nn

from kvasir_utils.artefacts import STAGES
from kvasir_utils.config import Config
from kvasir_utils.errors import KvasirError
from kvasir_utils.files import sha256_file

BATCHNORM = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)
TRAINABLE_READINGS = "head, all, last_tensors:<N>, block:<module name>, module:<module name>"


def head_name(model: nn.Module) -> str:
    """The classifier's output layer: the last nn.Linear (``fc``, ``classifier.1``, ``heads.head``...)."""
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


def weights_enum(name: str, weights: str):
    try:
        options = torchvision.models.get_model_weights(name)
    except (ValueError, KeyError) as exc:
        raise KvasirError(f"torchvision has no weights for model {name!r}") from exc
    try:
        return options[weights]
    except KeyError as exc:
        allowed = ", ".join(w.name for w in options)
        raise KvasirError(f"unknown weights {weights!r} for {name}; allowed: {allowed} or null") from exc


def weights_file(name: str, weights: str) -> Path:
    """Where torch hub keeps (or will keep) the weights file."""
    url = weights_enum(name, weights).url
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(url).name


def check_weights_file(path: Path, url: str) -> None:
    """A weights file must match the SHA-256 prefix in its name (``resnet50-0676ba61.pth``), as
    torch.hub checks on download; a file copied in by hand is checked the same way."""
    match = torch.hub.HASH_REGEX.search(path.name)
    if match is None or not match.group(1):
        return
    expected = match.group(1)
    actual = sha256_file(path)
    if not actual.startswith(expected):
        raise KvasirError(
            f"the weights file {path} is damaged or not the file its name says: its SHA-256 starts with "
            f"{actual[:len(expected)]}, expected {expected} (size {path.stat().st_size:,} bytes). Delete it and "
            f"download it again from {url} (on a machine with network, then copy it into {path.parent})."
        )


def load_pretrained_state(name: str, weights: str, offline: bool) -> dict:
    """ImageNet weights through torch hub's cache; a missing or damaged file is a clear error."""
    enum = weights_enum(name, weights)
    path = weights_file(name, weights)
    remedy = (
        f"the weights file {path.name} is not in {path.parent}. Download it from {enum.url} on a machine "
        f"with network and copy it into that folder (or set TORCH_HOME), or use the smoke profile "
        f"(`make smoke`), which needs no weights."
    )
    if path.exists():
        check_weights_file(path, enum.url)
    elif offline:
        raise KvasirError(f"offline: {remedy}")
    try:
        return torch.hub.load_state_dict_from_url(enum.url, progress=True, check_hash=True, weights_only=True)
    except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
        raise KvasirError(f"could not download weights ({exc}): {remedy}") from exc


def build_model(name: str, num_classes: int, weights: str | None = None, offline: bool = False) -> nn.Module:
    """A torchvision classifier by name, optionally with pretrained weights, with a new head."""
    try:
        model = torchvision.models.get_model(name, weights=None)
    except ValueError as exc:
        raise KvasirError(f"unknown torchvision model {name!r}; see torchvision.models.list_models()") from exc
    if weights is not None:
        model.load_state_dict(load_pretrained_state(name, weights, offline))
    return replace_head(model, num_classes)


def _trainable_names(model: nn.Module, policy: str) -> list[str]:
    names = [name for name, _ in model.named_parameters()]
    head = head_name(model)
    head_params = [n for n in names if n.startswith(head + ".")]
    kind, _, arg = policy.partition(":")
    if kind == "head" and not arg:
        return head_params
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


def check_readings(model_names: list[str], readings: dict[str, str], weights: str | None) -> None:
    """Build every model's architecture on the meta device (no memory, no weights) and check each
    trainable reading and the weights name against it, so a reading a model does not have stops
    the run before anything is downloaded or trained. ``readings`` maps setting name to reading."""
    problems = []
    for name in model_names:
        try:
            with torch.device("meta"):
                model = build_model(name, 2)
        except KvasirError as exc:
            problems.append(f"train.models: {exc}")
            continue
        for setting, reading in readings.items():
            problems += _problems(f"{setting} for {name}", _trainable_names, model, reading)
        if weights is not None:
            problems += _problems(f"train.weights for {name}", weights_enum, name, weights)
    if problems:
        raise KvasirError("the profile does not fit its models:\n  " + "\n  ".join(problems))


def check_profile(cfg: Config) -> None:
    """``check_readings`` for every model and stage reading of a profile."""
    readings = {f"train.{stage}.trainable": cfg.stage_config(stage).trainable for stage in STAGES}
    check_readings(cfg.train.models, readings, cfg.train.weights)


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
      module:NAME       that module and every parameter registered after it.
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


def gflops(model: nn.Module, image_size: int = 224) -> float:
    """Forward GFLOPs for one image (multiply-adds counted as 2 FLOPs)."""
    from torch.utils.flop_counter import FlopCounterMode

    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    with FlopCounterMode(display=False) as counter, torch.inference_mode():
        model(torch.zeros(1, 3, image_size, image_size, device=device))
    model.train(was_training)
    return counter.get_total_flops() / 1e9
