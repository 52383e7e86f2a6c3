"""CIFAR-10/100 through torchvision itself, from small files written in torchvision's on-disk layout.

The official pickles are Python 2 files whose byte-string keys Python 3 reads back (with
``encoding="latin1"``, as torchvision loads them) as ``str`` keys, so the files here use ``str``
keys. torchvision 0.29 verifies every file against the md5 of the official download on each load,
not only when downloading; the real files cannot exist on this offline machine, so the tests point
those expected checksums at the files they wrote: torchvision's own integrity check still runs.
"""

from __future__ import annotations

import hashlib
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision

from src.config.schema import DataConfig
from src.data.build import build_datasets
from src.errors import UserError


def _dump(path: Path, obj: dict) -> str:
    path.write_bytes(pickle.dumps(obj, protocol=2))
    return hashlib.md5(path.read_bytes()).hexdigest()


def _images(rng: np.random.Generator, n: int) -> np.ndarray:
    return rng.integers(0, 256, size=(n, 3072), dtype=np.uint8)


def write_cifar10(root: Path, monkeypatch: pytest.MonkeyPatch, per_batch: int = 20) -> dict[str, np.ndarray]:
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    cls = torchvision.datasets.CIFAR10
    train_list, train_data = [], []
    for b in range(1, 6):
        data = _images(rng, per_batch)
        labels = [i % 10 for i in range(per_batch)]
        entry = {
            "batch_label": f"training batch {b} of 5",
            "labels": labels,
            "data": data,
            "filenames": [f"img_{b}_{i}.png" for i in range(per_batch)],
        }
        train_list.append([f"data_batch_{b}", _dump(folder / f"data_batch_{b}", entry)])
        train_data.append(data)
    test = _images(rng, 30)
    test_md5 = _dump(
        folder / "test_batch",
        {
            "batch_label": "testing batch 1 of 1",
            "data": test,
            "labels": [i % 10 for i in range(30)],
            "filenames": [],
        },
    )
    names = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
    meta_md5 = _dump(
        folder / "batches.meta", {"label_names": names, "num_cases_per_batch": per_batch, "num_vis": 3072}
    )
    monkeypatch.setattr(cls, "train_list", train_list)
    monkeypatch.setattr(cls, "test_list", [["test_batch", test_md5]])
    monkeypatch.setattr(cls, "meta", {**cls.meta, "md5": meta_md5})
    return {"train": np.vstack(train_data), "test": test}


def _write_cifar100(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    cls = torchvision.datasets.CIFAR100
    md5 = {}
    for name, n in (("train", 300), ("test", 100)):
        fine = [i % 100 for i in range(n)]
        md5[name] = _dump(
            folder / name,
            {
                "filenames": [],
                "batch_label": name,
                "fine_labels": fine,
                "coarse_labels": [f // 5 for f in fine],
                "data": _images(rng, n),
            },
        )
    meta_md5 = _dump(
        folder / "meta",
        {
            "fine_label_names": [f"class_{i:02d}" for i in range(100)],
            "coarse_label_names": [f"super_{i:02d}" for i in range(20)],
        },
    )
    monkeypatch.setattr(cls, "train_list", [["train", md5["train"]]])
    monkeypatch.setattr(cls, "test_list", [["test", md5["test"]]])
    monkeypatch.setattr(cls, "meta", {**cls.meta, "md5": meta_md5})


def test_cifar10_loads_with_official_test_and_stratified_val(tmp_path: Path, monkeypatch) -> None:
    arrays = write_cifar10(tmp_path / "data", monkeypatch)
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
    write_cifar10(tmp_path, monkeypatch, per_batch=4)
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
    write_cifar10(tmp_path, monkeypatch, per_batch=4)
    (tmp_path / "cifar-10-batches-py" / "data_batch_3").write_bytes(b"truncated")
    with pytest.raises(UserError, match="corrupted.*--download"):
        build_datasets(DataConfig(name="cifar10", data_dir=str(tmp_path)), None, seed=0)
