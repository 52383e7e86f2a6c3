"""The distillation losses the product offers, one registration each: the only list of them.

A registration (``LossSpec``) holds everything the rest of the product needs for a loss:

- ``settings``: a ``LossSettings`` dataclass, the config section ``distillation.<name>.*``, whose
  ``check`` states its rules (the loader reports a broken one under its dotted key);
- ``compute``: the loss at one step, from the logits and the settings every loss shares
  (``LossInputs``), its own settings and the current values of its schedule; the formulas are in
  src/distillation/losses.py;
- ``schedule``: the weights that move over a stage, per epoch (kd's alpha, dkd's warm-up).

``distillation.loss`` is checked against ``LOSSES``, the config schema gets one section per
registered loss (keys, defaults, unknown-key hints, config.yaml), and ``DistillationObjective``
trains with whatever the registration says: a new loss is one more ``LOSSES.register`` call.
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import torch

from src.distillation.alpha_schedule import schedule_kd_alpha
from src.distillation.losses import Parts, dist_loss, dkd_loss, kd_loss
from src.utils.registry import Registry
from src.utils.sections import Section


class InvalidSetting(ValueError):
    """A loss setting outside its rule; ``key`` is relative to the loss's section."""

    def __init__(self, key: str, rule: str, value: Any) -> None:
        super().__init__(f"{key}: must be {rule}, got {value}")
        self.key, self.rule, self.value = key, rule, value


def require(ok: bool, key: str, rule: str, value: Any) -> None:
    if not ok:
        raise InvalidSetting(key, rule, value)


def require_weights(settings: object, *keys: str) -> None:
    """Each of ``keys`` is 0 or a positive finite number."""
    for key in keys:
        value = getattr(settings, key)
        require(math.isfinite(value) and value >= 0, key, "0 or a positive finite number", value)


def require_fractions(settings: object, *keys: str) -> None:
    """Each of ``keys`` lies in [0, 1]."""
    for key in keys:
        value = getattr(settings, key)
        require(0.0 <= value <= 1.0, key, "between 0 and 1", value)


@dataclass
class LossSettings:
    """Base of a loss's settings: dataclass fields with defaults; ``check`` raises InvalidSetting."""

    def check(self) -> None:
        """No rules beyond the field types."""


@dataclass(frozen=True)
class LossInputs:
    """What every loss gets at a step besides its own settings: the two logit batches, the
    labels and the settings all losses share (``distillation.temperature``,
    ``distillation.logit_standardization``, ``train.label_smoothing``)."""

    student: torch.Tensor
    teacher: torch.Tensor
    labels: torch.Tensor
    temperature: float
    standardize: bool
    label_smoothing: float


S = TypeVar("S", bound=LossSettings)


def no_schedule(settings: LossSettings, epoch: int, epochs: int) -> dict[str, float]:
    """A loss whose weights stay the same over the stage."""
    return {}


@dataclass(frozen=True)
class LossSpec(Generic[S]):
    """One loss (module doc). ``schedule(settings, epoch, epochs)`` runs before every epoch
    (1-based) and its values reach ``compute(inputs, settings, scheduled)``, which returns the
    loss and its parts for metrics.jsonl: detached 0-dim float32 tensors on the logits' device,
    ``ce`` (plain cross-entropy) and ``kd`` (the teacher term before any schedule weight) among
    them. ``inline``: the settings' keys sit directly under ``distillation.`` instead of
    ``distillation.<name>.``."""

    settings: type[S]
    compute: Callable[[LossInputs, S, Mapping[str, float]], tuple[torch.Tensor, Parts]]
    schedule: Callable[[S, int, int], Mapping[str, float]] = no_schedule
    inline: bool = False

    @property
    def section(self) -> Section:
        return Section(self.settings, self.inline)


LOSSES: Registry[LossSpec[Any]] = Registry("distillation loss")


def loss_sections() -> dict[str, Section]:
    """The config section of every registered loss, in registration order (the schema's)."""
    return {name: spec.section for name, spec in LOSSES.items()}


# --------------------------------------------------------------------------- kd (Hinton et al. 2015)


