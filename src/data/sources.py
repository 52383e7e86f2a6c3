"""The raw image sources: scikit-learn digits, torchvision CIFAR-10/100, torchvision ImageFolder.

A source is a set of named parts (``all`` for digits; ``train``/``test`` for CIFAR; ``train`` and
optional ``val``/``test`` for an image folder). Each part knows its labels without decoding any
image, so the split can be made first and only the chosen images are ever decoded and resized.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torchvision
import torchvision.transforms.v2.functional as F

from src.config.schema import DataConfig
from src.data.transforms import resize_square
from src.errors import UserError

# Channel statistics. CIFAR: the published per-channel values of the official train sets.
# Digits: mean/std of all 1797 scikit-learn digits scaled to [0, 1] (grey, so equal per channel);
# fixed constants rather than per-split values, so the numbers never depend on the seed.
# Image folders: ImageNet's statistics, the convention of the pretrained timm weights.
STATS: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "digits": ((0.3053, 0.3053, 0.3053), (0.3760, 0.3760, 0.3760)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "imagefolder": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}

# Flipping a digit changes what it means; natural photos survive it.
HFLIP = {"digits": False, "cifar10": True, "cifar100": True, "imagefolder": True}

_CHUNK = 4096  # images resized per call when filling a cache: bounds the float temporaries


@dataclass
class SourcePart:
    """One part of a source: labels up front, images decoded (and resized) on request."""

    targets: list[int]
    read: Callable[[Sequence[int], int], torch.Tensor]  # (indices, size) -> uint8 [n, 3, size, size]


@dataclass
class Source:
    name: str
    class_names: list[str]
    parts: dict[str, SourcePart]

    @property
    def identity(self) -> dict[str, Any]:
        """What a persisted split must match: the dataset, its classes and the size of every part."""
        return {
            "dataset": self.name,
            "class_names": list(self.class_names),
            "part_sizes": {name: len(part.targets) for name, part in sorted(self.parts.items())},
        }


def _array_reader(images: torch.Tensor) -> Callable[[Sequence[int], int], torch.Tensor]:
    """Reader over an in-memory uint8 ``[N, 3, h, w]`` array, resizing in bounded chunks."""

    def read(indices: Sequence[int], size: int) -> torch.Tensor:
        index = torch.as_tensor(list(indices), dtype=torch.long)
        chunks = [resize_square(images[index[i : i + _CHUNK]], size) for i in range(0, len(index), _CHUNK)]
        return torch.cat(chunks) if chunks else torch.empty(0, 3, size, size, dtype=torch.uint8)

    return read


def load_digits_source() -> Source:
    """scikit-learn's 1797 handwritten digits (8x8, values 0..16) as 3-channel uint8 images."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    grey = torch.from_numpy(np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8))
    images = grey.unsqueeze(1).expand(-1, 3, -1, -1)
    part = SourcePart(targets=[int(t) for t in digits.target], read=_array_reader(images))
    return Source("digits", [str(c) for c in range(10)], {"all": part})


def load_cifar_source(cfg: DataConfig) -> Source:
    """CIFAR-10/100 through torchvision; a missing or damaged copy is a UserError saying what to do."""
    cls = torchvision.datasets.CIFAR10 if cfg.name == "cifar10" else torchvision.datasets.CIFAR100
    folder = Path(cfg.data_dir) / cls.base_folder
    if not cfg.download and not folder.is_dir():
        raise UserError(
            f"{cfg.name} not found under {cfg.data_dir}/ (looked for {folder}); "
            "pass --download to fetch it, or --data-dir to point at it"
        )
    parts = {}
    for part_name, train in (("train", True), ("test", False)):
        try:
            data = cls(root=cfg.data_dir, train=train, download=cfg.download)
        except RuntimeError as exc:  # torchvision: files missing or failing their md5 check
            raise UserError(
                f"{cfg.name} under {folder} is incomplete or corrupted ({exc}); "
                "delete the folder and pass --download to fetch it again"
            ) from exc
        except OSError as exc:  # the download itself failed (offline, disk full)
            raise UserError(f"could not download {cfg.name} into {cfg.data_dir}/: {exc}") from exc
        images = torch.from_numpy(data.data).permute(0, 3, 1, 2)  # HWC -> CHW, a view
        parts[part_name] = SourcePart(targets=[int(t) for t in data.targets], read=_array_reader(images))
    return Source(cfg.name, list(data.classes), parts)


def _folder_reader(folder: torchvision.datasets.ImageFolder) -> Callable[[Sequence[int], int], torch.Tensor]:
    def load(path: str) -> torch.Tensor:
        try:
            return F.pil_to_tensor(folder.loader(path))
        except OSError as exc:  # PIL's UnidentifiedImageError, a truncated or unreadable file
            raise UserError(f"imagefolder: cannot read image {path} ({type(exc).__name__}); "
                            "remove or replace that file") from None

    def read(indices: Sequence[int], size: int) -> torch.Tensor:
        images = [resize_square(load(folder.samples[i][0]), size) for i in indices]
        return torch.stack(images) if images else torch.empty(0, 3, size, size, dtype=torch.uint8)

    return read


def load_imagefolder_source(cfg: DataConfig) -> Source:
    """``train/`` (required) and optional ``val/``, ``test/`` class folders under ``cfg.data_dir``."""
    root = Path(cfg.data_dir)
    if not (root / "train").is_dir():
        raise UserError(
            f"imagefolder: no train/ folder under {root} (looked for {root / 'train'}); "
            "expected <data-dir>/train/<class>/<image> (val/ and test/ optional)"
        )
    folders: dict[str, torchvision.datasets.ImageFolder] = {}
    for part_name in ("train", "val", "test"):
        if (root / part_name).is_dir():
            try:
                folders[part_name] = torchvision.datasets.ImageFolder(str(root / part_name))
            except (FileNotFoundError, OSError) as exc:
                raise UserError(f"imagefolder: cannot read {root / part_name}: {exc}") from exc
    classes = folders["train"].classes
    for part_name, folder in folders.items():
        if folder.classes != classes:
            raise UserError(
                f"imagefolder: the classes of {root / part_name} ({', '.join(folder.classes)}) "
                f"differ from those of {root / 'train'} ({', '.join(classes)})"
            )
    parts = {
        name: SourcePart(targets=list(folder.targets), read=_folder_reader(folder))
        for name, folder in folders.items()
    }
    return Source("imagefolder", list(classes), parts)


def load_source(cfg: DataConfig) -> Source:
    if cfg.name == "digits":
        return load_digits_source()
    if cfg.name in ("cifar10", "cifar100"):
        return load_cifar_source(cfg)
    if cfg.name == "imagefolder":
        return load_imagefolder_source(cfg)
    raise UserError(f"unknown dataset {cfg.name!r}; choose digits, cifar10, cifar100 or imagefolder")
