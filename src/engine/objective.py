"""The objective contract: how a stage turns a batch into a loss.

The engine calls ``training_step`` and knows nothing about teachers; a labels-only stage and
a distillation stage differ only in the objective they hand to the engine.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from src.engine.compiling import CompileSettings


@dataclass
class StepOutput:
    """What one training step produced: the student's logits, the loss to backpropagate and
    its named parts (detached 0-dim tensors, e.g. ``ce``, ``kd``, ``alpha``) for metrics.jsonl.
    ``ce`` is always the plain cross-entropy on the labels (no label smoothing): curves.png
    plots it against the validation loss, which is the same quantity."""

    logits: torch.Tensor
    loss: torch.Tensor
    parts: dict[str, torch.Tensor]


class Objective:
    """Base class. Subclasses implement ``training_step``; the rest has safe defaults."""

    def on_epoch_start(self, epoch: int, total_epochs: int) -> None:
        """Called before each training epoch (1-based), e.g. to follow an alpha schedule."""

    def to(self, device: torch.device) -> Objective:
        """Move any modules the objective owns (a frozen teacher) to ``device``."""
        return self

    def compile(self, settings: CompileSettings, device: torch.device) -> None:
        """Compile the modules the objective owns (a frozen teacher's forward); called by the
        trainer when the stage is compiled (``runtime.compile``)."""

    def fingerprint(self) -> dict[str, Any]:
        """Facts a resume must match (e.g. the teacher file's hash); stored in checkpoints."""
        return {"objective": type(self).__name__}

    def training_step(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> StepOutput:
        raise NotImplementedError


def cross_entropy_with_part(logits: torch.Tensor, labels: torch.Tensor,
                            label_smoothing: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(the loss term: cross-entropy with the run's label smoothing; the ``ce`` part: the plain
    cross-entropy, detached, which curves.png plots against the validation loss). Computed twice
    only when smoothing makes the two differ."""
    term = F.cross_entropy(logits, labels, label_smoothing=label_smoothing)
    plain = F.cross_entropy(logits.detach(), labels) if label_smoothing else term.detach()
    return term, plain


class CrossEntropyObjective(Objective):
    """Labels only: the teacher and baseline stages."""

    def __init__(self, label_smoothing: float = 0.0) -> None:
        self.label_smoothing = label_smoothing

    def fingerprint(self) -> dict[str, Any]:
        return {"objective": type(self).__name__, "label_smoothing": self.label_smoothing}

    def training_step(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> StepOutput:
        logits = model(images)
        loss, plain = cross_entropy_with_part(logits, labels, self.label_smoothing)
        return StepOutput(logits=logits, loss=loss, parts={"ce": plain})
