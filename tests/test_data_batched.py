"""The batched input path: the images it makes, whatever the batching, the storage or the caller.

The reference for "the per-sample path" is torchvision's own per-image functional ops applied to
one image at a time with the same draws, in the product's order (crop and flip, normalise, resize
the float image). Resizing the uint8 image before normalising (the earlier order) rounds the
upsampled pixels to uint8: it differs by less than one uint8 level. A per-sample path that
resizes first and cropped at the model's size, which differs beyond that only in
resampling near the crop and padding edges (last test here).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

import pytest
import torch
import torchvision.transforms.v2.functional as F
from engine_fixtures import engine_config, fingerprint, tiny_cnn

import src.engine.sampling as sampling
from src.data.build import build_datasets
from src.data.datasets import ImageStore, TrainDataset
from src.data.registry import DATASETS
from src.data.settings import DataConfig
from src.data.sources import ArrayReader, SourcePart
from src.data.transforms import Augment, ModelInput, resize_square
from src.engine.objective import CrossEntropyObjective, StepOutput
from src.engine.trainer import Trainer
from src.errors import UserError

CPU = torch.device("cpu")
CIFAR = DATASETS["cifar10"].stats
ONE_LEVEL = 1 / 255 / min(CIFAR.std)  # one uint8 step after normalisation, in the widest channel


def cifar_like(image_size: int, count: int = 24, seed: int = 3) -> TrainDataset:
    """Random 32 px uint8 images in a resident store, as CIFAR's are, trained at ``image_size``."""
    images = torch.randint(0, 256, (count, 3, 32, 32), generator=torch.Generator().manual_seed(seed),
                           dtype=torch.uint8)
    targets = [i % 10 for i in range(count)]
    store = ImageStore(SourcePart(targets, ArrayReader(images)), range(count), 32, resident=True)
    model_input = ModelInput(image_size, CIFAR, Augment(4, hflip=True))
    return TrainDataset(store, targets, [str(c) for c in range(10)], model_input, seed=seed)


def per_sample(dataset: TrainDataset, key: tuple[int, int], resize_uint8: bool = False) -> torch.Tensor:
    """One image through torchvision's per-image ops, with the dataset's draws for ``key``
    (``resize_uint8``: resized before normalising, rounded to uint8 at the model's size)."""
    epoch, index = key
    augment = dataset.augment
    draws = augment.draws(dataset.seed, epoch, len(dataset))
    (top, left), flip = draws.offsets[index].tolist(), bool(draws.flips[index])
    image = dataset.store.read([index])[0]
    image = F.crop(F.pad(image, [augment.padding]), top, left, 32, 32)
    image = F.horizontal_flip(image) if flip else image
    size = [dataset.model_input.image_size] * 2
    if resize_uint8:
        image = F.resize(image, size, antialias=True)
    image = F.normalize(F.to_dtype(image, torch.float32, scale=True), list(CIFAR.mean), list(CIFAR.std))
    return F.resize(image, size, antialias=True)


@pytest.mark.parametrize("image_size", [32, 224])
def test_batched_images_equal_per_sample_ops_for_the_same_keys(image_size: int) -> None:
    dataset = cifar_like(image_size)
    keys = [(2, i) for i in (5, 0, 17, 3, 23, 11, 8, 9)]
    images, labels = next(dataset.batches([keys], CPU))
    assert images.shape == (8, 3, image_size, image_size)
    assert torch.equal(images, torch.stack([per_sample(dataset, key) for key in keys]))
    assert labels.tolist() == [i % 10 for _, i in keys]
    assert torch.equal(dataset[keys[2]][0], images[2])  # item access is the same code
    rounded = torch.stack([per_sample(dataset, key, resize_uint8=True) for key in keys])
    assert (images - rounded).abs().max() < ONE_LEVEL  # measured: 0.0138 at 224 px, 0 at 32 px


