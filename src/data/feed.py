"""Where a dataset's raw uint8 batches come from, on the training device.

``ResidentFeed``: the whole store already lives on the device (CIFAR at 32 px is 150 MB), and a
batch is one index into it; no worker, no host copy, no per-sample Python. ``StreamFeed``: data
too big for the device is decoded and resized by DataLoader worker processes into pinned memory,
with the workers kept alive across epochs and batches prefetched, and copied to the device
without blocking. Both yield ``(uint8 images, labels, positions)`` on the device, in plan order;
the transforms after that are the same. The stream uses the platform's default start method
(``spawn`` on Windows and macOS, ``forkserver`` on Linux from Python 3.14): everything it sends to
a worker pickles.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, Protocol

import torch
from torch.utils.data import DataLoader, Dataset

from src.errors import UserError
from src.utils.reproducibility import seed_worker

RawBatch = tuple[torch.Tensor, torch.Tensor, torch.Tensor]
PREFETCH_BATCHES = 4  # per worker


class UnreadableImage(UserError):
    """An image file that cannot be decoded. Found mid-run (a streamed folder decodes per batch),
    :meth:`mid_run` gives the advice that keeps the run: the trainer saves its updates first, and
    a readable copy under the same name keeps the split's identity."""

    FIX = "replace it with a readable copy under the same name and re-run the same command"

    @property
    def what(self) -> str:
        """The file and why, without the advice."""
        return str(self).removesuffix("; " + self.FIX)

    def mid_run(self, checkpoint: str) -> UserError:
        return UserError(f"{self.what}; the updates so far are saved ({checkpoint}): replace it with a "
                         "readable copy under the same name and re-run the same command to continue")

    @classmethod
    def from_worker(cls, exc: BaseException) -> UnreadableImage:
        """The one line of an error a DataLoader worker raised: torch re-raises it with the worker's
        traceback as the message ("Caught UnreadableImage in DataLoader worker process 0. ...")."""
        lines = [line for line in str(exc).splitlines() if line.strip()]
        if len(lines) > 1 and lines[0].startswith("Caught "):
            return cls(lines[-1].split(": ", 1)[-1])
        return cls(str(exc))


class Feed(Protocol):
    def batches(self, positions: Sequence[Sequence[int]], device: torch.device) -> Iterator[RawBatch]:
        """uint8 images, labels and the positions as a tensor, all on ``device``, per batch."""


def _positions(positions: Sequence[Sequence[int]], device: torch.device) -> tuple[torch.Tensor, ...]:
    """Each batch's positions as a tensor on ``device``: one copy for the whole pass, then split."""
    flat = torch.tensor([p for batch in positions for p in batch], dtype=torch.long)
    return flat.to(device, non_blocking=True).split([len(batch) for batch in positions])


class ResidentFeed:
    """Batches gathered from images and labels that already live on the device."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.images = images
        self.labels = labels

    def batches(self, positions: Sequence[Sequence[int]], device: torch.device) -> Iterator[RawBatch]:
        for index in _positions(positions, device):
            yield self.images.index_select(0, index), self.labels.index_select(0, index), index


class _StoreItems(Dataset):
    """What a worker holds: the store (file paths or an array, no decoded cache) and the labels."""

    def __init__(self, store: Any, targets: list[int]) -> None:
        self.store = store
        self.targets = targets

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, position: int) -> tuple[torch.Tensor, int]:
        return self.store.read([position])[0], self.targets[position]


class _PlannedBatches:
    """A batch sampler whose batches are set before each pass, so one DataLoader (and its
    persistent workers) serves every epoch, and an out-of-memory re-plan, of a stage."""

    def __init__(self) -> None:
        self.batches: Sequence[Sequence[int]] = []

    def __iter__(self) -> Iterator[Sequence[int]]:
        return iter(self.batches)

    def __len__(self) -> int:
        return len(self.batches)


class StreamFeed:
    """Batches decoded by ``num_workers`` persistent worker processes (0: in this process)."""

    def __init__(self, store: Any, targets: list[int], num_workers: int, device: torch.device) -> None:
        self._plan = _PlannedBatches()
        self.loader = DataLoader(
            _StoreItems(store, targets),
            batch_sampler=self._plan,
            num_workers=num_workers,
            pin_memory=device.type == "cuda",
            persistent_workers=num_workers > 0,
            prefetch_factor=PREFETCH_BATCHES if num_workers > 0 else None,
            worker_init_fn=seed_worker if num_workers > 0 else None,
            # its own generator: DataLoader otherwise draws worker seeds from the global RNG,
            # which would make the model's dropout depend on how the data is loaded
            generator=torch.Generator().manual_seed(0),
        )

    def batches(self, positions: Sequence[Sequence[int]], device: torch.device) -> Iterator[RawBatch]:
        self._plan.batches = [list(batch) for batch in positions]
        indexes = _positions(self._plan.batches, device)
        try:
            for index, (images, labels) in zip(indexes, self.loader, strict=True):
                yield images.to(device, non_blocking=True), labels.to(device, non_blocking=True), index
        except UnreadableImage as exc:
            raise UnreadableImage.from_worker(exc) from None
