"""CIFAR-10/100 through torchvision itself, from small files written in torchvision's on-disk layout.

The files come from bench/cifar_files.py (torchvision's exact layout). torchvision verifies every
file against the md5 of the official download on each load; the real files cannot exist on this
offline machine, so the tests point those expected checksums at the files they wrote:
torchvision's own integrity check still runs.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

from bench.cifar_files import write_cifar10, write_cifar100
from src.data.build import build_datasets
from src.data.settings import DataConfig
from src.errors import UserError


def _images(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)


def _point_torchvision_at(cls: type, checksums: dict, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in checksums.items():
        monkeypatch.setattr(cls, name, value)


def cifar10_files(root: Path, monkeypatch: pytest.MonkeyPatch, per_batch: int = 20) -> dict[str, np.ndarray]:
    """Small CIFAR-10 files under ``root`` that torchvision accepts (also used by test_data_workers)."""
    rng = np.random.default_rng(0)
    train, test = _images(rng, 5 * per_batch), _images(rng, 30)
    labels = [i % 10 for i in range(per_batch)] * 5
    checksums = write_cifar10(root, train, labels, test, [i % 10 for i in range(30)])
    _point_torchvision_at(torchvision.datasets.CIFAR10, checksums, monkeypatch)
    return {"train": train, "test": test}


def _write_cifar100(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(1)
    checksums = write_cifar100(root, _images(rng, 300), [i % 100 for i in range(300)],
                               _images(rng, 100), [i % 100 for i in range(100)])
    _point_torchvision_at(torchvision.datasets.CIFAR100, checksums, monkeypatch)


def test_cifar10_loads_with_official_test_and_stratified_val(tmp_path: Path, monkeypatch) -> None:
    arrays = cifar10_files(tmp_path / "data", monkeypatch)
    cfg = DataConfig(
        name="cifar10", data_dir=str(tmp_path / "data"), image_size=32, val_fraction=0.2, augment=False
    )
    bundle = build_datasets(cfg, tmp_path / "run", seed=0)
    assert bundle.class_names[0] == "airplane" and bundle.num_classes == 10
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (80, 20, 30)
    assert sorted(bundle.train.store.indices + bundle.val.store.indices) == list(range(100))
    assert bundle.test.store.indices == list(range(30))
    assert sorted(bundle.val.targets) == sorted(list(range(10)) * 2)  # stratified: 2 per class
    # Pixels arrive unchanged and channel-first (CIFAR rows are R plane, G plane, B plane).
    i = bundle.test.store.indices[5]
    image, label = bundle.test[5]
    raw = torch.from_numpy(arrays["test"][i].reshape(3, 32, 32)).float() / 255
    mean, std = torch.tensor(bundle.mean)[:, None, None], torch.tensor(bundle.std)[:, None, None]
    assert label == i % 10 and torch.allclose(image * std + mean, raw, atol=1e-5)
    assert bundle.mean == (0.4914, 0.4822, 0.4465)
    assert (tmp_path / "run" / "split.json").exists()


def test_cifar_resized_and_augmented_with_flips(tmp_path: Path, monkeypatch) -> None:
    cifar10_files(tmp_path, monkeypatch, per_batch=4)
    cfg = DataConfig(name="cifar10", data_dir=str(tmp_path), image_size=16, val_fraction=0.1)
    train = build_datasets(cfg, None, seed=0).train
    assert train[(1, 0)][0].shape == (3, 16, 16) and train.augment.hflip and train.augment.padding == 2


def test_cifar100_uses_fine_labels(tmp_path: Path, monkeypatch) -> None:
    _write_cifar100(tmp_path, monkeypatch)
    cfg = DataConfig(name="cifar100", data_dir=str(tmp_path), image_size=8, val_fraction=1 / 3)
    bundle = build_datasets(cfg, None, seed=0)
    assert bundle.num_classes == 100 and bundle.class_names[99] == "class_99"
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (200, 100, 100)
    assert sorted(bundle.val.targets) == list(range(100))
    assert bundle.std == (0.2673, 0.2564, 0.2762)


def test_missing_cifar_says_where_it_looked_and_what_to_do(tmp_path: Path) -> None:
    cfg = DataConfig(name="cifar10", data_dir=str(tmp_path / "nowhere"))
    with pytest.raises(
        UserError,
        match=r"cifar10 not found under .*nowhere/ \(looked for .*cifar-10-batches-py\)"
        r"; pass --download to fetch it, or --data-dir to point at it",
    ):
        build_datasets(cfg, None, seed=0)


def test_damaged_cifar_file_is_a_user_error(tmp_path: Path, monkeypatch) -> None:
    cifar10_files(tmp_path, monkeypatch, per_batch=4)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").write_bytes(b"truncated")
    with pytest.raises(UserError, match="corrupted.*--download"):
        build_datasets(DataConfig(name="cifar10", data_dir=str(tmp_path)), None, seed=0)