def test_micro_batch_boundaries_never_change_an_image() -> None:
    """An out-of-memory re-plan cuts the same keys into smaller micro-batches: same images."""
    dataset = cifar_like(32, count=40)
    keys = [(3, i) for i in torch.randperm(40, generator=torch.Generator().manual_seed(0)).tolist()]
    whole = torch.cat([images for images, _ in dataset.batches([keys], CPU)])
    for size in (16, 5, 1):
        pieces = [keys[i : i + size] for i in range(0, len(keys), size)]
        assert torch.equal(torch.cat([images for images, _ in dataset.batches(pieces, CPU)]), whole)
    other_epoch = torch.cat([images for images, _ in dataset.batches([[(4, i) for _, i in keys]], CPU)])
    assert not torch.equal(other_epoch, whole)


def test_a_batch_mixing_epochs_is_refused() -> None:
    with pytest.raises(ValueError, match=r"one epoch, got epochs \[1, 2\]"):
        next(cifar_like(32).batches([[(1, 0), (2, 1)]], CPU))


def test_batches_leave_the_global_rng_untouched() -> None:
    dataset = cifar_like(32)
    state = torch.get_rng_state()
    list(dataset.batches([[(1, i) for i in range(12)], [(1, 12)]], CPU))
    assert torch.equal(state, torch.get_rng_state())


@pytest.mark.parametrize("num_workers", [0, 2])
def test_streamed_batches_equal_resident_ones(num_workers: int) -> None:
    cfg = DataConfig(image_size=16, subset=40)
    resident = build_datasets(cfg, None, seed=5)
    streamed = build_datasets(dataclasses.replace(cfg, device_cache_gb=0), None, seed=5)
    assert resident.train.store.resident and not streamed.train.store.resident
    plan = [[(1, i) for i in range(j, min(j + 12, 40))] for j in range(0, 40, 12)]
    for dataset_name in ("train", "val"):
        keys = plan if dataset_name == "train" else [[i for _, i in batch] for batch in plan]
        expected = list(getattr(resident, dataset_name).batches(keys, CPU))
        for _ in range(2):  # the second pass reuses the persistent workers
            got = list(getattr(streamed, dataset_name).batches(keys, CPU, num_workers))
            pairs = zip(got, expected, strict=True)
            assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in pairs)


def test_another_seeds_bundle_shares_the_images_and_draws_its_own_augmentation(tmp_path: Path) -> None:
    cfg = DataConfig(image_size=16, subset=40)
    bundle = build_datasets(cfg, tmp_path, seed=5)  # the run's split.json, made with the run's seed
    other = bundle.with_seed(6)
    assert other.train.store is bundle.train.store and (other.val, other.test) == (bundle.val, bundle.test)
    assert other.train.store.on(CPU).data_ptr() == bundle.train.store.on(CPU).data_ptr()  # one copy
    assert (other.split, other.mean, other.train.targets) == (bundle.split, bundle.mean, bundle.train.targets)
    keys = [[(1, i) for i in range(40)]]
    mine, theirs = next(bundle.train.batches(keys, CPU))[0], next(other.train.batches(keys, CPU))[0]
    assert not torch.equal(mine, theirs)  # the seed reaches the augmentation
    rebuilt = build_datasets(cfg, tmp_path, seed=6, write=False).train  # what each extra seed rebuilt
    assert torch.equal(theirs, next(rebuilt.batches(keys, CPU))[0])


def test_cifar_sized_data_is_stored_native_and_resized_per_batch() -> None:
    bundle = build_datasets(DataConfig(image_size=32, subset=30), None, seed=0)
    assert bundle.train.store.size == 8  # digits are 8 px: stored so, upsampled per batch
    images, _ = next(bundle.train.batches([[(1, 0), (1, 1)]], CPU))
    assert images.shape == (2, 3, 32, 32)
    assert bundle.train.augment.padding == 1  # the crop shifts by whole stored pixels


