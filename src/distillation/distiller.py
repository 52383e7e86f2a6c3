"""The distillation objective: a frozen teacher's soft targets plus the labels.

The engine sees only an ``Objective``; the teacher lives here, outside the student, so it is
never in the optimizer, the student's checkpoint or its ``model.train()`` calls.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from src.distillation.frozen_teacher import compile_teacher, freeze_teacher
from src.distillation.losses import Parts
from src.distillation.registry import LOSSES, LossInputs
from src.distillation.settings import DistillationConfig, check_distillation
from src.engine.compiling import CompileSettings
from src.engine.objective import Objective, StepOutput
from src.utils.sections import settings_dict


class DistillationObjective(Objective):
    """Distillation from a frozen ``teacher`` with the registered loss ``config.loss`` names,
    its per-epoch schedule and the run's label smoothing."""

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
        self.spec = LOSSES[self.config.loss]
        freeze_teacher(teacher, verbose=False)
        self.teacher = teacher
        self.teacher_forward: Callable[[torch.Tensor], torch.Tensor] = teacher  # compile() may replace it
        self.label_smoothing = float(label_smoothing)
        self.teacher_fingerprint = dict(teacher_fingerprint or {})
        # the student's batch as the teacher's input (its size and normalisation: ViewChange)
        self.teacher_input = teacher_input
        self.on_epoch_start(1, 1)
        self._teacher_channels_last = False

    def on_epoch_start(self, epoch: int, total_epochs: int) -> None:
        self.scheduled = dict(self.spec.schedule(self.config.settings(), epoch, total_epochs))

    def to(self, device: torch.device) -> DistillationObjective:
        self.teacher.to(device)
        return self

    def compile(self, settings: CompileSettings, device: torch.device) -> None:
        self.teacher_forward = compile_teacher(self.teacher, settings, device)

    def fingerprint(self) -> dict[str, Any]:
        return {
            "objective": type(self).__name__,
            "distillation": settings_dict(self.config),
            "label_smoothing": self.label_smoothing,
            "teacher": self.teacher_fingerprint,
        }

    def loss(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor,
             labels: torch.Tensor) -> tuple[torch.Tensor, Parts]:
        """The configured loss at the current epoch's schedule."""
        cfg = self.config
        inputs = LossInputs(student_logits, teacher_logits, labels, temperature=cfg.temperature,
                            standardize=cfg.logit_standardization, label_smoothing=self.label_smoothing)
        return self.spec.compute(inputs, cfg.settings(), self.scheduled)

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
            teacher_logits = self.teacher_forward(teacher_images)
        student_logits = model(images)
        loss, parts = self.loss(student_logits, teacher_logits, labels)
        return StepOutput(logits=student_logits, loss=loss, parts=parts)


def _is_channels_last(images: torch.Tensor) -> bool:
    """Strictly channels-last (a 1x1 or single-channel batch is contiguous both ways)."""
    return images.dim() == 4 and not images.is_contiguous() and images.is_contiguous(
        memory_format=torch.channels_last)
