"""The labels-only objective: it trains on the smoothed cross-entropy and reports the plain one."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from src.distillation.losses import kd_loss
from src.engine.objective import CrossEntropyObjective


@pytest.mark.parametrize("smoothing", [0.0, 0.1])
def test_loss_uses_label_smoothing_and_the_ce_part_stays_plain(smoothing: float) -> None:
    gen = torch.Generator().manual_seed(0)
    images, labels = torch.randn(6, 4, generator=gen), torch.randint(0, 3, (6,), generator=gen)
    model = nn.Linear(4, 3)
    out = CrossEntropyObjective(smoothing).training_step(model, images, labels)
    logits = model(images)
    torch.testing.assert_close(out.loss, F.cross_entropy(logits, labels, label_smoothing=smoothing))
    torch.testing.assert_close(out.parts["ce"], F.cross_entropy(logits, labels))
    assert out.loss.requires_grad and not out.parts["ce"].requires_grad
    # a KD loss with alpha 0 is the same objective, part for part (one shared helper)
    kd, parts = kd_loss(logits, logits, labels, temperature=4.0, alpha=0.0, label_smoothing=smoothing)
    torch.testing.assert_close(kd, out.loss)
    torch.testing.assert_close(parts["ce"], out.parts["ce"])
