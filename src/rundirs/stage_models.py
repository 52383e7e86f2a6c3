"""A stage's model: built as it starts training, or rebuilt from the weights a finished stage saved.

Everything that reads a stage's model back (the next stage's teacher, the cost measurement,
export, evaluate) comes through here, so a weights file is always checked against the hash its
result.json recorded before anything distils from it or measures it.
"""
from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file
from torch import nn

from src.config.schema import RunConfig
from src.config.stage_settings import model_name
from src.config.stages import STAGES
from src.errors import UserError, error_detail
from src.models.factory import create_model
from src.rundirs.inputs import stage_image_size
from src.rundirs.rundir import RunDirectory
from src.utils.reproducibility import derive_seed
from src.utils.weights import file_sha256, tensors_sha256


def build_model(cfg: RunConfig, stage: str, num_classes: int, *, initial: bool) -> nn.Module:
    """The architecture of ``stage`` under ``cfg`` (on the CPU), for the stage's own image size.

    ``initial=True`` builds the model a stage starts training from: only the teacher stage may
    start from pretrained weights, and the random initialisation is drawn from
    ``stage_seed(seed, "init", stage)`` without touching the global RNG, so it never depends on
    what ran before, and the student-architecture stages start from identical weights.
    ``initial=False`` builds an empty shell to load saved weights into (a KD stage's teacher,
    evaluation), so nothing is downloaded or read for it.
    """
    pretrained = initial and stage == "teacher"
    with torch.random.fork_rng(devices=[], enabled=initial):
        if initial:
            torch.manual_seed(stage_seed(cfg.runtime.seed, "init", stage))
        return create_model(
            model_name(cfg, stage),
            num_classes,
            stage_image_size(cfg, stage),
            small_input=cfg.models.small_input,
            patch_size=cfg.models.patch_size,
            pretrained=pretrained and cfg.models.pretrained,
            weights_path=cfg.models.teacher_weights if pretrained else None,
            drop_path_rate=cfg.models.drop_path_rate,
        )


def stage_seed(seed: int, purpose: Literal["init", "train"], stage: str) -> int:
    """The seed of a stage's own random draws: its initial weights (``init``) and what training
    draws from the global RNG (``train``: dropout, drop-path). Keyed by the stage's role, so
    student, direct and baseline share them: their comparison is paired. Data order and
    augmentation are already functions of (seed, epoch, index), the same for every stage."""
    return derive_seed(seed, purpose, STAGES[stage].role)


def load_weights(model: nn.Module, path: Path, tensors: dict[str, torch.Tensor] | None = None) -> None:
    """Load a model.safetensors (or its ``tensors``, already read) into ``model``; a file of another
    architecture is a user error."""
    try:
        model.load_state_dict(load_file(str(path)) if tensors is None else tensors)
    except (RuntimeError, OSError, SafetensorError) as exc:  # SafetensorError: not a safetensors file
        raise UserError(f"weights {path} do not fit this model: {error_detail(exc)}") from None


def verified_weights(run_dir: RunDirectory, stage: str,
                     result: Mapping[str, Any]) -> tuple[Path, str, dict[str, torch.Tensor]]:
    """A finished stage's model.safetensors, its sha256 and its tensors (read once), checked against
    its result.json."""
    path = run_dir.weights_path(stage)
    if not path.is_file():
        raise UserError(f"{stage} weights {path} are missing; delete {run_dir.stage_dir(stage)} "
                        "and re-run the training command to train that stage again")
    recorded = result.get("weights_sha256")
    try:
        tensors: dict[str, torch.Tensor] | None = load_file(str(path))
    except (OSError, SafetensorError):  # not a safetensors file (any more): it cannot match
        tensors = None
    # the tensor identity; runs made before it recorded the file's bytes, which still match
    if tensors is None or (tensors_sha256(tensors) != recorded and file_sha256(path) != recorded):
        raise UserError(f"{stage} weights {path} do not match the hash in its result.json (changed after "
                        f"training?); delete {run_dir.stage_dir(stage)} and re-run the training command to "
                        "train that stage again")
    return path, str(recorded), tensors


def load_stage_model(cfg: RunConfig, run_dir: RunDirectory, stage: str, num_classes: int,
                     result: Mapping[str, Any]) -> tuple[nn.Module, Path, str]:
    """A finished stage's final model on the CPU, with its weights file and their sha256: the weights
    are verified against the hash its result.json recorded, so nothing measures or distils a file
    that changed after training."""
    path, sha, tensors = verified_weights(run_dir, stage, result)
    model = build_model(cfg, stage, num_classes, initial=False)
    load_weights(model, path, tensors)
    return model, path, sha
