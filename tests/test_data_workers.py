"""DataLoader workers under ``spawn`` and ``forkserver``, the only start methods on Windows and
macOS (and Linux's default from Python 3.14): everything sent to a worker must pickle.

Each kind of dataset (digits, CIFAR files in torchvision's on-disk format, ImageFolder PNGs) is
loaded by two worker processes through the product's own stream (the path data too big for the
device takes) under the platform default start method set to ``spawn``, and must give exactly the
batches the in-process path gives; the dataset objects themselves also go through a plain
DataLoader with ``multiprocessing_context="spawn"``, and the stream's workers persist across
epochs under ``forkserver``.
"""
from __future__ import annotations

import dataclasses
import multiprocessing
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from test_data_cifar import cifar10_files
from test_data_imagefolder import write_class_folders
from torch.utils.data import DataLoader

from src.data.build import build_datasets
from src.data.settings import DataConfig

CPU = torch.device("cpu")
# every test starts fresh interpreters (about 3 s each): make test runs them, the pre-commit check
# (validate_project.py, -m "not slow") does not
pytestmark = pytest.mark.slow


@pytest.fixture
def default_start_method(request: pytest.FixtureRequest) -> Iterator[str]:
    """Make ``request.param`` the platform default, as it is on Windows/macOS, then put it back."""
    saved = multiprocessing.get_start_method(allow_none=True)
    multiprocessing.set_start_method(request.param, force=True)
    yield request.param
    multiprocessing.set_start_method(saved, force=True)


def _config(kind: str, root: Path, monkeypatch: pytest.MonkeyPatch) -> DataConfig:
    if kind == "cifar10":
        cifar10_files(root, monkeypatch, per_batch=6)
        return DataConfig(name="cifar10", data_dir=str(root), image_size=32, val_fraction=0.2)
    if kind == "imagefolder":
        write_class_folders(root, "train", 8)
        return DataConfig(name="imagefolder", data_dir=str(root), image_size=12, val_fraction=0.25,
                          test_fraction=0.25)
    return DataConfig(image_size=8, subset=24)


def _start_methods(dataset) -> list[str]:
    """How the stream's worker processes were started (multiprocessing's popen_<method> module)."""
    workers = dataset.feed(CPU, 2).loader._iterator._workers
    return [type(w._popen).__module__.removeprefix("multiprocessing.popen_").split("_")[0] for w in workers]


def _batches(n: int, size: int) -> list[list[tuple[int, int]]]:
    keys = [(2, i) for i in range(n)]
    return [keys[i : i + size] for i in range(0, n, size)]


@pytest.mark.parametrize("default_start_method", ["spawn"], indirect=True)
@pytest.mark.parametrize("kind", ["digits", "cifar10", "imagefolder"])
def test_two_spawned_workers_load_every_kind_of_dataset(kind: str, default_start_method: str, tmp_path: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = _config(kind, tmp_path, monkeypatch)
    in_process = build_datasets(cfg, None, seed=1).train
    streamed = build_datasets(dataclasses.replace(cfg, device_cache_gb=0), None, seed=1).train
    plan = _batches(len(streamed), 5)
    expected = list(in_process.batches(plan, CPU))
    got = list(streamed.batches(plan, CPU, num_workers=2))  # the product's stream, platform default
    assert _start_methods(streamed) == ["spawn", "spawn"]
    pairs = zip(got, expected, strict=True)
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in pairs)


def test_the_dataset_object_itself_pickles_into_spawned_workers(tmp_path: Path, monkeypatch) -> None:
    """Item by item, as anyone's plain DataLoader would use it (one kind: every kind's reader
    already went through a spawned stream above; this adds the dataset objects around them)."""
    train = build_datasets(_config("cifar10", tmp_path, monkeypatch), None, seed=1).train
    list(train.batches(_batches(8, 4), CPU))  # a feed exists now: it must not travel with the dataset
    keys = [key for batch in _batches(len(train), 5) for key in batch]
    items = DataLoader(train, batch_size=5, sampler=keys, num_workers=2, multiprocessing_context="spawn")
    expected = torch.cat([images for images, _ in train.batches(_batches(len(train), 5), CPU)])
    assert torch.equal(torch.cat([images for images, _ in items]), expected)


@pytest.mark.parametrize("default_start_method", ["forkserver"], indirect=True)
def test_forkserver_workers_serve_every_epoch_without_restarting(default_start_method: str) -> None:
    cfg = DataConfig(image_size=8, subset=24)
    resident = build_datasets(cfg, None, seed=2).train
    streamed = build_datasets(dataclasses.replace(cfg, device_cache_gb=0), None, seed=2).train
    first = list(streamed.batches(_batches(24, 8), CPU, num_workers=2))
    workers = list(streamed.feed(CPU, 2).loader._iterator._workers)
    assert _start_methods(streamed) == ["forkserver", "forkserver"]
    epoch3 = [[(3, i) for _, i in batch] for batch in _batches(24, 8)]
    again = list(streamed.batches(epoch3, CPU, num_workers=2))
    assert streamed.feed(CPU, 2).loader._iterator._workers == workers  # the same processes: persistent
    for got, plan in ((first, _batches(24, 8)), (again, epoch3)):
        expected = list(resident.batches(plan, CPU))
        assert all(torch.equal(a[0], b[0]) for a, b in zip(got, expected, strict=True))
