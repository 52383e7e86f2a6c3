"""CIFAR-10/100 files in torchvision's exact on-disk layout, written from any uint8 images.

For the tests and for bench/gpu_check.py: real torchvision loading, no download. The official
pickles are Python 2 files whose byte-string keys Python 3 reads back (with
``encoding="latin1"``, as torchvision loads them) as ``str`` keys, so the files here use ``str``
keys. torchvision verifies every file against the md5 of the official download on each load,
not only when downloading; files written here cannot match, so each writer returns the class
attributes (``train_list``, ``test_list``, ``meta``) that point torchvision's own check at the
files it wrote. Tests set them with monkeypatch; gpu_check sets them in its subprocesses.
"""
from __future__ import annotations

import hashlib
import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

CIFAR10_CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def _dump(path: Path, obj: dict[str, Any]) -> str:
    path.write_bytes(pickle.dumps(obj, protocol=2))
    return hashlib.md5(path.read_bytes()).hexdigest()


def _rows(images: np.ndarray) -> np.ndarray:
    """[N, 3072] uint8 rows (R plane, G plane, B plane), from rows or [N, 3, 32, 32] images."""
    images = np.asarray(images, dtype=np.uint8)
    if images.ndim == 4:
        images = images.reshape(len(images), -1)
    if images.ndim != 2 or images.shape[1] != 3072:
        raise ValueError(f"CIFAR images are 3x32x32 uint8, got shape {images.shape}")
    return images


def write_cifar10(root: Path, train: np.ndarray, train_labels: Sequence[int], test: np.ndarray,
                  test_labels: Sequence[int], class_names: Sequence[str] = CIFAR10_CLASSES) -> dict[str, Any]:
    """``root/cifar-10-batches-py``: the train images in 5 batches, the test batch, batches.meta.
    Returns torchvision.datasets.CIFAR10's checksum attributes for these files."""
    folder = Path(root) / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    train, test = _rows(train), _rows(test)
    bounds = np.linspace(0, len(train), 6).astype(int)
    train_list = []
    for b in range(5):
        part = slice(bounds[b], bounds[b + 1])
        entry = {"batch_label": f"training batch {b + 1} of 5", "data": train[part],
                 "labels": [int(x) for x in train_labels[part]],
                 "filenames": [f"img_{b}_{i}.png" for i in range(part.stop - part.start)]}
        train_list.append([f"data_batch_{b + 1}", _dump(folder / f"data_batch_{b + 1}", entry)])
    test_md5 = _dump(folder / "test_batch", {"batch_label": "testing batch 1 of 1", "data": test,
                                             "labels": [int(x) for x in test_labels], "filenames": []})
    meta_md5 = _dump(folder / "batches.meta", {"label_names": list(class_names),
                                               "num_cases_per_batch": int(bounds[1]), "num_vis": 3072})
    return {"train_list": train_list, "test_list": [["test_batch", test_md5]],
            "meta": {"filename": "batches.meta", "key": "label_names", "md5": meta_md5}}


def write_cifar100(root: Path, train: np.ndarray, train_fine: Sequence[int], test: np.ndarray,
                   test_fine: Sequence[int]) -> dict[str, Any]:
    """``root/cifar-100-python``: train, test (fine and coarse labels) and meta. Returns
    torchvision.datasets.CIFAR100's checksum attributes for these files."""
    folder = Path(root) / "cifar-100-python"
    folder.mkdir(parents=True, exist_ok=True)
    md5 = {}
    for name, images, fine in (("train", train, train_fine), ("test", test, test_fine)):
        fine = [int(x) for x in fine]
        md5[name] = _dump(folder / name, {"filenames": [], "batch_label": name, "fine_labels": fine,
                                          "coarse_labels": [f // 5 for f in fine], "data": _rows(images)})
    meta_md5 = _dump(folder / "meta", {"fine_label_names": [f"class_{i:02d}" for i in range(100)],
                                       "coarse_label_names": [f"super_{i:02d}" for i in range(20)]})
    return {"train_list": [["train", md5["train"]]], "test_list": [["test", md5["test"]]],
            "meta": {"filename": "meta", "key": "fine_label_names", "md5": meta_md5}}
