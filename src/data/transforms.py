"""Per-sample augmentation and normalisation with torchvision's functional transforms.

Augmentation draws come from a private ``torch.Generator`` seeded with
``derive_seed(seed, "augment", epoch, index)``: what a training sample looks like is a pure
function of (seed, epoch, index), whatever the worker, the rank or a resume, and the global RNG
(which the trainer checkpoints for the model's dropout) is never touched. The random parameters
are drawn explicitly and applied with ``torchvision.transforms.v2.functional``, which is cheaper
than forking the global RNG around the class-based transforms for every sample.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torchvision.transforms.v2.functional as F

from src.utils.reproducibility import derive_seed


def crop_padding(image_size: int) -> int:
    """Padding of the random crop: 4 px at 32 px (the CIFAR recipe), scaled, at least 1."""
    return max(1, round(image_size / 8))


@dataclass(frozen=True)
class Augment:
    """Random crop with zero padding, plus a horizontal flip where it keeps the label's meaning."""

    padding: int
    hflip: bool

    def __call__(self, image: torch.Tensor, seed: int, epoch: int, index: int) -> torch.Tensor:
        """Augment a uint8 ``[C, S, S]`` image with draws fixed by (seed, epoch, index)."""
        gen = torch.Generator().manual_seed(derive_seed(seed, "augment", epoch, index))
        top, left = torch.randint(0, 2 * self.padding + 1, (2,), generator=gen).tolist()
        flip = self.hflip and bool(torch.rand((), generator=gen) < 0.5)
        size = image.shape[-2:]
        image = F.crop(F.pad(image, [self.padding]), top, left, size[0], size[1])
        return F.horizontal_flip(image) if flip else image


@dataclass(frozen=True)
class Normalize:
    """uint8 image -> float in [0, 1] -> standardised with the dataset's channel statistics."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def __call__(self, image: torch.Tensor) -> torch.Tensor:
        return F.normalize(F.to_dtype(image, torch.float32, scale=True), list(self.mean), list(self.std))


def resize_square(images: torch.Tensor, size: int) -> torch.Tensor:
    """Resize uint8 ``[..., C, H, W]`` images to ``size`` x ``size`` (bilinear, antialiased).

    Non-square inputs are resized on the shorter side and centre-cropped, so nothing is squashed.
    """
    if tuple(images.shape[-2:]) == (size, size):
        return images
    return F.center_crop(F.resize(images, [size], antialias=True), [size, size])
