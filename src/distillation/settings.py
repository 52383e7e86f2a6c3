"""The distillation settings (``distillation.*`` in a run config) and their one validity check.

The schema composes ``DistillationConfig`` into ``RunConfig``: the settings every loss shares,
plus one section per registered loss (src/distillation/registry.py) with its own keys and rules.
The config loader and the ``DistillationObjective`` both call :func:`check_distillation`, so a
rule (e.g. "the temperature is a positive finite number") is written once and every entry point
refuses the same values. Each loss follows its reference code; ``docs/ARCHITECTURE.md``
("Distillation losses") states the formulas and where the defaults come from.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

from src.distillation.registry import LOSSES, InvalidSetting, LossSettings, loss_sections
from src.errors import UserError
from src.utils.sections import complete_sections, sections_field


@dataclass
class DistillationConfig:
    """Which loss distils a KD stage. ``temperature`` is T of kd/dkd and tau of dist; with
    ``logit_standardization`` both logit vectors are z-scored per sample first, so T is then a
    base temperature relative to each sample's own logit spread. ``sections`` holds each
    registered loss's settings by name (keys ``distillation.<name>.*``; kd's ``alpha_start`` and
    ``alpha_end`` sit directly under ``distillation.``); a Python caller may give only some."""

    loss: str = "kd"  # a registered loss (src/distillation/registry.py)
    logit_standardization: bool = False
    temperature: float = 4.0
    sections: dict[str, Any] = sections_field(loss_sections)

    def __post_init__(self) -> None:
        self.sections = complete_sections(loss_sections, self.sections)

    def settings(self) -> LossSettings:
        """The chosen loss's settings."""
        return self.sections[self.loss]


def check_distillation(cfg: DistillationConfig) -> None:
    """Refuse settings no loss can use, naming the key (UserError, exit code 2): the shared ones,
    the loss's name, and every registered loss's section by its own rules."""
    if not (math.isfinite(cfg.temperature) and cfg.temperature > 0):
        raise UserError(f"config key 'distillation.temperature': must be a positive finite number, "
                        f"got {cfg.temperature}")
    LOSSES.for_key("distillation.loss", cfg.loss)
    for name, settings in cfg.sections.items():
        try:
            settings.check()
        except InvalidSetting as bad:
            section = "" if LOSSES[name].inline else f"{name}."
            raise UserError(f"config key 'distillation.{section}{bad.key}': must be {bad.rule}, "
                            f"got {bad.value}") from None
