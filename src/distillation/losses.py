"""The knowledge-distillation loss (Hinton et al. 2015) as this product defines it.

    loss = alpha * T^2 * KL(softmax(t / T) || softmax(s / T))  +  (1 - alpha) * CE(s, y)

Conventions, because frameworks disagree and the numbers are not comparable without them:

- ``alpha`` weighs the distillation term (torchdistill's ``alpha`` weighs cross-entropy
  instead, so its 0.9 is our 0.1).
- The KL divergence is summed over classes and averaged over the batch ("batchmean"), which
  is the true per-sample KL. The TAKD reference code also divides by the number of classes,
  which shrinks the KD term by 10x on CIFAR-10 and 100x on CIFAR-100; we do not.
- The ``T^2`` factor is kept: the gradient of the softened KL w.r.t. the student logits
  scales like ``1 / T^2``, so without it raising T would silently turn distillation down
  relative to the labels.
- Everything is computed in float32 even under autocast: log-softmax of half-precision logits
  divided by T loses the small probabilities that carry the teacher's "dark knowledge".
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    temperature: float,
    alpha: float,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Return the KD loss and its parts ``kd`` (T^2-scaled KL, before alpha), ``ce``, ``alpha``.

    The parts are detached 0-dim tensors on the logits' device, so callers can accumulate
    them without a host sync. ``teacher_logits`` are treated as constants.
    """
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature!r}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha!r}")
    student = student_logits.float()
    teacher = teacher_logits.detach().float()
    kl = F.kl_div(
        F.log_softmax(student / temperature, dim=-1),
        F.log_softmax(teacher / temperature, dim=-1),
        log_target=True,
        reduction="batchmean",
    )
    kd = kl * (temperature * temperature)
    ce = F.cross_entropy(student, labels)
    loss = alpha * kd + (1.0 - alpha) * ce
    parts = {
        "kd": kd.detach(),
        "ce": ce.detach(),
        "alpha": torch.full((), float(alpha), device=student.device),
    }
    return loss, parts
