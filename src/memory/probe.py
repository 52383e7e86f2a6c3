"""One measured trial of a stage's training step at a given micro-batch.

The probe must cost the stage nothing: it trains on a throwaway optimizer, then puts back the
weights, buffers (BatchNorm statistics), training mode and random-number state, and frees what
it allocated, so the run that follows is the run that would have happened without it. The
frozen teacher is only read (the distillation objective runs it under inference mode).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import nn

from src.engine.device_memory import DeviceMemory
from src.engine.layout import wants_channels_last
from src.engine.objective import Objective
from src.engine.optim import build_optimizer
from src.engine.settings import TrainConfig
from src.engine.step import UpdateStep, resolve_precision

PROBE_WINDOWS = 2  # the second window runs with optimizer state alive: the steady-state peak


def micro_batch_of(images: torch.Tensor, labels: torch.Tensor,
                   size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``size`` samples cycled from the sample batch: memory depends on shapes only. They stay
    where they are; the step moves each micro-batch to the device, as in training."""
    idx = torch.arange(size) % images.shape[0]
    return images[idx], labels[idx]


def run_probe_steps(model: nn.Module, objective: Objective, images: torch.Tensor, labels: torch.Tensor,
                    cfg: TrainConfig, device: torch.device, accumulation_steps: int = 1,
                    windows: int = PROBE_WINDOWS) -> None:
    """Train ``windows`` optimizer updates through the engine's own ``UpdateStep`` (autocast,
    scaler, channels-last input, clipping, step), each over ``min(accumulation_steps, 2)``
    micro-batches so the gradients of one micro-batch are alive during the next, as in a real
    accumulation window; then restore the model exactly. Out-of-memory errors propagate after
    the restore."""
    snapshot = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
    was_training = model.training
    dtype, scaler = resolve_precision(cfg.amp, device)
    optimizer = build_optimizer(model, cfg)
    step = UpdateStep(model, objective, optimizer, cfg, device, dtype, scaler,
                      wants_channels_last(model, cfg, device))
    micro_per_window = min(accumulation_steps, 2)
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            model.train()
            for _ in range(windows):
                finite = []
                for _ in range(micro_per_window):
                    result = step.forward_backward(images, labels, 1.0 / accumulation_steps)
                    finite.append(result[1])  # (output, loss finite, ...): keep only the flag
                    del result
                step.apply(torch.stack(finite).all())
    finally:
        optimizer.zero_grad(set_to_none=True)
        model.zero_grad(set_to_none=True)
        del step, optimizer, scaler
        model.load_state_dict(snapshot)
        model.train(was_training)


def probe_peaks(model: nn.Module, objective: Objective, images: torch.Tensor, labels: torch.Tensor,
                micro_batch: int, accumulation_steps: int, cfg: TrainConfig,
                device: torch.device) -> Optional[tuple[int, int]]:
    """(peak allocated, peak reserved) CUDA bytes of the probe at ``micro_batch``; None on OOM."""
    memory = DeviceMemory(device)
    x, y = micro_batch_of(images, labels, micro_batch)
    memory.release_cached()  # what an earlier probe left (the planner releases after the last one)
    memory.reset_peaks()
    oom = False
    try:
        run_probe_steps(model, objective, x, y, cfg, device, accumulation_steps)
    except torch.OutOfMemoryError:
        oom = True  # handled outside the except block, whose traceback still pins the step's tensors
    peaks = memory.peaks()
    if oom or peaks is None:
        return None
    return peaks.allocated, peaks.reserved


def measure_peak(model: nn.Module, objective: Objective, images: torch.Tensor, labels: torch.Tensor,
                 micro_batch: int, effective_batch: int, cfg: TrainConfig,
                 device: torch.device) -> Optional[int]:
    """Peak allocated bytes at ``micro_batch`` (the planner's measure); None when it ran out of memory."""
    peaks = probe_peaks(model, objective, images, labels, micro_batch, effective_batch // micro_batch,
                        cfg, device)
    return None if peaks is None else peaks[0]
