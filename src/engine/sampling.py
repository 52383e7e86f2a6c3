"""The training data order: a pure function of (seed, epoch), sharded by rank, cut into
update windows and micro-batches.

The order never depends on how many micro-batches a window is split into, where a run was
resumed, or how many workers load it, which is what makes a resumed (or OOM-rebatched) run
see exactly the samples an uninterrupted one would have seen.
"""
from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import torch
from torch.utils.data import DataLoader, Dataset

from src.utils.reproducibility import derive_seed, seed_worker

Key = tuple[int, int]


@runtime_checkable
class BatchedDataset(Protocol):
    """A dataset that makes whole batches on the device itself (src.data's datasets do)."""

    def batches(self, batches: Sequence[Sequence[Any]], device: torch.device,
                num_workers: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]: ...


def epoch_order(seed: int, epoch: int, num_samples: int) -> list[int]:
    """The whole epoch's sample order (every rank computes the same one)."""
    generator = torch.Generator().manual_seed(derive_seed(seed, "order", epoch))
    return torch.randperm(num_samples, generator=generator).tolist()


def rank_shard(order: Sequence[int], rank: int, world_size: int, pad: bool = True) -> list[int]:
    """This rank's share of ``order``. Training pads (repeating the start of the order) so
    every rank runs the same number of steps; evaluation does not pad, so no sample counts twice."""
    items = list(order)
    if pad and world_size > 1 and len(items) % world_size:
        extra = world_size - len(items) % world_size
        items += (items * (extra // max(len(items), 1) + 1))[:extra]
    return items[rank::world_size]


@dataclass(frozen=True)
class MicroBatch:
    """One forward/backward pass: its keys and the size of the update window it belongs to."""

    keys: list[Key]
    window_samples: int  # samples in the whole window (the loss is weighted by n / window_samples)
    last_in_window: bool


def window_sizes(num_keys: int, window: int) -> list[int]:
    """Samples per update window: full windows, then the remainder. A remainder of one sample
    joins the window before it, since a one-sample batch breaks batch norm in training mode
    (and is a one-sample gradient step anyway)."""
    sizes = [window] * (num_keys // window)
    rest = num_keys % window
    if rest == 1 and sizes:
        sizes[-1] += 1
    elif rest:
        sizes.append(rest)
    return sizes


def _pieces(keys: list[Key], micro_batch: int) -> list[list[Key]]:
    """Micro-batches of at most ``micro_batch`` keys; a lone last key left over by a larger
    micro-batch joins the one before (a micro-batch of 1 was chosen: for a model without
    BatchNorm, whose out-of-memory fallback may go that far, it stays 1)."""
    pieces = [keys[i : i + micro_batch] for i in range(0, len(keys), micro_batch)]
    if micro_batch > 1 and len(pieces) > 1 and len(pieces[-1]) == 1:
        pieces[-2].extend(pieces.pop())
    return pieces


def plan_micro_batches(keys: Sequence[Key], window: int, micro_batch: int) -> list[MicroBatch]:
    """Cut ``keys`` into update windows (:func:`window_sizes`) and each window into
    micro-batches of about ``micro_batch`` (:func:`_pieces`)."""
    plan: list[MicroBatch] = []
    start = 0
    for size in window_sizes(len(keys), window):
        window_keys = list(keys[start : start + size])
        start += size
        pieces = _pieces(window_keys, micro_batch)
        for i, piece in enumerate(pieces):
            plan.append(MicroBatch(piece, size, i == len(pieces) - 1))
    return plan


def train_keys(seed: int, epoch: int, num_samples: int, rank: int, world_size: int, start: int) -> list[Key]:
    """The ``(epoch, index)`` keys this rank still has to train on this epoch, from ``start``
    (samples this rank already consumed, on a mid-epoch resume or an OOM retry)."""
    shard = rank_shard(epoch_order(seed, epoch, num_samples), rank, world_size)
    return [(epoch, index) for index in shard[start:]]


def make_loader(dataset: Dataset[Any], batches: Sequence[Sequence[Any]], num_workers: int, seed: int,
                *tag: Any, pin_memory: bool = False) -> DataLoader:
    """A DataLoader that yields exactly ``batches`` (lists of dataset keys). Its own generator
    keeps the global RNG untouched, so dropout draws never depend on how data is loaded."""
    generator = torch.Generator().manual_seed(derive_seed(seed, "loader", *tag))
    return DataLoader(
        dataset,
        batch_sampler=batches,
        num_workers=num_workers,
        worker_init_fn=seed_worker if num_workers else None,
        generator=generator,
        pin_memory=pin_memory,
        persistent_workers=False,
    )


def load_batches(dataset: Dataset[Any], batches: Sequence[Sequence[Any]], device: torch.device,
                 num_workers: int, seed: int, *tag: Any) -> Iterable[tuple[torch.Tensor, torch.Tensor]]:
    """``(images, labels)`` for each list of keys in ``batches``: made on ``device`` by a
    :class:`BatchedDataset`, else item by item through :func:`make_loader` (any map-style dataset)."""
    if isinstance(dataset, BatchedDataset):
        return dataset.batches(batches, device, num_workers)
    return make_loader(dataset, batches, num_workers, seed, *tag, pin_memory=device.type == "cuda")
