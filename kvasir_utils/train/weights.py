"""Where a model's pretrained weights come from: torchvision's through torch hub's cache, timm's
(``timm:<name>``) through the Hugging Face hub's cache, or a local file per model
(``train.weights_files``, checked against its SHA-256 when one is given). Under ``runtime.offline``
nothing is downloaded: a missing file is one error naming the file, where to put it and the source.
timm is imported only when a timm model is named.
"""

from __future__ import annotations

import urllib.error
from pathlib import Path

import torch
import torchvision
from torch import nn

from kvasir_utils.artefacts import TIMM_PREFIX
from kvasir_utils.config import PROJECT_ROOT, Config, WeightsFile
from kvasir_utils.errors import KvasirError
from kvasir_utils.files import sha256_file

HUB_FILES = ("model.safetensors", "pytorch_model.bin")  # what timm loads from a Hugging Face hub repository


def is_timm(name: str) -> bool:
    return name.startswith(TIMM_PREFIX)


def timm_name(name: str) -> str:
    """``timm:convnext_tiny.fb_in22k_ft_in1k`` -> ``convnext_tiny.fb_in22k_ft_in1k``."""
    import timm

    arch = name.removeprefix(TIMM_PREFIX)
    if not timm.is_model(arch):
        raise KvasirError(f"unknown timm model {arch!r} ({name}); see timm.list_models(pretrained=True)")
    return arch


def pretrained_cfg(name: str) -> dict:
    """A timm model's pretrained configuration (input size, normalisation, hub id, classifier name)."""
    import timm

    return timm.models.get_pretrained_cfg(timm_name(name)).to_dict()


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


def _missing_file_remedy(path: Path, url: str) -> str:
    return (f"the weights file {path.name} is not in {path.parent}. Download it from {url} on a machine "
            f"with network and copy it into that folder (or set TORCH_HOME), or use the smoke profile "
            f"(`make smoke`), which needs no weights.")


def load_pretrained_state(name: str, weights: str, offline: bool) -> dict:
    """ImageNet weights through torch hub's cache; a missing or damaged file is a clear error."""
    enum = weights_enum(name, weights)
    path = weights_file(name, weights)
    remedy = _missing_file_remedy(path, enum.url)
    if path.exists():
        check_weights_file(path, enum.url)
    elif offline:
        raise KvasirError(f"offline: {remedy}")
    try:
        return torch.hub.load_state_dict_from_url(enum.url, progress=True, check_hash=True, weights_only=True)
    except (urllib.error.URLError, ConnectionError, TimeoutError) as exc:
        raise KvasirError(f"could not download weights ({exc}): {remedy}") from exc


def _resolve(path: str) -> Path:
    path = Path(path).expanduser()
    return path if path.is_absolute() else PROJECT_ROOT / path


def source_id(name: str) -> str:
    """Where the library downloads a model's weights from: timm's hub id, torchvision's URL."""
    return f"the Hugging Face hub repository {pretrained_cfg(name).get('hf_hub_id')}" if is_timm(name) \
        else "torchvision's weights"


def existing_file(name: str, weights_file: WeightsFile) -> Path:
    """``train.weights_files``' file for ``name``, which must exist (its hash unchecked)."""
    path = _resolve(weights_file.file)
    if not path.is_file():
        raise KvasirError(
            f"the weights file of {name} in train.weights_files, {path}, does not exist. Put the file there "
            f"(downloaded from {source_id(name)} on a machine with network), or correct the path, or remove "
            f"{name} from train.weights_files to use the library's cache.")
    return path


def checked_file(name: str, weights_file: WeightsFile) -> Path:
    """``train.weights_files``' file for ``name``: it must exist, and match its SHA-256 when one is given."""
    path = existing_file(name, weights_file)
    if weights_file.sha256 is not None:
        actual = sha256_file(path)
        if actual.lower() != weights_file.sha256.lower():
            raise KvasirError(
                f"the weights file of {name}, {path}, is not the file train.weights_files names: its SHA-256 is "
                f"{actual}, expected {weights_file.sha256} (size {path.stat().st_size:,} bytes). Copy the right "
                f"file there, or correct the sha256.")
    return path


