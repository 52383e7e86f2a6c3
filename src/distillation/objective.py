"""The distillation objective: a frozen teacher's soft targets plus the labels.

The engine sees only an ``Objective``; the teacher lives here, outside the student, so it is
never in the optimizer, the student's checkpoint or its ``model.train()`` calls.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from src.distillation.losses import kd_loss
from src.engine.objective import Objective, StepOutput
from src.utils.training_guards import freeze_teacher, schedule_kd_alpha


class DistillationObjective(Objective):
    """KD from a frozen ``teacher`` with alpha annealed by ``schedule_kd_alpha`` per epoch."""

    def __init__(
        self,
        teacher: nn.Module,
        *,
        temperature: float,
        alpha_start: float = 0.9,
        alpha_end: float = 0.5,
        teacher_fingerprint: dict[str, Any] | None = None,
    ) -> None:
        if not temperature > 0:
            raise ValueError(f"temperature must be > 0, got {temperature!r}")
        freeze_teacher(teacher, verbose=False)
        self.teacher = teacher
        self.temperature = float(temperature)
        self.alpha_start = float(alpha_start)
        self.alpha_end = float(alpha_end)
        self.teacher_fingerprint = dict(teacher_fingerprint or {})
        self.alpha = schedule_kd_alpha(1, 1, self.alpha_start, self.alpha_end)  # validates both alphas
        self._teacher_channels_last = False

    def on_epoch_start(self, epoch: int, total_epochs: int) -> None:
        self.alpha = schedule_kd_alpha(epoch, total_epochs, self.alpha_start, self.alpha_end)

    def to(self, device: torch.device) -> DistillationObjective:
        self.teacher.to(device)
        return self

    def fingerprint(self) -> dict[str, Any]:
        return {
            "objective": type(self).__name__,
            "temperature": self.temperature,
            "alpha_start": self.alpha_start,
            "alpha_end": self.alpha_end,
            "teacher": self.teacher_fingerprint,
        }

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
        # through new tensors (teacher / T, log_softmax) made outside inference mode, so
        # autograd never saves an inference tensor itself (tests/test_distillation_objective.py).
        with torch.inference_mode():
            teacher_logits = self.teacher(images)
        student_logits = model(images)
        loss, parts = kd_loss(
            student_logits, teacher_logits, labels, temperature=self.temperature, alpha=self.alpha
        )
        return StepOutput(logits=student_logits, loss=loss, parts=parts)


def _is_channels_last(images: torch.Tensor) -> bool:
    """Strictly channels-last (a 1x1 or single-channel batch is contiguous both ways)."""
    return images.dim() == 4 and not images.is_contiguous() and images.is_contiguous(
        memory_format=torch.channels_last)