@dataclass
class KDSettings(LossSettings):
    """The weight on the distillation term, linear from ``alpha_start`` (epoch 1) to ``alpha_end``
    (last epoch): ``schedule_kd_alpha``."""

    alpha_start: float = 0.9
    alpha_end: float = 0.5

    def check(self) -> None:
        require_fractions(self, "alpha_start", "alpha_end")


def _kd(x: LossInputs, s: KDSettings, scheduled: Mapping[str, float]) -> tuple[torch.Tensor, Parts]:
    return kd_loss(x.student, x.teacher, x.labels, temperature=x.temperature, alpha=scheduled["alpha"],
                   label_smoothing=x.label_smoothing, standardize=x.standardize)


def _kd_alpha(s: KDSettings, epoch: int, epochs: int) -> dict[str, float]:
    return {"alpha": schedule_kd_alpha(epoch, epochs, s.alpha_start, s.alpha_end)}


# kd's keys are distillation.alpha_start/alpha_end, as every shipped config and saved run spells them
LOSSES.register("kd", LossSpec(KDSettings, _kd, _kd_alpha, inline=True))


# --------------------------------------------------------------------------- dkd (Zhao et al. 2022)

# mdistiller's DKD warms its KD term up over 20 of 240 epochs; we keep that share of a stage.
DKD_WARMUP_FRACTION = 20 / 240


@dataclass
class DKDSettings(LossSettings):
    """Decoupled KD: target (TCKD) and non-target (NCKD) parts, mdistiller's CIFAR defaults.
    ``warmup_fraction`` is the share of the stage's epochs over which the KD term ramps up
    linearly (0: no warm-up)."""

    alpha: float = 1.0
    beta: float = 8.0
    ce_weight: float = 1.0
    warmup_fraction: float = DKD_WARMUP_FRACTION

    def check(self) -> None:
        require_weights(self, "alpha", "beta", "ce_weight")
        require_fractions(self, "warmup_fraction")


def dkd_warmup(epoch: int, total_epochs: int, fraction: float) -> float:
    """mdistiller's ``min(epoch / warmup, 1)`` with ``warmup = fraction * total_epochs``:
    the reference's 20 of 240 epochs become the same share of this stage (per epoch, 1-based)."""
    span = fraction * total_epochs
    return 1.0 if span <= 0 else min(epoch / span, 1.0)


def _dkd(x: LossInputs, s: DKDSettings, scheduled: Mapping[str, float]) -> tuple[torch.Tensor, Parts]:
    return dkd_loss(x.student, x.teacher, x.labels, temperature=x.temperature, alpha=s.alpha, beta=s.beta,
                    ce_weight=s.ce_weight, warmup=scheduled["warmup"], label_smoothing=x.label_smoothing,
                    standardize=x.standardize)


def _dkd_warmup(s: DKDSettings, epoch: int, epochs: int) -> dict[str, float]:
    return {"warmup": dkd_warmup(epoch, epochs, s.warmup_fraction)}


LOSSES.register("dkd", LossSpec(DKDSettings, _dkd, _dkd_warmup))


# --------------------------------------------------------------------------- dist (Huang et al. 2022)


@dataclass
class DISTSettings(LossSettings):
    """DIST: inter-class (per sample) and intra-class (per class, over the batch) Pearson
    relations of the softened predictions; the reference's beta = gamma = 1. Its tau is
    ``distillation.temperature``."""

    beta: float = 1.0
    gamma: float = 1.0
    ce_weight: float = 1.0

    def check(self) -> None:
        require_weights(self, "beta", "gamma", "ce_weight")


def _dist(x: LossInputs, s: DISTSettings, scheduled: Mapping[str, float]) -> tuple[torch.Tensor, Parts]:
    return dist_loss(x.student, x.teacher, x.labels, tau=x.temperature, beta=s.beta, gamma=s.gamma,
                     ce_weight=s.ce_weight, label_smoothing=x.label_smoothing, standardize=x.standardize)


LOSSES.register("dist", LossSpec(DISTSettings, _dist))
