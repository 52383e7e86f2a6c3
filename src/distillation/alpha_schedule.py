"""``schedule_kd_alpha``: how the weight on the distillation term moves over a stage
(re-exported by ``src.utils.training_guards``)."""
from __future__ import annotations

import numbers


def _is_int(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def schedule_kd_alpha(epoch: int, epochs: int, alpha_start: float = 0.9, alpha_end: float = 0.5) -> float:
    """The weight on the distillation term for ``epoch`` (1-based) of ``epochs``.

    Linear from ``alpha_start`` at epoch 1 to ``alpha_end`` at the last epoch: lean on the
    teacher early, on the labels late. A one-epoch stage has no room to anneal and uses
    ``alpha_start``, as the first epoch of every longer stage does.
    Raises ValueError for epochs outside ``1..epochs`` or alphas outside [0, 1].
    """
    if not _is_int(epoch) or not _is_int(epochs):
        raise ValueError(f"epoch and epochs must be integers, got {epoch!r} and {epochs!r}")
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    if not 1 <= epoch <= epochs:
        raise ValueError(f"epoch must be in 1..{epochs} (epochs count from 1), got {epoch}")
    for name, alpha in (("alpha_start", alpha_start), ("alpha_end", alpha_end)):
        if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real) or not 0.0 <= alpha <= 1.0:
            raise ValueError(f"{name} must be a number in [0, 1], got {alpha!r}")
    if epochs == 1:
        return float(alpha_start)
    progress = (epoch - 1) / (epochs - 1)
    return float(alpha_start + (alpha_end - alpha_start) * progress)
