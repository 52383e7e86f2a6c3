"""Batched image transforms: random crop with padding, flip, normalise, resize to the model's size.

Every operation takes a whole uint8 batch ``[B, C, s, s]`` on whatever device it lives on, so the
same code augments on the GPU and on the CPU (the tests use the CPU). Per-sample randomness comes
from :class:`Draws`: one table per epoch, drawn with a private ``torch.Generator`` seeded with
``derive_seed(seed, "augment", epoch)`` and indexed by sample index. What a training sample looks
like is therefore a pure function of (seed, epoch, index), whatever the batch it lands in (an
out-of-memory re-batching, a resumed run, another worker count), and the global RNG (which the
trainer checkpoints for dropout) is never touched.

Order: crop and flip at the stored size, then normalise (still at the stored size), then resize
the float batch to the model's size. Both normalising and bilinear resizing are linear, so the
order between them changes nothing but rounding: the upsampled image is never rounded to uint8,
only one full-size buffer is made, and CPU and GPU agree to float precision. A dataset stored at
its native size (CIFAR's 32 px) and trained at 224 px is therefore shifted in steps of 224/32 = 7
px, and its zero padding is blended into the image by the bilinear upsampling.
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
class Draws:
    """Per-sample augmentation parameters: crop offsets ``[N, 2]`` (top, left) and flips ``[N]``."""

    offsets: torch.Tensor
    flips: torch.Tensor

    def take(self, indices: torch.Tensor) -> Draws:
        return Draws(self.offsets[indices], self.flips[indices])

    def to(self, device: torch.device) -> Draws:
        return Draws(self.offsets.to(device), self.flips.to(device))


@dataclass(frozen=True)
class Augment:
    """Random crop with zero padding, plus a horizontal flip where it keeps the label's meaning."""

    padding: int
    hflip: bool

    def draws(self, seed: int, epoch: int, num_samples: int) -> Draws:
        """The whole epoch's parameters at once (on the CPU, so every device sees the same draws)."""
        generator = torch.Generator().manual_seed(derive_seed(seed, "augment", epoch))
        offsets = torch.randint(0, 2 * self.padding + 1, (num_samples, 2), generator=generator)
        flips = torch.rand(num_samples, generator=generator) < 0.5
        return Draws(offsets, flips & self.hflip)

    def __call__(self, images: torch.Tensor, draws: Draws) -> torch.Tensor:
        """Crop each image of ``images`` (uint8 ``[B, C, S, S]``) at its own offset from the
        zero-padded batch, mirrored where its flip says so: one gather from a view that holds
        every possible crop of the batch and of its mirror image, no per-sample loop."""
        batch, size = images.shape[0], images.shape[-1]
        padded = torch.nn.functional.pad(images, [self.padding] * 4)
        mirrored = torch.stack([padded, padded.flip(-1)])  # [2, B, C, S + 2p, S + 2p]
        crops = mirrored.unfold(3, size, 1).unfold(4, size, 1)  # [2, B, C, 2p + 1, 2p + 1, S, S], a view
        top, left = draws.offsets[:, 0], draws.offsets[:, 1]
        left_in_mirror = torch.where(draws.flips, 2 * self.padding - left, left)
        rows = torch.arange(batch, device=images.device)
        return crops[draws.flips.long(), rows, :, top, left_in_mirror]  # [B, C, S, S]


@dataclass(frozen=True)
class Normalize:
    """uint8 image(s) -> float in [0, 1] -> standardised with the given channel statistics."""

    mean: tuple[float, float, float]
    std: tuple[float, float, float]

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        scaled = F.to_dtype(images, torch.float32, scale=True)
        return F.normalize(scaled, list(self.mean), list(self.std), inplace=True)


@dataclass(frozen=True)
class ModelInput:
    """Stored uint8 batches -> the model's input: (augment), normalise, resize to ``image_size``."""

    image_size: int
    normalize: Normalize
    augment: Augment | None = None

    def __call__(self, images: torch.Tensor, draws: Draws | None = None) -> torch.Tensor:
        if draws is not None and self.augment is not None:
            images = self.augment(images, draws)
        images = self.normalize(images)  # at the stored size: fewer pixels to convert
        if images.shape[-1] != self.image_size:  # stored below the model's size: upsample per batch
            images = F.resize(images, [self.image_size, self.image_size], antialias=True)
        return images

    def same_view(self, other: ModelInput) -> bool:
        """Whether ``other`` shows the images at this size and normalisation (augmentation aside)."""
        return (self.image_size, self.normalize) == (other.image_size, other.normalize)


@dataclass(frozen=True)
class ViewChange:
    """A batch made for one model's input -> the same images as another model's input expects.

    A distillation stage's teacher sees the very batch its student trains on (the same crop and
    flip), at the teacher's own size and normalisation: the student's normalisation is undone,
    the teacher's applied and the float batch resized (torchvision v2, bilinear, antialiased).
    Normalising and resizing are linear, so this equals making the teacher's view from the stored
    images up to rounding, with one exception: a teacher smaller than a student view that was
    upsampled from the stored images sees that upsampled view downsampled, not the stored
    images resized once. Where the two inputs match it returns the batch itself. The memory
    layout is kept (torch's elementwise ops and resize follow their input's).
    """

    source: ModelInput
    target: ModelInput

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        if self.source.same_view(self.target):
            return images
        if self.source.normalize != self.target.normalize:
            mean, std = self.source.normalize.mean, self.source.normalize.std
            # (x - mean) / std undone by normalize(x, -mean / std, 1 / std) = x * std + mean
            undo_mean = [-m / s for m, s in zip(mean, std, strict=True)]
            images = F.normalize(images, undo_mean, [1 / s for s in std])
            images = F.normalize(images, list(self.target.normalize.mean), list(self.target.normalize.std),
                                 inplace=True)
        size = self.target.image_size
        if images.shape[-1] != size:
            images = F.resize(images, [size, size], antialias=True)
        return images  # in the layout it came in (channels-last stays channels-last)


def resize_square(images: torch.Tensor, size: int) -> torch.Tensor:
    """Resize uint8 ``[..., C, H, W]`` images to ``size`` x ``size`` (bilinear, antialiased).

    Non-square inputs are resized on the shorter side and centre-cropped, so nothing is squashed.
    """
    if tuple(images.shape[-2:]) == (size, size):
        return images
    return F.center_crop(F.resize(images, [size], antialias=True), [size, size])
