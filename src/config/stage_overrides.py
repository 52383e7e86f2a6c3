"""Per-stage training settings: ``stage_overrides.<stage>.<train key>`` sets a key for one stage.

The typical use is a pretrained teacher fine-tuned briefly at a low learning rate while the
other stages train from scratch with ``train.*``. A stage trains with ``stage_config``,
its effective settings: ``train`` with its overrides applied and no overrides left, so
everything downstream (learning rate, schedule, checkpoint fingerprints) sees one plain
config (src/config/stage_settings.py). On resume, an override is judged by its train key's rule
for its own stage and the stages distilled from it only (src/config/change_rules.py).
"""
from __future__ import annotations

import dataclasses
import typing
from typing import Any, Optional

from src.config.stages import STAGE_NAMES
from src.engine.settings import TrainConfig

PREFIX = "stage_overrides."
# How a run is operated, not what a stage learns: these stay run-wide.
RUN_WIDE = frozenset({"log_interval", "checkpoint_every_steps", "checkpoint_every_minutes",
                      "nonfinite_policy", "max_oom_retries", "num_workers", "tensorboard", "progress"})

_ENGINE_TYPES = typing.get_type_hints(TrainConfig)
TrainOverrides = dataclasses.make_dataclass(
    "TrainOverrides",
    [(f.name, Optional[_ENGINE_TYPES[f.name]], dataclasses.field(default=None))  # noqa: UP045 - a runtime type
     for f in dataclasses.fields(TrainConfig) if f.name not in RUN_WIDE],
)
TrainOverrides.__doc__ = "One stage's ``train.*`` keys; null (the default) keeps the run-wide value."


StageOverrides = dataclasses.make_dataclass(
    "StageOverrides",
    [(stage, TrainOverrides, dataclasses.field(default_factory=TrainOverrides)) for stage in STAGE_NAMES],
)
StageOverrides.__doc__ = "``stage_overrides.<stage>``: one ``TrainOverrides`` per stage, in pipeline order."


def drop_unset(raw: dict[str, Any]) -> dict[str, Any]:
    """A config's plain-dict form without the unset (null) overrides, so config.yaml lists only
    what a user set."""
    sections = raw.get("stage_overrides")
    if isinstance(sections, dict):
        raw["stage_overrides"] = {stage: {k: v for k, v in keys.items() if v is not None}
                                  for stage, keys in sections.items()
                                  if any(v is not None for v in keys.values())}
    return raw
