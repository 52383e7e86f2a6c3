"""Image folders through torchvision's ImageFolder: carved or given val/test, class checks, pixels."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
import torch
from PIL import Image

import src.data.datasets as datasets_module
from src.config.schema import DataConfig
from src.data import build_datasets
from src.errors import UserError

COLOURS = {"cat": (200, 30, 30), "dog": (30, 200, 30), "fox": (30, 30, 200)}


def _write(root: Path, part: str, per_class: int, classes=tuple(COLOURS)) -> None:
    for name in classes:
        folder = root / part / name
        folder.mkdir(parents=True)
        for i in range(per_class):
            Image.new("RGB", (14, 10), COLOURS[name]).save(folder / f"{i}.png")  # not square


def _denormalise(image: torch.Tensor, bundle) -> torch.Tensor:
    return image * torch.tensor(bundle.std)[:, None, None] + torch.tensor(bundle.mean)[:, None, None]


def test_train_only_carves_stratified_val_and_test(tmp_path: Path) -> None:
    _write(tmp_path, "train", 10)
    cfg = DataConfig(
        name="imagefolder", data_dir=str(tmp_path), image_size=8, val_fraction=0.2, test_fraction=0.2
    )
    bundle = build_datasets(cfg, tmp_path / "run", seed=0)
    assert bundle.class_names == ["cat", "dog", "fox"]
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (18, 6, 6)
    assert Counter(bundle.val.targets) == Counter(bundle.test.targets) == {0: 2, 1: 2, 2: 2}
    parts = [set(getattr(bundle, n).store.indices) for n in ("train", "val", "test")]
    assert set.union(*parts) == set(range(30)) and sum(map(len, parts)) == 30
    image, label = bundle.test[0]
    assert image.shape == (3, 8, 8)
    colour = torch.tensor(COLOURS[bundle.class_names[label]], dtype=torch.float32)[:, None, None] / 255
    assert torch.allclose(_denormalise(image, bundle), colour.expand(3, 8, 8), atol=1 / 255 + 1e-6)


def test_given_val_and_test_folders_are_used_whole(tmp_path: Path, monkeypatch) -> None:
    _write(tmp_path, "train", 4)
    _write(tmp_path, "val", 2)
    _write(tmp_path, "test", 3)
    cfg = DataConfig(name="imagefolder", data_dir=str(tmp_path), image_size=12, augment=True)
    cached = build_datasets(cfg, None, seed=0)
    assert (len(cached.train), len(cached.val), len(cached.test)) == (12, 6, 9)
    assert cached.train.store.cached
    monkeypatch.setattr(datasets_module, "CACHE_LIMIT_BYTES", 0)  # large data: decoded per item
    lazy = build_datasets(cfg, None, seed=0)
    assert not lazy.train.store.cached
    assert torch.equal(lazy.train[(2, 5)][0], cached.train[(2, 5)][0])
    assert torch.equal(lazy.test[8][0], cached.test[8][0])


def test_only_test_folder_given_carves_val_from_train(tmp_path: Path) -> None:
    _write(tmp_path, "train", 10)
    _write(tmp_path, "test", 1)
    cfg = DataConfig(name="imagefolder", data_dir=str(tmp_path), image_size=8, val_fraction=0.2)
    bundle = build_datasets(cfg, None, seed=0)
    assert (len(bundle.train), len(bundle.val), len(bundle.test)) == (24, 6, 3)


def test_class_mismatch_between_folders_is_a_user_error(tmp_path: Path) -> None:
    _write(tmp_path, "train", 2)
    _write(tmp_path, "val", 2, classes=("cat", "dog"))
    with pytest.raises(UserError, match=r"classes of .*val \(cat, dog\) differ"):
        build_datasets(DataConfig(name="imagefolder", data_dir=str(tmp_path)), None, seed=0)


def test_missing_train_folder_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(UserError, match=r"no train/ folder under .*looked for .*train"):
        build_datasets(DataConfig(name="imagefolder", data_dir=str(tmp_path)), None, seed=0)
