"""Guards that keep a distillation run inside a small GPU and stop it early when it goes wrong.

These are the seven names users already import (``from src.utils.training_guards import
freeze_teacher``). Each one prevents a failure distillation scripts meet: a teacher that still
builds gradient graphs, ViT-Base running out of memory without checkpointing, memory that is
never returned between stages, training that runs on after the loss became NaN, per-epoch peak
memory that is really a running maximum, a fixed KD weight, one learning rate for every size.

This module is their import surface; each guard lives next to the code that uses it:

    freeze_teacher, FreezeReport          src/distillation/frozen_teacher.py
    schedule_kd_alpha                     src/distillation/alpha_schedule.py
    validate_loss, NonFiniteLossError     src/engine/divergence.py
    get_model_specific_lr                 src/models/lr_scale.py
    enforce_gradient_checkpointing,
    saved_activation_bytes                src/models/checkpointing.py
    cleanup_training_state                src/memory/cleanup.py
    reset_peak_memory_stats               src/engine/device_memory.py

Verbose summaries go to the ``kd_pipeline`` logger when ``setup_logging`` configured it
(so they land in ``pipeline.log``), otherwise they are printed (``src.utils.logger.announce``).
"""
from __future__ import annotations

from src.distillation.alpha_schedule import schedule_kd_alpha
from src.distillation.frozen_teacher import FreezeReport, freeze_teacher
from src.engine.device_memory import reset_peak_memory_stats
from src.engine.divergence import NonFiniteLossError, validate_loss
from src.memory.cleanup import cleanup_training_state
from src.models.checkpointing import enforce_gradient_checkpointing, saved_activation_bytes
from src.models.lr_scale import get_model_specific_lr

__all__ = [
    "FreezeReport", "NonFiniteLossError", "cleanup_training_state", "enforce_gradient_checkpointing",
    "freeze_teacher", "get_model_specific_lr", "reset_peak_memory_stats", "saved_activation_bytes",
    "schedule_kd_alpha", "validate_loss",
]
