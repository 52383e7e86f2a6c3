"""The raw image sources: scikit-learn digits and torchvision CIFAR-10/100 (image folders:
imagefolder.py; which dataset name loads which: src/data/registry.py).

A source is a set of named parts (``all`` for digits; ``train``/``test`` for CIFAR; ``train`` and
optional ``val``/``test`` for an image folder). Each part knows its labels without decoding any
image, so the split can be made first and only the chosen images are ever decoded and resized.
A part's reader is a plain picklable object (no closures), so datasets built on it can be sent to
DataLoader workers under every start method (``spawn`` on Windows/macOS, ``forkserver`` from
Python 3.14 on Linux).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torchvision

from src.data.settings import DataConfig
from src.data.transforms import resize_square
from src.errors import UserError

_CHUNK = 4096  # images resized per call when filling a cache: bounds the float temporaries


class Reader(Protocol):
    def __call__(self, indices: Sequence[int], size: int) -> torch.Tensor:
        """uint8 ``[len(indices), 3, size, size]`` images."""


@dataclass
class SourcePart:
    """One part of a source: labels up front, images decoded (and resized) on request."""

    targets: list[int]
    read: Reader
    # decodes one image fully, for the check of a folder read per batch (src/data/split.py);
    # None where the images are already in memory (digits, CIFAR)
    decode: Callable[[int], None] | None = None


@dataclass(frozen=True)
class FileEntry:
    """One image file of a folder source: its path relative to the data folder, and its size."""

    path: str
    size: int


def file_entries(root: str | Path, paths: Sequence[str]) -> list[FileEntry]:
    """``paths`` (under ``root``) as entries: one ``stat`` per file, no decoding."""
    return [FileEntry(os.path.relpath(path, root), os.stat(path).st_size) for path in paths]


@dataclass
class Source:
    name: str
    class_names: list[str]
    parts: dict[str, SourcePart]
    native_size: int | None = None  # every image's size when they all share one (None: they vary)
    # each part's files in sample order (image folders); None where the data has no files of its
    # own (digits, CIFAR: the part sizes identify them)
    files: dict[str, list[FileEntry]] | None = None

    @property
    def part_identity(self) -> dict[str, Any]:
        """The dataset, its classes and the size of every part: what identifies digits and CIFAR,
        and what a split.json of format 1 recorded for every source."""
        return {
            "dataset": self.name,
            "class_names": list(self.class_names),
            "part_sizes": {name: len(part.targets) for name, part in sorted(self.parts.items())},
        }

    @property
    def identity(self) -> dict[str, Any]:
        """What a persisted split must match: ``part_identity``, plus the path of every file of
        every part for an image folder. Paths, not sizes, mtimes or contents: a broken file
        replaced under its own name is the same sample, and a copy changes every mtime."""
        if self.files is None:
            return self.part_identity
        paths = {part: [entry.path for entry in entries] for part, entries in sorted(self.files.items())}
        return {**self.part_identity, "files": paths}

    def file_sizes(self) -> dict[str, list[int]] | None:
        """Each part's file sizes in sample order (recorded beside the identity, not in it)."""
        if self.files is None:
            return None
        return {part: [entry.size for entry in entries] for part, entries in sorted(self.files.items())}


@dataclass
class ArrayReader:
    """Reader over an in-memory uint8 ``[N, 3, h, w]`` array, resizing in bounded chunks."""

    images: torch.Tensor

    def __call__(self, indices: Sequence[int], size: int) -> torch.Tensor:
        index = torch.as_tensor(list(indices), dtype=torch.long)
        starts = range(0, len(index), _CHUNK)
        chunks = [resize_square(self.images[index[i : i + _CHUNK]], size) for i in starts]
        return torch.cat(chunks) if chunks else torch.empty(0, 3, size, size, dtype=torch.uint8)


def load_digits_source() -> Source:
    """scikit-learn's 1797 handwritten digits (8x8, values 0..16) as 3-channel uint8 images."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    grey = torch.from_numpy(np.rint(digits.images * (255.0 / 16.0)).astype(np.uint8))
    images = grey.unsqueeze(1).expand(-1, 3, -1, -1).contiguous()
    part = SourcePart(targets=[int(t) for t in digits.target], read=ArrayReader(images))
    return Source("digits", [str(c) for c in range(10)], {"all": part}, native_size=8)


def load_cifar_source(cfg: DataConfig, dataset: type[torchvision.datasets.CIFAR10]) -> Source:
    """CIFAR-10 or -100 (``dataset``: torchvision's class) under ``cfg.data_dir``; a missing or
    damaged copy is a UserError saying what to do."""
    folder = Path(cfg.data_dir) / dataset.base_folder
    if not cfg.download and not folder.is_dir():
        raise UserError(
            f"{cfg.name} not found under {cfg.data_dir}/ (looked for {folder}); "
            "pass --download to fetch it, or --data-dir to point at it"
        )
    parts = {}
    for part_name, train in (("train", True), ("test", False)):
        try:
            data = dataset(root=cfg.data_dir, train=train, download=cfg.download)
        except RuntimeError as exc:  # torchvision: files missing or failing their md5 check
            raise UserError(
                f"{cfg.name} under {folder} is incomplete or corrupted ({exc}); "
                "delete the folder and pass --download to fetch it again"
            ) from exc
        except OSError as exc:  # the download itself failed (offline, disk full)
            raise UserError(f"could not download {cfg.name} into {cfg.data_dir}/: {exc}") from exc
        images = torch.from_numpy(data.data).permute(0, 3, 1, 2)  # HWC -> CHW, a view
        parts[part_name] = SourcePart(targets=[int(t) for t in data.targets], read=ArrayReader(images))
    return Source(cfg.name, list(data.classes), parts, native_size=32)
