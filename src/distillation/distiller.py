"""The distillation objective: a frozen teacher's soft targets plus the labels.

The engine sees only an ``Objective``; the teacher lives here, outside the student, so it is
never in the optimizer, the student's checkpoint or its ``model.train()`` calls.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from src.distillation.alpha_schedule import schedule_kd_alpha
from src.distillation.frozen_teacher import freeze_teacher
from src.distillation.losses import Parts, dist_loss, dkd_loss, kd_loss
from src.distillation.settings import DistillationConfig, check_distillation
from src.engine.objective import Objective, StepOutput


def dkd_warmup(epoch: int, total_epochs: int, fraction: float) -> float:
    """mdistiller's ``min(epoch / warmup, 1)`` with ``warmup = fraction * total_epochs``:
    the reference's 20 of 240 epochs become the same share of this stage (per epoch, 1-based)."""
    span = fraction * total_epochs
    return 1.0 if span <= 0 else min(epoch / span, 1.0)


class DistillationObjective(Objective):
    """Distillation from a frozen ``teacher`` with the loss ``config.loss`` names (kd, dkd or
    dist), per-epoch schedules (kd's alpha, dkd's warm-up) and the run's label smoothing."""

    def __init__(
        self,
        teacher: nn.Module,
        config: DistillationConfig | None = None,
        *,
        label_smoothing: float = 0.0,
        teacher_fingerprint: dict[str, Any] | None = None,
        teacher_input: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> None:
        self.config = copy.deepcopy(config) if config is not None else DistillationConfig()
        check_distillation(self.config)
        freeze_teacher(teacher, verbose=False)
        self.teacher = teacher
        self.label_smoothing = float(label_smoothing)
        self.teacher_fingerprint = dict(teacher_fingerprint or {})
        # the student's batch as the teacher's input (its size and normalisation: ViewChange)
        self.teacher_input = teacher_input
        self.on_epoch_start(1, 1)
        self._teacher_channels_last = False

    def on_epoch_start(self, epoch: int, total_epochs: int) -> None:
        cfg = self.config
        self.alpha = schedule_kd_alpha(epoch, total_epochs, cfg.alpha_start, cfg.alpha_end)
        self.warmup = dkd_warmup(epoch, total_epochs, cfg.dkd.warmup_fraction)

    def to(self, device: torch.device) -> DistillationObjective:
        self.teacher.to(device)
        return self

    def fingerprint(self) -> dict[str, Any]:
        return {
            "objective": type(self).__name__,
            "distillation": dataclasses.asdict(self.config),
            "label_smoothing": self.label_smoothing,
            "teacher": self.teacher_fingerprint,
        }

    def loss(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor,
             labels: torch.Tensor) -> tuple[torch.Tensor, Parts]:
        """The configured loss at the current epoch's schedule."""
        cfg = self.config
        common = {"label_smoothing": self.label_smoothing, "standardize": cfg.logit_standardization}
        if cfg.loss == "dkd":
            return dkd_loss(student_logits, teacher_logits, labels, temperature=cfg.temperature,
                            alpha=cfg.dkd.alpha, beta=cfg.dkd.beta, ce_weight=cfg.dkd.ce_weight,
                            warmup=self.warmup, **common)
        if cfg.loss == "dist":
            return dist_loss(student_logits, teacher_logits, labels, tau=cfg.temperature,
                             beta=cfg.dist.beta, gamma=cfg.dist.gamma, ce_weight=cfg.dist.ce_weight, **common)
        return kd_loss(student_logits, teacher_logits, labels, temperature=cfg.temperature,
                       alpha=self.alpha, **common)

    def training_step(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> StepOutput:
        # Someone (a generic model.train() over a container, a user callback) may have flipped
        # the teacher back: BatchNorm would then update its statistics from student batches.
        if self.teacher.training:
            self.teacher.eval()
        # The engine makes a CNN student's inputs channels-last on CUDA; a teacher left in the
        # default layout would have cuDNN re-lay out its conv weights on every forward.
        if not self._teacher_channels_last and _is_channels_last(images):
            self.teacher.to(memory_format=torch.channels_last)
            self._teacher_channels_last = True
        # Inference-mode outputs may not be saved for backward, but kd_loss only reads them
        # through new tensors (a float32 copy, teacher / T) made outside inference mode, so
        # autograd never saves an inference tensor itself (tests/test_distillation_objective.py).
        with torch.inference_mode():
            teacher_images = images if self.teacher_input is None else self.teacher_input(images)
            teacher_logits = self.teacher(teacher_images)
        student_logits = model(images)
        loss, parts = self.loss(student_logits, teacher_logits, labels)
        return StepOutput(logits=student_logits, loss=loss, parts=parts)


def _is_channels_last(images: torch.Tensor) -> bool:
    """Strictly channels-last (a 1x1 or single-channel batch is contiguous both ways)."""
    return images.dim() == 4 and not images.is_contiguous() and images.is_contiguous(
        memory_format=torch.channels_last)
