"""Guards that keep a distillation run inside a small GPU and stop it early when it goes wrong.

These are the seven names users already import (``from src.utils.training_guards import
freeze_teacher``). Each one fixes a failure the original scripts had: a teacher that still
built gradient graphs, ViT-Base running out of memory without checkpointing, memory that was
never returned between stages, training that ran on after the loss became NaN, per-epoch peak
memory that was really a running maximum, a fixed KD weight, one learning rate for every size.

Verbose summaries go to the ``kd_pipeline`` logger when ``setup_logging`` configured it
(so they land in ``pipeline.log``), otherwise they are printed.
"""
from __future__ import annotations

import logging
import math
import numbers
import re
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn

from src.errors import KDPipelineError
from src.memory.accounting import reset_peak_memory_stats
from src.memory.cleanup import cleanup_training_state

__all__ = ["FreezeReport", "NonFiniteLossError", "cleanup_training_state", "enforce_gradient_checkpointing",
           "freeze_teacher", "get_model_specific_lr", "reset_peak_memory_stats", "saved_activation_bytes",
           "schedule_kd_alpha", "validate_loss"]

LOGGER = logging.getLogger("kd_pipeline.guards")
_FP32_BYTES = 4
_MB = 1e6  # decimal megabytes, the unit every summary in this module prints


def _report(message: str) -> None:
    """Send a verbose summary where the user will see it (see the module docstring)."""
    if logging.getLogger("kd_pipeline").handlers:
        LOGGER.info(message)
    else:
        print(message)


# --------------------------------------------------------------------------- freeze_teacher


@dataclass(frozen=True)
class FreezeReport:
    """What ``freeze_teacher`` did: parameters (elements) frozen out of the model's total."""

    frozen_params: int
    total_params: int

    @property
    def gradient_mb_saved(self) -> float:
        """FP32 gradient memory the frozen parameters no longer need (MB = 1e6 bytes)."""
        return self.frozen_params * _FP32_BYTES / _MB


def freeze_teacher(model: nn.Module, verbose: bool = True) -> FreezeReport:
    """Put ``model`` in eval mode and stop gradients for every parameter.

    A teacher only produces soft targets: with gradients on, every forward would build a graph
    and reserve gradient buffers for nothing. Eval mode also fixes BatchNorm statistics and
    disables dropout so its targets are deterministic. Returns a :class:`FreezeReport`.
    """
    model.eval()
    for param in model.parameters():
        param.requires_grad_(False)
    total = sum(p.numel() for p in model.parameters())
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    report = FreezeReport(frozen_params=frozen, total_params=total)
    if verbose:
        _report(
            f"Teacher frozen: {frozen:,} / {total:,} parameters\n"
            f"  mode: eval(), requires_grad=False\n"
            f"  FP32 gradient memory saved: {report.gradient_mb_saved:.1f} MB"
        )
    return report


# ---------------------------------------------------------------- gradient checkpointing


def _timm_reentrant_default() -> tuple[Callable[[], bool], Callable[[bool], None]] | None:
    """timm's global switch for checkpoint re-entrancy (``TIMM_REENTRANT_CKPT``), if present."""
    try:
        from timm.layers import set_reentrant_ckpt, use_reentrant_ckpt
    except ImportError:
        return None
    return use_reentrant_ckpt, set_reentrant_ckpt


def enforce_gradient_checkpointing(model: nn.Module, model_name: str, verbose: bool = True) -> bool:
    """Turn on NON-reentrant gradient checkpointing through the API ``model`` offers.

    Checkpointing keeps only each block's input during the forward and recomputes the block's
    activations in the backward: far less activation memory for about one extra forward. The
    pipeline calls this for every ``vit_base`` stage (ViT-Base does not fit a 6 GB card
    without it); for other models it is optional.

    Non-reentrant because the reentrant variant drops gradients when a block's input does not
    require grad and does not support ``torch.autograd.grad``. timm (1.0.x) checkpoints through
    ``timm.models._manipulate.checkpoint``/``checkpoint_seq``, which read the global default
    ``timm.layers.use_reentrant_ckpt()`` (False unless ``TIMM_REENTRANT_CKPT`` is set in the
    environment); if that default is reentrant it is switched off here with a warning.
    HF-style models get ``gradient_checkpointing_kwargs={"use_reentrant": False}``.

    Returns True when checkpointing is on; warns and returns False when the model has no way
    to turn it on (or refused).
    """
    enabled = False
    failure = "the model offers no gradient-checkpointing method"
    try:
        if hasattr(model, "set_grad_checkpointing"):  # timm
            timm_switch = _timm_reentrant_default()
            if timm_switch is not None and timm_switch[0]():
                warnings.warn(
                    "timm was set to reentrant checkpointing (TIMM_REENTRANT_CKPT); "
                    "switching timm's default to non-reentrant",
                    RuntimeWarning,
                    stacklevel=2,
                )
                timm_switch[1](False)
            model.set_grad_checkpointing(True)
            enabled = bool(getattr(model, "grad_checkpointing", True))
        elif hasattr(model, "gradient_checkpointing_enable"):  # Hugging Face style
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            enabled = bool(getattr(model, "is_gradient_checkpointing", True))
        elif hasattr(model, "enable_gradient_checkpointing"):
            model.enable_gradient_checkpointing()
            enabled = True
    except (AssertionError, NotImplementedError, RuntimeError, TypeError, ValueError) as exc:
        failure = f"{type(exc).__name__}: {exc}"
        enabled = False
    if not enabled:
        warnings.warn(
            f"Gradient checkpointing could not be enabled for {model_name} ({failure}); "
            "training will keep every activation and may run out of GPU memory",
            RuntimeWarning,
            stacklevel=2,
        )
    elif verbose:
        _report(f"Gradient checkpointing (non-reentrant) enabled for {model_name}")
    return enabled