def test_resizing_before_the_crop_differs_only_near_crop_and_padding_edges() -> None:
    """Resizing CIFAR to 224 px first and cropping there (padding 28, offsets in 7 px steps) against
    the product's crop at 32 px and resize after it. Bilinear resizing commutes with whole
    7 px shifts, so the two agree except within 4 px of the crop's border and of the edge between
    image and zero padding, where the resize now blends in the padding. "Agree" is below one uint8
    level: resizing first rounds the resized image to uint8, the product resizes the normalised float image
    (measured: at most 0.0138 inside, up to 2.7 near the edges)."""
    dataset = cifar_like(224, count=8)
    images = torch.cat([images for images, _ in dataset.batches([[(1, i) for i in range(8)]], CPU)])
    draws = dataset.augment.draws(dataset.seed, 1, 8)
    positions = torch.arange(224)
    for i in range(8):
        (top, left), flip = draws.offsets[i].tolist(), bool(draws.flips[i])
        old = F.crop(F.pad(resize_square(dataset.store.read([i])[0], 224), [28]), 7 * top, 7 * left, 224, 224)
        old = F.normalize(F.to_dtype(F.horizontal_flip(old) if flip else old, torch.float32, scale=True),
                          list(CIFAR.mean), list(CIFAR.std))
        edges = [torch.tensor([0, 224, 7 * (4 - o), 7 * (36 - o)]) for o in (top, left)]
        near = [(positions[:, None] - lines).abs().min(1).values < 4 for lines in edges]
        cols = near[1].flip(0) if flip else near[1]
        interior = ~(near[0][:, None] | cols[None, :])
        assert interior.float().mean() > 0.85
        assert (images[i][:, interior] - old[:, interior]).abs().max() < ONE_LEVEL


class Recording(CrossEntropyObjective):
    """Keeps every training input it sees and runs out of memory above ``limit`` images."""

    def __init__(self, limit: int = 10**9) -> None:
        super().__init__()
        self.limit, self.seen = limit, []

    def training_step(self, model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor) -> StepOutput:
        if images.shape[0] > self.limit:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        self.seen.append(images.clone())
        return super().training_step(model, images, labels)


def test_the_trainer_uses_the_batched_path_and_an_oom_replan_sees_the_same_images(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def no_loader(*args: Any, **kwargs: Any) -> Any:
        raise AssertionError("the product's datasets must not go through a per-sample DataLoader")

    monkeypatch.setattr(sampling, "make_loader", no_loader)
    data = build_datasets(DataConfig(image_size=8, subset=48), None, seed=0)

    def fit(objective: Recording, stage: str, **cfg: Any) -> torch.Tensor:
        trainer = Trainer(tiny_cnn(in_chans=3), objective, data.train, data.val,
                          engine_config(epochs=1, **cfg), tmp_path / stage, device=CPU, seed=0,
                          run_fingerprint=fingerprint())
        trainer.fit()
        return torch.cat(objective.seen)

    replanned = fit(Recording(limit=8), "oom", batch_size=16)
    reference = fit(Recording(), "ref", batch_size=8, accumulation_steps=2)
    assert torch.equal(replanned, reference)


@pytest.mark.gpu
def test_device_batches_match_the_cpu_ones() -> None:
    """On CUDA the whole store lives on the GPU; at the stored size the images are the same bits,
    resized ones agree to float rounding (the normalised float batch is resized on either device,
    never rounded to uint8), far below one uint8 level."""
    cuda = torch.device("cuda", 0)
    for size, tolerance in ((32, 0), (224, 1e-4)):
        dataset = cifar_like(size)
        keys = [[(1, i) for i in range(24)]]
        on_cpu, _ = next(dataset.batches(keys, CPU))
        on_gpu, labels = next(dataset.batches(keys, cuda))
        assert on_gpu.device.type == labels.device.type == "cuda"
        assert (on_gpu.cpu() - on_cpu).abs().max() <= tolerance


def test_resident_images_may_take_at_most_half_the_vram_budget() -> None:
    bundle = build_datasets(DataConfig(image_size=32, subset=200), None, seed=0)  # digits stored at 8 px
    size = sum(getattr(bundle, s).store.nbytes for s in ("train", "val", "test")) / 2**30
    with pytest.raises(UserError, match=r"more than half of the .* GiB VRAM budget; set data.device_cache_gb "
                                        r"below .* to decode them per batch instead"):
        bundle.to(torch.device("cuda", 0), budget_gb=size)  # refused before anything touches CUDA
    assert bundle.to(CPU, budget_gb=size) is bundle  # the budget is a GPU's


@pytest.mark.parametrize("value", [-1.0, float("inf"), float("nan")])
def test_device_cache_must_be_a_finite_size(value: float) -> None:
    with pytest.raises(UserError, match="data.device_cache_gb must be a number of GiB, 0 or more"):
        build_datasets(DataConfig(subset=10, device_cache_gb=value), None, seed=0)
