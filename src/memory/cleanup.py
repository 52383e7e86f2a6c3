"""Releasing a stage's memory between stages: ``cleanup_training_state``.

``del`` on a function's arguments only drops the function's own names: while the caller still
holds the model and optimizer nothing is freed that way. What can really be released
from objects a caller still holds is released here: the optimizer's state (momentum, Adam's
moments: one or two more copies of the weights), every gradient, and the model's parameters and
buffers, which move to the CPU (the model stays usable there). Then unreachable objects are
collected and the CUDA cache goes back to the card.

The pipeline needs no arguments: a stage's objects die with ``train_stage``'s scope and the
runner then calls ``cleanup_training_state()``, which collects and empties the cache.
"""
from __future__ import annotations

import gc
from collections.abc import Iterable
from typing import Any, Optional

import torch
from torch import nn

from src.utils.logger import announce

_MB = 1e6  # decimal megabytes, as the other training guards print


def storage_bytes(tensors: Iterable[Any], seen: Optional[set[int]] = None, only_cuda: bool = False) -> int:
    """Bytes of the distinct storages behind ``tensors`` (non-tensors skipped), each counted once:
    tied weights and views share a storage. ``seen`` carries the storages already counted across
    calls (bench/memory.py sizes a stage's weights, gradients and optimizer state with it too)."""
    seen = set() if seen is None else seen
    total = 0
    for tensor in tensors:
        if not isinstance(tensor, torch.Tensor) or (only_cuda and not tensor.is_cuda):
            continue
        storage = tensor.untyped_storage()
        key = storage.data_ptr()
        if key not in seen:
            seen.add(key)
            total += storage.nbytes()
    return total


def release_optimizer(optimizer: torch.optim.Optimizer, seen: set[int]) -> int:
    """Drop the optimizer's state and gradients; returns the bytes they held. The optimizer stays
    usable: its next step starts with fresh state, as a new optimizer would."""
    state_tensors = [value for param_state in optimizer.state.values() for value in param_state.values()]
    grads = [p.grad for group in optimizer.param_groups for p in group["params"]]
    released = storage_bytes([*state_tensors, *grads], seen)
    del state_tensors, grads
    optimizer.state.clear()
    optimizer.zero_grad(set_to_none=True)
    return released


def release_model(model: nn.Module, seen: set[int]) -> int:
    """Drop the model's gradients and move its parameters and buffers to the CPU; returns the
    bytes of gradients dropped plus those moved off a GPU."""
    grads = [p.grad for p in model.parameters()]
    released = storage_bytes(grads, seen)
    del grads
    for param in model.parameters():
        param.grad = None
    released += storage_bytes([*model.parameters(), *model.buffers()], seen, only_cuda=True)
    model.to("cpu")
    return released


def _cuda_memory_mb() -> tuple[Optional[float], Optional[float]]:
    if not torch.cuda.is_available():
        return None, None
    return torch.cuda.memory_allocated() / _MB, torch.cuda.memory_reserved() / _MB


def cleanup_training_state(model: Optional[nn.Module] = None,
                           optimizer: Optional[torch.optim.Optimizer] = None,
                           scheduler: Any = None, scaler: Any = None, *,
                           verbose: bool = True) -> dict[str, Optional[float]]:
    """Release what ``model`` and ``optimizer`` hold, collect garbage, return cached CUDA blocks
    to the driver and report memory. Call it between stages, never every epoch (emptying the
    cache only slows training).

    ``scheduler`` and ``scaler`` are accepted for the training_guards call: they hold a few numbers, not
    memory worth releasing, and are left as they are. Everything else the stage built is freed
    only once the caller drops it (end the scope that owns the stage, as the pipeline does).

    Returns ``{"released_mb": what the objects passed in no longer hold, "collected": objects gc
    found, "allocated_mb", "reserved_mb"}``; the CUDA figures are None without CUDA.
    """
    seen: set[int] = set()
    released = release_optimizer(optimizer, seen) if optimizer is not None else 0
    if model is not None:
        released += release_model(model, seen)
    collected = gc.collect()
    torch.cuda.empty_cache()  # a no-op until this process has used CUDA
    allocated, reserved = _cuda_memory_mb()
    if verbose:
        what = f"released {released / _MB:.1f} MB held by the objects passed in; " if released else ""
        if allocated is None:
            announce(f"Cleanup: {what}gc collected {collected} objects (no CUDA device)")
        else:
            announce(f"Cleanup: {what}gc collected {collected} objects, CUDA cache emptied; "
                    f"{allocated:.1f} MB allocated, {reserved:.1f} MB reserved")
    return {"released_mb": released / _MB, "collected": collected, "allocated_mb": allocated,
            "reserved_mb": reserved}