def read_weights_file(path: Path) -> dict:
    """A state dict from a .safetensors or .pth file (tensors only: nothing in it is executed)."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    state = torch.load(path, map_location="cpu", weights_only=True)
    return state.get("state_dict", state.get("model", state)) if isinstance(state, dict) else state


def load_file_into(model: nn.Module, name: str, weights_file: WeightsFile) -> None:
    path = checked_file(name, weights_file)
    try:
        model.load_state_dict(read_weights_file(path))
    except RuntimeError as exc:
        raise KvasirError(f"the weights file {path} (train.weights_files) does not fit {name}: "
                          f"{str(exc)[:500]}") from exc


def hub_weights(name: str, offline: bool) -> Path:
    """A timm model's weights file in the Hugging Face hub cache, downloaded there first unless
    ``offline``; offline and not cached: one error naming the file, where to put it and the hub id."""
    from huggingface_hub import hf_hub_download, try_to_load_from_cache
    from huggingface_hub.constants import HF_HUB_CACHE

    hub_id = pretrained_cfg(name).get("hf_hub_id")
    if not hub_id:
        raise KvasirError(f"{name} has no Hugging Face hub weights in timm; give a file in train.weights_files "
                          f"or set train.weights: null (random init)")
    hub_id, _, revision = hub_id.partition("@")
    for filename in HUB_FILES:
        cached = try_to_load_from_cache(hub_id, filename, revision=revision or None)
        if isinstance(cached, str):
            return Path(cached)
    if offline:
        raise KvasirError(
            f"offline: the weights of {name} ({HUB_FILES[0]} of the Hugging Face hub repository {hub_id}) are not "
            f"in the hub cache ({HF_HUB_CACHE}). On a machine with network, `hf download {hub_id} "
            f"{HUB_FILES[0]}` puts it there (copy the cache folder, or set HF_HOME); or save the file anywhere and "
            f"name it in train.weights_files: {{'{name}': <path>}}; or set train.weights: null (random init).")
    try:
        return Path(hf_hub_download(hub_id, HUB_FILES[0], revision=revision or None))
    except Exception as exc:  # noqa: BLE001 - network, missing file, gated repository: all say the same remedy
        raise KvasirError(f"could not download the weights of {name} from the Hugging Face hub ({hub_id}: "
                          f"{type(exc).__name__}: {exc}); download {HUB_FILES[0]} on a machine with network "
                          f"and name it in train.weights_files") from exc


def models_needing_weights(cfg: Config) -> list[str]:
    """The models a run loads pretrained weights for: each of ``train.models`` and the near-duplicate
    features detector's model, where the profile gives weights (``train.weights`` or a file)."""
    near = cfg.split.near_duplicates
    named = [*cfg.train.models, *([near.features_model] if "features" in near.detectors else [])]
    return [name for name in dict.fromkeys(named) if cfg.train.weights is not None or name in cfg.train.weights_files]


def check_weights_offline(cfg: Config) -> None:
    """Before anything runs (``make``'s preflight): under ``runtime.offline``, every weights file the
    run will load must be on this machine, or the run would stop at the first model that needs one
    (notebook 01's features detector, after the whole dataset was cached). Only presence is checked
    here; each file's hash is checked where it is loaded."""
    if not cfg.runtime.offline:
        return
    for name in models_needing_weights(cfg):
        given = cfg.train.weights_files.get(name)
        if given is not None:
            existing_file(name, given)  # its error names the file and the remedy
        elif is_timm(name):
            hub_weights(name, offline=True)
        elif not (path := weights_file(name, cfg.train.weights)).exists():
            raise KvasirError(f"offline: {_missing_file_remedy(path, weights_enum(name, cfg.train.weights).url)}")


def weights_origin(cfg: Config, name: str) -> dict | None:
    """Where ``name``'s pretrained weights came from, as ``weights.json`` records it: ``weights``
    (the setting), ``source`` (file, torch hub, Hugging Face hub), ``id`` (URL or hub id), ``file``
    and its ``sha256``. None for random init."""
    given = cfg.train.weights_files.get(name)
    if given is None and cfg.train.weights is None:
        return None
    if given is not None:
        path, source, hub = _resolve(given.file), "file (train.weights_files)", source_id(name)
    elif is_timm(name):
        path, source = hub_weights(name, offline=True), "Hugging Face hub cache"
        hub = pretrained_cfg(name)["hf_hub_id"]
    else:
        path, source, hub = weights_file(name, cfg.train.weights), "torch hub cache", \
            weights_enum(name, cfg.train.weights).url
    return {"weights": cfg.train.weights, "source": source, "id": hub, "file": path.name, "path": str(path),
            "sha256": sha256_file(path) if path.exists() else None}
