"""A diverged run: the non-finite-loss error (exit code 3), the guard that raises it, and the
record a diverged stage leaves so that the advice in the error actually works.

The error tells the user to lower the learning rate, clip gradients or change the precision
and re-run. Those settings normally may not change under a started stage (its checkpoint was
trained with the old ones), so the engine writes ``diverged.json`` into the stage folder when
it stops on a non-finite loss; while that file is there, a resume accepts new values of the
recovery settings (``src.engine.resume_rules.RECOVERY``) and continues from the last checkpoint.
"""
from __future__ import annotations

import logging
import math
import numbers
from pathlib import Path

import torch

from src.errors import KDPipelineError
from src.utils.atomic import atomic_write_json

LOGGER = logging.getLogger("kd_pipeline.guards")
DIVERGED_FILE = "diverged.json"
RECOVERY_ADVICE = ("lower --lr, clip gradients (--set train.grad_clip=1.0), use --set train.amp=bf16 or off, "
                   "check the data and labels, then re-run the command with the new setting: the stage "
                   "continues from its last checkpoint (or starts over when it has none)")


class NonFiniteLossError(KDPipelineError, RuntimeError):
    """The training loss became NaN or infinite: the run diverged (exit code 3)."""

    exit_code = 3

    def __init__(self, step: int, value: float) -> None:
        self.step = step
        self.value = value
        super().__init__(
            f"non-finite loss at step {step}: {value}. Likely causes: learning rate too high, "
            "exploding gradients, fp16 overflow under AMP, an extreme distillation.temperature, bad data "
            "or labels outside "
            f"[0, num_classes). Actions: {RECOVERY_ADVICE}."
        )


def validate_loss(loss: torch.Tensor | float, step: int, raise_on_invalid: bool = True) -> bool:
    """Return True when ``loss`` is finite; otherwise raise :class:`NonFiniteLossError`
    (or, with ``raise_on_invalid=False``, log a warning and return False).

    Reading a GPU tensor's value is a host sync that stalls the training loop, so call this at
    log intervals on an accumulated loss, or on values already read, never on every step.
    """
    if isinstance(loss, torch.Tensor):
        if loss.numel() != 1:
            raise ValueError(f"validate_loss expects a single loss value, got shape {tuple(loss.shape)}")
        value = float(loss.detach().float().cpu())
    elif isinstance(loss, numbers.Real) and not isinstance(loss, bool):
        value = float(loss)
    else:
        raise TypeError(f"validate_loss expects a tensor or a number, got {type(loss).__name__}")
    if math.isfinite(value):
        return True
    error = NonFiniteLossError(step, value)
    if raise_on_invalid:
        raise error
    LOGGER.warning("%s", error)
    return False


def record_divergence(stage_dir: Path, error: NonFiniteLossError, epoch: int) -> Path:
    """Note in ``stage_dir`` that training stopped on a non-finite loss (see the module doc)."""
    return atomic_write_json(Path(stage_dir) / DIVERGED_FILE,
                             {"step": error.step, "value": str(error.value), "epoch": epoch})


def has_diverged(stage_dir: Path) -> bool:
    """True while the stage's last session ended in a divergence not yet recovered from."""
    return (Path(stage_dir) / DIVERGED_FILE).is_file()


def clear_divergence(stage_dir: Path) -> None:
    """The stage saved a sound checkpoint after a divergence: its settings are fixed again."""
    (Path(stage_dir) / DIVERGED_FILE).unlink(missing_ok=True)