@contextmanager
def saved_activation_bytes(model: nn.Module | None = None) -> Iterator[dict[str, int]]:
    """Count the bytes autograd saves for backward while the block runs.

    Yields a dict whose ``"bytes"`` entry is filled in on exit: the size of every unique
    storage packed by autograd, each counted once, leaving out ``model``'s own parameters and
    buffers (memory the model holds anyway). This is the number gradient checkpointing
    shrinks, measurable on the CPU, so the benchmark and the tests use it to prove it works.
    """
    excluded: set[int] = set()
    if model is not None:
        for tensor in (*model.parameters(), *model.buffers()):
            excluded.add(tensor.untyped_storage().data_ptr())
    storages: dict[int, int] = {}
    keep: list[torch.Tensor] = []  # hold references so a freed storage's address is not reused

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        key = storage.data_ptr()
        if key not in excluded and key not in storages:
            storages[key] = storage.nbytes()
            keep.append(tensor)
        return tensor

    result = {"bytes": 0}
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        yield result
    result["bytes"] = sum(storages.values())
    keep.clear()


# --------------------------------------------------------------------- memory between stages
# cleanup_training_state and reset_peak_memory_stats live with the GPU memory code (src/memory);
# they are imported above so the seed's import surface keeps working.


# -------------------------------------------------------------------------- non-finite loss


class NonFiniteLossError(KDPipelineError, RuntimeError):
    """The training loss became NaN or infinite: the run diverged (exit code 3)."""

    exit_code = 3

    def __init__(self, step: int, value: float) -> None:
        self.step = step
        self.value = value
        super().__init__(
            f"non-finite loss at step {step}: {value}. Likely causes: learning rate too high, "
            "exploding gradients, fp16 overflow under AMP, bad data or labels outside "
            "[0, num_classes). Actions: lower --lr, clip gradients (--set train.grad_clip=1.0), "
            "use --set train.amp=bf16 or off, check the data and labels, then resume from "
            "the last checkpoint."
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


# ------------------------------------------------------------------------ schedules and LRs


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


_LR_SCALES = {
    "resnet50": 1.0,
    "vit_base": 1.0,
    "resnet34": 0.75,
    "vit_small": 0.75,
    "resnet18": 0.5,
    "vit_tiny": 0.5,
}
_MODEL_NAME = re.compile(r"(?P<base>resnet(?:18|34|50)|vit_(?:base|small|tiny))(?:[._].*)?")


def get_model_specific_lr(model_name: str, base_lr: float) -> float:
    """``base_lr`` scaled by model size: teacher-size 1.0x, assistant-size 0.75x, student-size 0.5x.

    Smaller models are less stable at the teacher's learning rate. Accepts the short names
    (``resnet50``, ``vit_base``) and timm names with suffixes (``vit_base_patch16_224``,
    ``resnet50.a1_in1k``); any other name raises ValueError listing the known ones.
    """
    if isinstance(base_lr, bool) or not isinstance(base_lr, numbers.Real) or not (
        math.isfinite(base_lr) and base_lr > 0
    ):
        raise ValueError(f"base_lr must be a positive finite number, got {base_lr!r}")
    match = _MODEL_NAME.fullmatch(str(model_name).strip().lower())
    if match is None:
        known = ", ".join(_LR_SCALES)
        raise ValueError(f"unknown model {model_name!r} for a learning-rate scale; known: {known}")
    return float(base_lr) * _LR_SCALES[match.group("base")]
