"""The smallest micro-batch a model can train on: one rule for the memory planner's search and
the engine's out-of-memory fallback, so neither can pick a split the other would refuse.

BatchNorm cannot normalise a batch of one sample in training mode (its variance is undefined:
torch raises), so a model with BatchNorm layers trains on micro-batches of at least 2; any other
model on 1.
"""
from __future__ import annotations

from typing import Optional

from torch import nn

from src.errors import UserError


def micro_batch_floor(model: nn.Module) -> int:
    """2 with BatchNorm in ``model``, else 1."""
    return 2 if any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in model.modules()) else 1


def refuse_below_floor(model: nn.Module, micro_batch: int, samples_per_rank: Optional[int] = None) -> int:
    """``micro_batch_floor(model)``; a UserError when ``micro_batch`` (or each process's share of
    the training set, where known) is below it, instead of a crash in the first forward. The
    sampler merges a lone last sample into the batch before it, so only these two can be too small."""
    floor = micro_batch_floor(model)
    name = type(model).__name__
    if micro_batch < floor:
        raise UserError(
            f"--batch-size {micro_batch}: {name} has BatchNorm layers, which cannot train on one sample "
            f"per step; use --batch-size {floor} or more (with --set train.accumulation_steps=N to keep "
            "the memory of a small batch)"
        )
    if samples_per_rank is not None and samples_per_rank < floor:
        raise UserError(
            f"{name} has BatchNorm layers, which cannot train on one sample per step, and each process "
            f"gets {samples_per_rank} training sample; use more data (a larger --subset) or fewer processes"
        )
    return floor
