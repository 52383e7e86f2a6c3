"""The distillation settings (``distillation.*`` in a run config) and their one validity check.

The schema composes ``DistillationConfig`` into ``RunConfig``; the config loader and the
``DistillationObjective`` both call :func:`check_distillation`, so a rule (e.g. "the temperature
is a positive finite number") is written once and every entry point refuses the same values.
Each loss follows its reference code; ``docs/ARCHITECTURE.md`` ("Distillation losses") states
the formulas and where the defaults come from.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal

from src.errors import UserError

LossName = Literal["kd", "dkd", "dist"]

# mdistiller's DKD warms its KD term up over 20 of 240 epochs; we keep that share of a stage.
DKD_WARMUP_FRACTION = 20 / 240


@dataclass
class DKDConfig:
    """Decoupled KD (Zhao et al. 2022): target (TCKD) and non-target (NCKD) parts, mdistiller's
    CIFAR defaults. ``warmup_fraction`` is the share of the stage's epochs over which the KD
    term ramps up linearly (0: no warm-up)."""

    alpha: float = 1.0
    beta: float = 8.0
    ce_weight: float = 1.0
    warmup_fraction: float = DKD_WARMUP_FRACTION


@dataclass
class DISTConfig:
    """DIST (Huang et al. 2022): inter-class (per sample) and intra-class (per class, over the
    batch) Pearson relations of the softened predictions; the reference's beta = gamma = 1."""

    beta: float = 1.0
    gamma: float = 1.0
    ce_weight: float = 1.0


@dataclass
class DistillationConfig:
    """Which loss distils a KD stage. ``temperature`` is T of kd/dkd and tau of dist; with
    ``logit_standardization`` both logit vectors are z-scored per sample first, so T is then a
    base temperature relative to each sample's own logit spread. ``alpha_start``/``alpha_end``
    are the kd loss's weight on its distillation term (``schedule_kd_alpha``)."""

    loss: LossName = "kd"
    logit_standardization: bool = False
    temperature: float = 4.0
    alpha_start: float = 0.9
    alpha_end: float = 0.5
    dkd: DKDConfig = field(default_factory=DKDConfig)
    dist: DISTConfig = field(default_factory=DISTConfig)


def _require(ok: bool, key: str, rule: str, value: float) -> None:
    if not ok:
        raise UserError(f"config key 'distillation.{key}': must be {rule}, got {value}")


def check_distillation(cfg: DistillationConfig) -> None:
    """Refuse settings no loss can use, naming the key (UserError, exit code 2)."""
    _require(math.isfinite(cfg.temperature) and cfg.temperature > 0, "temperature",
             "a positive finite number", cfg.temperature)
    for key in ("alpha_start", "alpha_end"):
        value = getattr(cfg, key)
        _require(0.0 <= value <= 1.0, key, "between 0 and 1", value)
    weights = {"dkd.alpha": cfg.dkd.alpha, "dkd.beta": cfg.dkd.beta, "dkd.ce_weight": cfg.dkd.ce_weight,
               "dist.beta": cfg.dist.beta, "dist.gamma": cfg.dist.gamma, "dist.ce_weight": cfg.dist.ce_weight}
    for key, value in weights.items():
        _require(math.isfinite(value) and value >= 0, key, "0 or a positive finite number", value)
    _require(0.0 <= cfg.dkd.warmup_fraction <= 1.0, "dkd.warmup_fraction", "between 0 and 1",
             cfg.dkd.warmup_fraction)
