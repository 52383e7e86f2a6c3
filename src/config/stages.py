"""The stage table: which role's architecture each stage trains and which stage (if any) teaches it.

One table instead of branches in the runner, so adding a stage (or asking what a stage is)
never means reading training code. Field order is pipeline order: a teacher always comes
before the stages it teaches.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

Role = Literal["teacher", "assistant", "student"]
ROLES: tuple[Role, ...] = get_args(Role)


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
STAGE_NAMES: tuple[str, ...] = tuple(STAGES)
KD_STAGES: tuple[str, ...] = tuple(name for name, spec in STAGES.items() if spec.teacher_stage)
