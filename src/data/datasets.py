"""Datasets over a fixed list of source images, held as uint8 at their stored size.

A dataset makes whole batches itself (:meth:`ImageDataset.batches`): the keys of a micro-batch go
in, model-ready ``(float images, labels)`` on the training device come out. Where they come from
is the dataset's :class:`~src.data.feed.Feed` (the whole store on the device, or DataLoader workers
for data too big for it); the transforms then run batched on the device (src/data/transforms.py).
Item access (``dataset[key]``) runs the very same code on a batch of one, on the CPU, for the
memory planner's sample batch, attention maps and anyone using the dataset with a plain DataLoader.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch.utils.data import Dataset

from src.data.feed import Feed, ResidentFeed, StreamFeed
from src.data.sources import SourcePart
from src.data.transforms import Augment, Draws, ModelInput

Batch = tuple[torch.Tensor, torch.Tensor]


class ImageStore:
    """uint8 ``[3, S, S]`` images for ``indices`` of a source part: all decoded up front into
    memory (``resident``, copied to a training device on request) or decoded on each read."""

    def __init__(self, part: SourcePart, indices: Sequence[int], size: int, *, resident: bool) -> None:
        self._part = part
        self.indices = list(indices)
        self.size = size
        self._images = part.read(self.indices, size).contiguous() if resident else None
        self._placed: dict[torch.device, torch.Tensor] = {}

    @property
    def resident(self) -> bool:
        return self._images is not None

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def nbytes(self) -> int:
        return len(self.indices) * 3 * self.size * self.size

    def read(self, positions: Sequence[int]) -> torch.Tensor:
        """uint8 ``[n, 3, S, S]`` on the CPU for these positions (0 .. len-1) in the store."""
        if self._images is not None:
            return self._images[torch.as_tensor(list(positions), dtype=torch.long)]
        return self._part.read([self.indices[i] for i in positions], self.size)

    def on(self, device: torch.device) -> torch.Tensor:
        """The whole resident store on ``device`` (copied once, then kept)."""
        if self._images is None:
            raise ValueError("only a resident store can be placed on a device")
        if device not in self._placed:
            self._placed[device] = self._images.to(device)
        return self._placed[device]

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_placed": {}}  # device copies stay in the process that made them


class ImageDataset(Dataset):
    """Validation/test items keyed by ``int``: ``(normalised FloatTensor[3, S, S], label)``, no randomness."""

    def __init__(self, store: ImageStore, targets: list[int], class_names: list[str],
                 model_input: ModelInput) -> None:
        self.store = store
        self.targets = list(targets)
        self.class_names = list(class_names)
        self.num_classes = len(class_names)
        self.model_input = model_input
        self._feeds: dict[tuple[torch.device, int], Feed] = {}

    def __len__(self) -> int:
        return len(self.store)

    def __getitem__(self, key: Any) -> tuple[torch.Tensor, int]:
        position = self._position(key)
        raw = self.store.read([position])
        draws = self._draws([key], torch.tensor([position]), raw.device)
        return self.model_input(raw, draws)[0], self.targets[position]

    def batches(self, batches: Sequence[Sequence[Any]], device: torch.device,
                num_workers: int = 0) -> Iterator[Batch]:
        """Model-ready ``(images, labels)`` on ``device`` for each list of keys in ``batches``."""
        keys = [list(batch) for batch in batches]
        positions = [[self._position(key) for key in batch] for batch in keys]
        raw_batches = self.feed(device, num_workers).batches(positions, device)
        for batch, (raw, labels, index) in zip(keys, raw_batches, strict=True):
            yield self.model_input(raw, self._draws(batch, index, device)), labels

    def with_input(self, model_input: ModelInput) -> ImageDataset:
        """These images shown to another model (its size and normalisation): the same store, labels
        and feeds, so nothing is decoded, placed on a device or streamed twice."""
        twin = ImageDataset(self.store, self.targets, self.class_names, model_input)
        twin._feeds = self._feeds
        return twin

    def feed(self, device: torch.device, num_workers: int) -> Feed:
        """Where raw batches come from on ``device``; made once and kept, so stream workers persist."""
        slot = (device, num_workers)
        if slot not in self._feeds:
            if self.store.resident:
                labels = torch.tensor(self.targets, device=device)
                self._feeds[slot] = ResidentFeed(self.store.on(device), labels)
            else:
                self._feeds[slot] = StreamFeed(self.store, self.targets, num_workers, device)
        return self._feeds[slot]

    def _position(self, key: Any) -> int:
        return int(key)

    def _draws(self, keys: list[Any], index: torch.Tensor, device: torch.device) -> Draws | None:
        return None

    def __getstate__(self) -> dict[str, Any]:
        return {**self.__dict__, "_feeds": {}}  # a feed holds worker processes: never sent to one


class TrainDataset(ImageDataset):
    """Training items keyed by ``(epoch, index)``: augmentation is a pure function of the key.

    A plain ``int`` key returns the un-augmented image (for inspection and evaluation on train).
    """

    def __init__(self, store: ImageStore, targets: list[int], class_names: list[str],
                 model_input: ModelInput, *, seed: int) -> None:
        super().__init__(store, targets, class_names, model_input)
        self.seed = seed
        self._table: tuple[int, torch.device, Draws] | None = None

    @property
    def augment(self) -> Augment | None:
        return self.model_input.augment

    def _position(self, key: Any) -> int:
        return int(key[1]) if isinstance(key, (tuple, list)) else int(key)

    def _draws(self, keys: list[Any], index: torch.Tensor, device: torch.device) -> Draws | None:
        if self.augment is None or not keys or not isinstance(keys[0], (tuple, list)):
            return None
        epochs = {int(key[0]) for key in keys}
        if len(epochs) != 1:  # the trainer's batches (sampling.train_keys) hold one epoch each
            raise ValueError(f"a training batch must come from one epoch, got epochs {sorted(epochs)}")
        return self._epoch_table(epochs.pop(), device).take(index)

    def with_seed(self, seed: int) -> TrainDataset:
        """These training images under another seed (its augmentation): the same store, labels and
        feeds, so no image is decoded, copied to a device or streamed by a second set of workers
        again (a feed holds no seed)."""
        return self._twin(self.model_input, seed)

    def with_input(self, model_input: ModelInput) -> TrainDataset:
        """These training images, with the same augmentation, shown to another model (its size and
        normalisation): the same store, labels, feeds and seed."""
        return self._twin(dataclasses.replace(model_input, augment=self.augment), self.seed)

    def _twin(self, model_input: ModelInput, seed: int) -> TrainDataset:
        twin = TrainDataset(self.store, self.targets, self.class_names, model_input, seed=seed)
        twin._feeds = self._feeds
        return twin

    def _epoch_table(self, epoch: int, device: torch.device) -> Draws:
        """The epoch's draws on ``device``, kept while that epoch lasts."""
        if self._table is None or self._table[:2] != (epoch, device):
            assert self.augment is not None
            self._table = (epoch, device, self.augment.draws(self.seed, epoch, len(self)).to(device))
        return self._table[2]

    def __getstate__(self) -> dict[str, Any]:
        return {**super().__getstate__(), "_table": None}
