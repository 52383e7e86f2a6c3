"""The datasets the product trains on, one registration each: the only list of them.

A registration (``DatasetSpec``) holds everything the rest of the product needs for a dataset:
its loader (``DataConfig -> Source``), whether a horizontal flip keeps a label's meaning (the
augmentation), its channel statistics (the input normalisation of a run without pretrained
weights) and the preset config a run on it starts from (``configs/<config>.yaml``).
``data.name`` is checked against ``DATASETS``; ``--dataset``'s choices, the default config,
``build_datasets`` and the run's normalisation read it, so a new dataset is one more
``DATASETS.register`` call (its loader may live beside it or in its own module).
"""
from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import torchvision

from src.data.imagefolder import load_imagefolder_source
from src.data.settings import DataConfig
from src.data.sources import Source, load_cifar_source, load_digits_source
from src.data.transforms import Normalize
from src.utils.registry import Registry


@dataclass(frozen=True)
class DatasetSpec:
    """One dataset (module doc). ``stats`` is required: a dataset without channel statistics
    cannot be registered, so no run can reach a dataset it cannot normalise."""

    load: Callable[[DataConfig], Source]
    hflip: bool
    stats: Normalize
    config: str

    def __post_init__(self) -> None:
        mean, std = self.stats.mean, self.stats.std
        if len(mean) != 3 or len(std) != 3 or min(std) <= 0:
            raise ValueError(f"dataset statistics need 3 channel means and 3 positive stds, got {self.stats}")


DATASETS: Registry[DatasetSpec] = Registry("dataset")

# Flipping a digit changes what it means; natural photos survive it.
# Statistics. CIFAR: the published per-channel values of the official train sets. Digits: mean/std
# of all 1797 scikit-learn digits scaled to [0, 1] (grey, so equal per channel); fixed constants
# rather than per-split values, so the numbers never depend on the seed. Image folders: ImageNet's
# statistics, the convention of most photos and of timm's ResNets; they start from the CIFAR-10
# config (photos, GPU-sized), having no config of their own.
DATASETS.register("digits", DatasetSpec(
    load=lambda cfg: load_digits_source(), hflip=False,
    stats=Normalize((0.3053, 0.3053, 0.3053), (0.3760, 0.3760, 0.3760)), config="digits"))
DATASETS.register("cifar10", DatasetSpec(
    load=partial(load_cifar_source, dataset=torchvision.datasets.CIFAR10), hflip=True,
    stats=Normalize((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)), config="cifar10"))
DATASETS.register("cifar100", DatasetSpec(
    load=partial(load_cifar_source, dataset=torchvision.datasets.CIFAR100), hflip=True,
    stats=Normalize((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)), config="cifar100"))
DATASETS.register("imagefolder", DatasetSpec(
    load=load_imagefolder_source, hflip=True,
    stats=Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)), config="cifar10"))
