"""What the CUDA caching allocator reports for one device, and giving its cache back.

Every memory figure the product writes (epochs.csv's per-epoch ``gpu_memory_mb``, result.json's
peaks, the planner's measurements) comes through ``DeviceMemory``, so the reading is the same
everywhere: peaks since the last reset, allocated (what tensors hold) and reserved (what the
allocator took from the card, the figure that decides whether a 6 GB card runs out). On any
device but CUDA every figure is None (never a made-up number) and every action does nothing.
"""
from __future__ import annotations

import gc
from dataclasses import dataclass
from typing import Optional

import torch

MIB = 1 << 20


@dataclass(frozen=True)
class MemoryPeaks:
    """Peak allocated and reserved bytes since the last reset."""

    allocated: int
    reserved: int

    @property
    def allocated_mib(self) -> float:
        return self.allocated / MIB

    @property
    def reserved_mib(self) -> float:
        return self.reserved / MIB


class DeviceMemory:
    """The allocator's figures for ``device`` (an indexed CUDA device, or anything else: no-ops)."""

    def __init__(self, device: torch.device) -> None:
        self.device = device
        self.is_cuda = device.type == "cuda"

    def reset_peaks(self) -> None:
        """Start a new peak window (an epoch, a probe): the peaks are then the window's own.
        Before CUDA started there is nothing to reset (and torch's allocator would refuse)."""
        if self.is_cuda and torch.cuda.is_initialized():
            torch.cuda.reset_peak_memory_stats(self.device)

    def peaks(self) -> Optional[MemoryPeaks]:
        """Peaks since the last ``reset_peaks``; None off CUDA."""
        if not self.is_cuda:
            return None
        return MemoryPeaks(torch.cuda.max_memory_allocated(self.device),
                           torch.cuda.max_memory_reserved(self.device))

    def release_cached(self) -> None:
        """Collect unreachable objects, then return the allocator's free cached blocks to the card.

        Only blocks no tensor uses can go back, so call this once the tensors to be freed are
        unreachable (after an exception that referenced them is gone, after a stage's scope ended)."""
        gc.collect()
        if self.is_cuda:
            torch.cuda.empty_cache()


def reset_peak_memory_stats() -> None:
    """Reset CUDA peak-memory counters of the current device (e.g. at each epoch start, so peaks
    are per epoch, not a running maximum). Without CUDA, or before this process used it, there is
    nothing to reset (torch's allocator raises "did you call init?" for a reset before that)."""
    if torch.cuda.is_initialized():
        torch.cuda.reset_peak_memory_stats()
