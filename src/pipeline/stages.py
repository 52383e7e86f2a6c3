"""The stage table: which architecture each stage trains and which stage (if any) teaches it.

One table instead of branches in the runner, so adding a stage (or asking what a stage is)
never means reading training code.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from src.config.schema import STAGE_NAMES, RunConfig
from src.models.factory import create_model, resolve_model_name
from src.utils.reproducibility import derive_seed

Role = Literal["teacher", "assistant", "student"]


@dataclass(frozen=True)
class StageSpec:
    """``role`` picks the architecture from ``cfg.models``; ``teacher_stage`` is None for labels only."""

    name: str
    role: Role
    teacher_stage: str | None
    description: str


STAGES: dict[str, StageSpec] = {
    "teacher": StageSpec("teacher", "teacher", None, "big model, labels only"),
    "assistant": StageSpec("assistant", "assistant", "teacher", "medium model, distilled from the teacher"),
    "student": StageSpec("student", "student", "assistant", "small model, distilled from the assistant"),
    "baseline": StageSpec("baseline", "student", None, "student architecture, labels only"),
    "direct": StageSpec("direct", "student", "teacher", "student architecture, distilled from the teacher"),
}
assert tuple(STAGES) == STAGE_NAMES, "the stage table must follow the schema's pipeline order"

KD_STAGES: tuple[str, ...] = tuple(name for name, spec in STAGES.items() if spec.teacher_stage)


def model_name(cfg: RunConfig, stage: str) -> str:
    """The timm architecture name ``stage`` trains under ``cfg``."""
    return str(getattr(cfg.models, STAGES[stage].role))


def build_model(cfg: RunConfig, stage: str, num_classes: int, *, initial: bool) -> nn.Module:
    """The architecture of ``stage`` under ``cfg`` (on the CPU).

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
            cfg.models.family,
            model_name(cfg, stage),
            num_classes,
            cfg.data.image_size,
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


def is_vit_base(name: str) -> bool:
    """ViT-Base always trains with gradient checkpointing (DESIGN.md decision)."""
    return resolve_model_name(name).startswith("vit_base")
