"""Checkpoints: one format, written atomically, and what a stage was trained with and on.

A result belongs to its inputs: every checkpoint records the settings that change the stage's
result and the fingerprints of what it was trained on (``split.csv``, the cache's content, and for
stage 2 the stage-1 checkpoint it started from). A stage whose settings or inputs changed is
refused with a message that names what changed; nothing is reused or overwritten silently.
"""

from __future__ import annotations

import contextlib
import io
from pathlib import Path

import torch
from torch import nn

from kvasir_utils.artefacts import STAGES, Checkpoint, final_stage
from kvasir_utils.config import Config, ConfigError
from kvasir_utils.data import prepare
from kvasir_utils.errors import KvasirError
from kvasir_utils.files import sha256_file, write_bytes_atomic
from kvasir_utils.profiles import with_protocol
from kvasir_utils.train import models, probe
from kvasir_utils.train.hardware import Runtime, prepare_model
from kvasir_utils.train.loop import SEED_SCHEME


def save_checkpoint(path: Path, record: Checkpoint) -> Path:
    """Write one checkpoint (``artefacts.Checkpoint``, the one format) atomically; serialised first,
    so a disk without room for it is named with the size it needs before anything is written."""
    buffer = io.BytesIO()
    torch.save(record.to_dict(), buffer)
    return write_bytes_atomic(path, buffer.getvalue())


def load_checkpoint(path: Path, profile: str) -> Checkpoint:
    """A checkpoint as its record; one of another format is refused with the remedy (``profile``
    names the run in it)."""
    if not path.exists():
        raise KvasirError(f"no checkpoint at {path}; run the stage that writes it first")
    return Checkpoint.from_dict(torch.load(path, map_location="cpu", weights_only=True), path, profile)


def stage_settings(config: dict, stage: str) -> dict:
    """The settings a stage's result depends on: the classes, the split, how the cache is made,
    the presets, and the training settings of this stage and the ones before it. Not which other
    models run (``train.models``), how many processes build the cache, paths or runtime."""
    later = STAGES[STAGES.index(stage) + 1:]
    train = {k: v for k, v in config["train"].items()
             if k != "models" and k not in later and not any(k.startswith(f"{s}_") for s in later)}
    if not any((config["train"][s] or {}).get("trainable") == "lora" for s in STAGES[:STAGES.index(stage) + 1]):
        train.pop("lora", None)  # the adapters' settings matter only from the stage that adds them
    return {"data.classes": config["data"]["classes"], "split": config["split"],
            "cache": {k: config["cache"][k] for k in ("short_side", "quality")},
            # the backend as resolved is part of the runtime the checkpoint records ("auto" differs by device)
            "transforms": {k: v for k, v in config["transforms"].items() if k != "backend"}, "train": train}


def _changed_keys(old, new, prefix="") -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        return [k for key in sorted(set(old) | set(new))
                for k in _changed_keys(old.get(key), new.get(key), f"{prefix}{key}.")]
    return [] if old == new else [prefix.rstrip(".")]


def _as_current_schema(saved: dict) -> dict:
    """A saved config with today's protocol filling what it lacks, so a setting added since is not a change."""
    with contextlib.suppress(ConfigError):
        return with_protocol(saved).to_dict()
    return saved


def stage_inputs(cfg: Config, model_name: str, stage: str) -> dict[str, str]:
    """Fingerprints of what ``stage`` trains on: the split and the cache, and for a later stage
    the checkpoint of the stage before it."""
    inputs = prepare.input_fingerprints(cfg)
    if stage != STAGES[0]:
        previous = STAGES[STAGES.index(stage) - 1]
        path = cfg.run.checkpoint(model_name, previous)
        if not path.exists():
            raise KvasirError(f"{previous} of {model_name} has no checkpoint ({path}); run it first")
        inputs[f"{previous} checkpoint"] = sha256_file(path)
    return inputs


def check_checkpoint(checkpoint: Checkpoint, cfg: Config, inputs: dict[str, str], path: Path) -> None:
    """Refuse a checkpoint made with other settings or from other inputs (nothing is overwritten)."""
    stage = checkpoint.stage
    changed = _changed_keys(stage_settings(_as_current_schema(checkpoint.config), stage),
                            stage_settings(cfg.to_dict(), stage))
    changed += [f"{name} (SHA-256 {checkpoint.inputs.get(name, 'none')[:12]} then, {digest[:12]} now)"
                for name, digest in inputs.items() if checkpoint.inputs.get(name) != digest]
    if checkpoint.seed_scheme != SEED_SCHEME:
        changed.append("the seeding scheme (an earlier version of the study)")
    if changed:
        raise KvasirError(
            f"the checkpoint {path} was made from other settings or data: {'; '.join(changed)} changed. "
            f"Nothing was overwritten. Delete {path.parent} to retrain it (`make clean PROFILE={cfg.profile_argument}` "
            f"deletes every run of the profile), or keep it and give this run its own folder: "
            f"SET=\"... paths.runs=<another folder>\"."
        )


def finished_checkpoint(cfg: Config, model_name: str, stage: str) -> Checkpoint:
    """A finished stage's checkpoint, checked against today's settings and inputs."""
    path = cfg.run.checkpoint(model_name, stage)
    checkpoint = load_checkpoint(path, cfg.profile_argument)
    if checkpoint.epoch < cfg.stage_config(stage).epochs:
        raise KvasirError(f"{stage} of {model_name} is not finished ({path}); run it first")
    check_checkpoint(checkpoint, cfg, stage_inputs(cfg, model_name, stage), path)
    return checkpoint


def final_checkpoint(cfg: Config, model_name: str) -> Checkpoint:
    """The checkpoint of the model as it ended training, checked against today's split and cache."""
    return finished_checkpoint(cfg, model_name, final_stage(cfg.train.stage2.epochs))


def load_trained_model(cfg: Config, model_name: str) -> nn.Module:
    """The model as it ended training, after checking it was trained on today's split and cache."""
    checkpoint = final_checkpoint(cfg, model_name)
    return models.restore(cfg, model_name, checkpoint.stage, checkpoint.model)


def load_trained(cfg: Config, model_name: str, runtime: Runtime) -> tuple[nn.Module, Runtime]:
    """``load_trained_model`` ready to predict on ``runtime`` (``restore_trained``): what evaluation,
    masking and cross-scoring predict with."""
    return restore_trained(cfg, model_name, final_checkpoint(cfg, model_name), runtime)


def restore_trained(cfg: Config, model_name: str, checkpoint: Checkpoint,
                    runtime: Runtime) -> tuple[nn.Module, Runtime]:
    """The checkpoint's model on ``runtime``, with what the runtime left pending (precision, memory
    format) taken as the model's stages chose them (``probe.adopt`` of the checkpoint's record), and
    the runtime it runs on."""
    runtime = probe.adopt(runtime, checkpoint.runtime)
    return prepare_model(models.restore(cfg, model_name, checkpoint.stage, checkpoint.model), runtime), runtime
