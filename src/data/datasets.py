"""Map-style datasets over a fixed list of source images, with an in-memory uint8 cache.

The chosen images are decoded and resized once to the configured size and kept as one uint8
tensor when that fits ``CACHE_LIMIT_BYTES`` (digits and CIFAR at small sizes always do), so
``__getitem__`` costs a crop, a flip and a normalisation. Larger sets (CIFAR at 224 px, big image
folders) are decoded and resized per item instead, which bounds memory at the cost of speed.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch.utils.data import Dataset

from src.data.sources import SourcePart
from src.data.transforms import Augment, Normalize

CACHE_LIMIT_BYTES = 1 << 30  # per dataset: 1 GiB of uint8 pixels


class ImageStore:
    """uint8 ``[3, S, S]`` images for ``indices`` of a source part, cached when small enough."""

    def __init__(self, part: SourcePart, indices: Sequence[int], image_size: int) -> None:
        self._part = part
        self.indices = list(indices)
        self.image_size = image_size
        fits = len(self.indices) * 3 * image_size * image_size <= CACHE_LIMIT_BYTES
        self._cache = part.read(self.indices, image_size) if fits else None

    @property
    def cached(self) -> bool:
        return self._cache is not None

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, i: int) -> torch.Tensor:
        if self._cache is not None:
            return self._cache[i]
        return self._part.read([self.indices[i]], self.image_size)[0]


class ImageDataset(Dataset):
    """Validation/test items: ``(normalised FloatTensor[3, S, S], label)`` with no randomness."""

    def __init__(
        self, store: ImageStore, targets: list[int], class_names: list[str], normalize: Normalize
    ) -> None:
        self.store = store
        self.targets = list(targets)
        self.class_names = list(class_names)
        self.num_classes = len(class_names)
        self.normalize = normalize

    def __len__(self) -> int:
        return len(self.store)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        index = int(index)
        return self.normalize(self.store[index]), self.targets[index]


class TrainDataset(ImageDataset):
    """Training items keyed by ``(epoch, index)``: augmentation is a pure function of the key.

    A plain ``int`` key returns the un-augmented image (for inspection and evaluation on train).
    """

    def __init__(
        self,
        store: ImageStore,
        targets: list[int],
        class_names: list[str],
        normalize: Normalize,
        *,
        seed: int,
        augment: Augment | None,
    ) -> None:
        super().__init__(store, targets, class_names, normalize)
        self.seed = seed
        self.augment = augment

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, int]:  # type: ignore[override]
        if isinstance(key, (tuple, list)):
            epoch, index = int(key[0]), int(key[1])
            image = self.store[index]
            if self.augment is not None:
                image = self.augment(image, self.seed, epoch, index)
            return self.normalize(image), self.targets[index]
        return super().__getitem__(key)
