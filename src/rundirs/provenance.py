"""What a finished stage was made from, recorded in its result.json and checked before it is reused.

A stage's folder existing says nothing about whether its weights still belong to this run: the
data may have been split anew, or the stage that taught it retrained (more epochs, a deleted
folder, a CUDA run that is not bit-reproducible). So every result.json records ``provenance``:

- ``split_sha256``: the hash of split.json's contents (for an image folder, the path of every
  file of every part; src/data/split.py);
- ``teacher_sha256``: the ``weights_sha256`` of the stage that taught it (absent for the teacher
  and the baseline, which learn from labels only);
- ``config``: the settings that shaped its weights (the stage's identity keys, its training keys
  after ``stage_overrides``, and the effective batch) and ``budget`` (epochs, patience,
  min_delta): for people, and for ``--teacher-from``, which must not pair a student with a
  baseline trained for another budget.

The config itself is compared with config.yaml by the resume rules (src/config/change_rules.py);
this module adds what those cannot see: the split and the teacher's weights, checked in pipeline
order so that a retrained teacher makes exactly the stages it taught stale.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from src.config.change_rules import stage_identity
from src.config.loader import flatten
from src.config.schema import RunConfig
from src.config.stage_settings import stage_config
from src.config.stages import STAGES
from src.engine.resume_rules import BATCH_SPLIT, ENGINE_RULES, FREE, effective_batch

BUDGET_KEYS = ("epochs", "patience", "min_delta")


def stage_budget(cfg: RunConfig, stage: str) -> dict[str, Any]:
    """How long ``stage`` may train (after its ``stage_overrides``)."""
    train = stage_config(cfg, stage).train
    return {key: getattr(train, key) for key in BUDGET_KEYS}


def stage_settings(cfg: RunConfig, stage: str) -> dict[str, Any]:
    """The settings that shape ``stage``'s weights: identity keys, training keys, effective batch."""
    flat = flatten(stage_config(cfg, stage))
    train = {key: value for key, value in flat.items() if key.startswith("train.")
             and ENGINE_RULES.get(key.removeprefix("train.")) not in (FREE, BATCH_SPLIT)}
    engine = {key.removeprefix("train."): value for key, value in flat.items() if key.startswith("train.")}
    return {**stage_identity(flatten(cfg), stage), **train, "effective_batch": effective_batch(engine)}


def stage_provenance(cfg: RunConfig, stage: str, split_sha256: str,
                     teacher_sha256: str | None) -> dict[str, Any]:
    """The ``provenance`` entry of ``stage``'s result.json."""
    record: dict[str, Any] = {"split_sha256": split_sha256}
    if teacher_sha256 is not None:
        record["teacher_sha256"] = teacher_sha256
    record["config"] = stage_settings(cfg, stage)
    record["budget"] = stage_budget(cfg, stage)
    return record


@dataclass(frozen=True)
class Staleness:
    """Why a finished stage no longer fits this run (``reason`` completes "stage X is stale: ...")."""

    stage: str
    reason: str


def stale_reason(stage: str, result: dict[str, Any], split_sha256: str,
                 teacher_result: dict[str, Any] | None) -> Staleness | None:
    """Why the finished ``stage`` (its ``result``) cannot be reused on this split after this
    teacher (``teacher_result``: its teacher stage's result.json now); None when it can, or when
    it records no provenance (made by an earlier version: ``has_provenance``)."""
    recorded = result.get("provenance") if isinstance(result, dict) else None
    if not isinstance(recorded, dict):
        return None
    if recorded.get("split_sha256") != split_sha256:
        return Staleness(stage, "trained on another split")
    teacher = STAGES[stage].teacher_stage
    if teacher is not None and isinstance(teacher_result, dict):
        if recorded.get("teacher_sha256") != teacher_result.get("weights_sha256"):
            return Staleness(stage, f"distilled from other {teacher} weights than the {teacher} "
                             "finished now (it was retrained)")
    return None


def has_provenance(result: Any) -> bool:
    return isinstance(result, dict) and isinstance(result.get("provenance"), dict)
