"""What one stage trains with: its architecture and its ``train`` settings with
``stage_overrides.<stage>`` applied (everything downstream sees one plain config)."""
from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from typing import Any

from src.config.schema import RunConfig
from src.config.stage_overrides import PREFIX, StageOverrides
from src.config.stages import STAGES
from src.errors import UserError


def model_name(cfg: RunConfig, stage: str) -> str:
    """The timm architecture name ``stage`` trains under ``cfg``."""
    return str(getattr(cfg.models, STAGES[stage].role))


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
