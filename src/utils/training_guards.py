"""Guards that keep a distillation run inside a small GPU and stop it early when it goes wrong.

These are the seven names users already import (``from src.utils.training_guards import
freeze_teacher``). Each one fixes a failure the original scripts had: a teacher that still
built gradient graphs, ViT-Base running out of memory without checkpointing, memory that was
never returned between stages, training that ran on after the loss became NaN, per-epoch peak
memory that was really a running maximum, a fixed KD weight, one learning rate for every size.

This module is their import surface; each guard lives next to the code that uses it:

    freeze_teacher, FreezeReport          src/distillation/frozen_teacher.py
    schedule_kd_alpha                     src/distillation/alpha_schedule.py
    validate_loss, NonFiniteLossError     src/engine/divergence.py
    get_model_specific_lr                 src/models/lr_scale.py
    enforce_gradient_checkpointing,
    saved_activation_bytes                src/models/checkpointing.py
    cleanup_training_state,
    reset_peak_memory_stats               below

Verbose summaries go to the ``kd_pipeline`` logger when ``setup_logging`` configured it
(so they land in ``pipeline.log``), otherwise they are printed.
"""
from __future__ import annotations

import gc

import torch

from src.distillation.alpha_schedule import schedule_kd_alpha
from src.distillation.frozen_teacher import FreezeReport, freeze_teacher
from src.engine.divergence import NonFiniteLossError, validate_loss
from src.models.checkpointing import enforce_gradient_checkpointing, saved_activation_bytes
from src.models.lr_scale import get_model_specific_lr
from src.utils.logger import announce as _report

__all__ = [
    "FreezeReport", "NonFiniteLossError", "cleanup_training_state", "enforce_gradient_checkpointing",
    "freeze_teacher", "get_model_specific_lr", "reset_peak_memory_stats", "saved_activation_bytes",
    "schedule_kd_alpha", "validate_loss",
]
_MB = 1e6  # decimal megabytes, the unit every summary in this module prints


# --------------------------------------------------------------------- memory between stages


def _cuda_memory_mb() -> tuple[float | None, float | None]:
    if not torch.cuda.is_available():
        return None, None
    return torch.cuda.memory_allocated() / _MB, torch.cuda.memory_reserved() / _MB


def cleanup_training_state(*, verbose: bool = True) -> dict[str, float | int | None]:
    """Collect garbage and return cached CUDA blocks to the driver, then report memory.

    This takes no model, optimizer or scaler on purpose: ``del`` inside a function only drops
    the function's own name, so it can never free what the caller still references. The
    caller must first end the scope that owns the stage (return from the function that built
    the model, optimizer, scheduler and scaler, or ``del`` its own names), then call this
    between stages. Do not call it every epoch: emptying the cache only slows training.

    Returns ``{"collected": objects gc found, "allocated_mb", "reserved_mb"}``; the memory
    figures are None without CUDA.
    """
    collected = gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()
    allocated, reserved = _cuda_memory_mb()
    if verbose:
        if allocated is None:
            _report(f"Cleanup: gc collected {collected} objects (no CUDA device)")
        else:
            _report(
                f"Cleanup: gc collected {collected} objects, CUDA cache emptied; "
                f"{allocated:.1f} MB allocated, {reserved:.1f} MB reserved"
            )
    return {"collected": collected, "allocated_mb": allocated, "reserved_mb": reserved}


def reset_peak_memory_stats() -> None:
    """Reset CUDA peak-memory counters (e.g. at each epoch start, so peaks are per epoch).

    Without CUDA there is nothing to reset and this does nothing.
    """
    if torch.cuda.is_available():
        torch.cuda.reset_peak_memory_stats()
