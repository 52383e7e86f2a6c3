"""Per-stage training settings: ``stage_overrides.<stage>.<train key>`` sets a key for one stage.

The typical use is a pretrained teacher fine-tuned briefly at a low learning rate while the
other stages train from scratch with ``train.*``. A stage trains with :func:`stage_config`,
its effective settings: ``train`` with its overrides applied and no overrides left, so
everything downstream (learning rate, schedule, checkpoint fingerprints) sees one plain
config. On resume, an override is judged by its train key's rule for its own stage and the
stages distilled from it only (src/pipeline/resume_rules.py).
"""
from __future__ import annotations

import copy
import dataclasses
import typing
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Optional

from src.engine.config import EngineConfig
from src.errors import UserError

if TYPE_CHECKING:
    from src.config.schema import RunConfig

PREFIX = "stage_overrides."
# How a run is operated, not what a stage learns: these stay run-wide.
RUN_WIDE = frozenset({"log_interval", "checkpoint_every_steps", "checkpoint_every_minutes",
                      "nonfinite_policy", "max_oom_retries", "num_workers", "tensorboard", "progress"})

_ENGINE_TYPES = typing.get_type_hints(EngineConfig)
TrainOverrides = dataclasses.make_dataclass(
    "TrainOverrides",
    [(f.name, Optional[_ENGINE_TYPES[f.name]], dataclasses.field(default=None))  # noqa: UP045 - a runtime type
     for f in dataclasses.fields(EngineConfig) if f.name not in RUN_WIDE],
)
TrainOverrides.__doc__ = "One stage's ``train.*`` keys; null (the default) keeps the run-wide value."


@dataclasses.dataclass
class StageOverrides:
    """``stage_overrides.<stage>``: one ``TrainOverrides`` per stage (field order = pipeline order)."""

    teacher: TrainOverrides = dataclasses.field(default_factory=TrainOverrides)  # type: ignore[valid-type]
    assistant: TrainOverrides = dataclasses.field(default_factory=TrainOverrides)  # type: ignore[valid-type]
    student: TrainOverrides = dataclasses.field(default_factory=TrainOverrides)  # type: ignore[valid-type]
    baseline: TrainOverrides = dataclasses.field(default_factory=TrainOverrides)  # type: ignore[valid-type]
    direct: TrainOverrides = dataclasses.field(default_factory=TrainOverrides)  # type: ignore[valid-type]


def overrides_of(cfg: RunConfig, stage: str) -> dict[str, Any]:
    """The train keys ``stage`` sets for itself (field name -> value)."""
    return {k: v for k, v in dataclasses.asdict(getattr(cfg.stage_overrides, stage)).items() if v is not None}


def stage_config(cfg: RunConfig, stage: str) -> RunConfig:
    """The settings ``stage`` trains with: ``train`` with its overrides applied, no overrides left."""
    effective = copy.deepcopy(cfg)
    effective.train = dataclasses.replace(effective.train, **overrides_of(cfg, stage))
    effective.stage_overrides = StageOverrides()
    return effective


def check_stage_overrides(cfg: RunConfig, validate: Callable[[RunConfig], None]) -> None:
    """Run ``validate`` (the loader's rules) on each overridden stage's effective settings; a
    mistake is reported under the stage's own keys, whose advice then fixes that stage."""
    for stage in (f.name for f in dataclasses.fields(StageOverrides)):
        if not overrides_of(cfg, stage):
            continue
        try:
            validate(stage_config(cfg, stage))
        except UserError as exc:
            raise UserError(str(exc).replace("train.", f"{PREFIX}{stage}.")) from None


def drop_unset(raw: dict[str, Any]) -> dict[str, Any]:
    """A config's plain-dict form without the unset (null) overrides, so config.yaml lists only
    what a user set."""
    sections = raw.get("stage_overrides")
    if isinstance(sections, dict):
        raw["stage_overrides"] = {stage: {k: v for k, v in keys.items() if v is not None}
                                  for stage, keys in sections.items()
                                  if any(v is not None for v in keys.values())}
    return raw
