"""The ``data:`` section: which images, how they are split and how they are shown to the model,
and the rules its values must follow (checked by the config loader and by ``build_datasets``)."""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional

from src.errors import UserError

MIN_SUBSET = 2  # samples per split: a one-sample training batch breaks batch norm


@dataclass
class DataConfig:
    """Which images, how they are split and how they are shown to the model."""

    name: str = "digits"  # a registered dataset (src/data/registry.py); the config loader checks it
    data_dir: str = "data"
    download: bool = False
    image_size: int = 16
    val_fraction: float = 0.15  # of the data (digits) or of the official train split (cifar, imagefolder)
    test_fraction: float = 0.15  # digits, and imagefolder without test/: carved from train
    subset: Optional[int] = None  # at most N samples per split (MIN_SUBSET or more), stratified
    augment: bool = True  # random crop with padding (+ horizontal flip where it makes sense)
    device_cache_gb: float = 1.0  # uint8 images up to this size live on the training device; larger: workers


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise UserError(message)


def validate_data(d: DataConfig) -> None:
    """The data rules (also checked by ``src.data.build.build_datasets`` for a DataConfig built in Python)."""
    _check(d.image_size >= 8, f"config key 'data.image_size': must be at least 8, got {d.image_size}")
    _check(0 <= d.device_cache_gb < math.inf,  # also refuses NaN
           f"data.device_cache_gb must be a number of GiB, 0 or more "
           f"(0 decodes every batch in --num-workers processes), got {d.device_cache_gb}")
    for key, value in (("data.val_fraction", d.val_fraction), ("data.test_fraction", d.test_fraction)):
        _check(0.0 < value < 1.0, f"config key '{key}': must be between 0 and 1 (exclusive), got {value}")
    _check(d.val_fraction + d.test_fraction < 1.0,
           "config keys 'data.val_fraction' + 'data.test_fraction' must leave data to train on (sum < 1)")
    _check(d.subset is None or d.subset >= MIN_SUBSET,
           f"config key 'data.subset': must be at least {MIN_SUBSET} samples per split, got {d.subset}")
