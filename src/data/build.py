"""``build_datasets``: config -> source -> persisted split -> train/val/test datasets."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from src.data.coverage import missing_class_notes
from src.data.datasets import ImageDataset, ImageStore, TrainDataset
from src.data.registry import DATASETS
from src.data.settings import DataConfig, validate_data
from src.data.split import SplitInfo, check_decodable, load_or_create_split, save_split
from src.data.transforms import Augment, ModelInput, Normalize, crop_padding
from src.errors import UserError

GIB = 1 << 30
DATA_LOGGER = "kd_pipeline.data"  # the loaders' and the split's warnings


@dataclass
class DataBundle:
    """The three datasets of a run and the facts about them the pipeline records."""

    train: TrainDataset
    val: ImageDataset
    test: ImageDataset
    num_classes: int
    class_names: list[str]
    split: SplitInfo
    in_channels: int
    image_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    warnings: list[str] = dataclasses.field(default_factory=list)  # what limits the scores (coverage.py)

    def with_seed(self, seed: int) -> DataBundle:
        """This bundle for another seed's chain: the same split and images (one resident copy, on
        the host and on the device), only the training set's seed (its augmentation) differs."""
        return dataclasses.replace(self, train=self.train.with_seed(seed))

    def view(self, model_input: ModelInput) -> DataBundle:
        """These images as one model sees them (``model_input``'s size and normalisation; training
        keeps its augmentation): the same split, stores and feeds, like ``with_seed``. Itself when
        the model sees them as this bundle already does."""
        if model_input.same_view(self.val.model_input):
            return self
        return dataclasses.replace(
            self, train=self.train.with_input(model_input), val=self.val.with_input(model_input),
            test=self.test.with_input(model_input), image_size=model_input.image_size,
            mean=model_input.normalize.mean, std=model_input.normalize.std)

    def to(self, device: torch.device, budget_gb: float | None = None) -> DataBundle:
        """Copy the resident datasets' uint8 images to ``device`` now (they stay there), so the
        memory planner measures a stage with them in place. On CUDA they may take at most half of
        the VRAM budget: the rest is the model's."""
        resident = [d for d in (self.train, self.val, self.test) if d.store.resident]
        size = sum(d.store.nbytes for d in resident) / GIB
        if device.type == "cuda" and budget_gb is not None and size > budget_gb / 2:
            raise UserError(f"the images take {size:.2f} GiB, more than half of the {budget_gb:g} GiB VRAM "
                            f"budget; set data.device_cache_gb below {size:.2f} to decode them per batch "
                            "instead (--num-workers processes), or raise --vram-budget")
        for dataset in resident:
            dataset.store.on(device)
        return self


@contextlib.contextmanager
def _held_warnings() -> Iterator[list[str]]:
    """The data logger's warnings while active, held instead of printed (its other records pass):
    the data is read before the run directory (and its pipeline.log) may be written, so the
    pipeline logs them later from ``DataBundle.warnings``, to stderr and pipeline.log alike."""
    held: list[str] = []

    def hold(record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        held.append(record.getMessage())
        return False

    logger = logging.getLogger(DATA_LOGGER)
    logger.addFilter(hold)
    try:
        yield held
    finally:
        logger.removeFilter(hold)


def build_datasets(cfg: DataConfig, run_dir: Path | None, seed: int, *, write: bool = True,
                   normalize: Normalize | None = None) -> DataBundle:
    """Load ``cfg.name``, reuse or make ``run_dir/split.json`` and return the three datasets.

    With ``run_dir=None`` or ``write=False`` nothing is written (evaluation, benchmarks); an
    existing split.json in ``run_dir`` is still reused so evaluation sees the run's test split.
    ``normalize`` standardises the model's input (the run's choice, src/rundirs/inputs.py); without
    it, the dataset's own statistics. Images are stored at their native size when they share one and it
    is not above ``cfg.image_size`` (CIFAR at 224 px: stored at 32, resized per batch), else at
    ``cfg.image_size``; all three splits are decoded into memory (and later kept on the training
    device) when together they take at most ``cfg.device_cache_gb``, else read per batch.
    """
    validate_data(cfg)  # the config loader's rules: a DataConfig built in Python gets them too
    dataset = DATASETS.for_key("data.name", cfg.name)
    with _held_warnings() as early:  # e.g. skipped GIFs: logged by the caller once its log file exists
        source = dataset.load(cfg)
        # a new split is saved only once its images have been read: a broken image file must not
        # leave a split.json behind that the corrected data no longer matches
        record, info = load_or_create_split(source, cfg, seed, run_dir, write=False)
    normalize = normalize or dataset.stats
    size = min(source.native_size or cfg.image_size, cfg.image_size)
    total = sum(len(entry["indices"]) for entry in record["splits"].values()) * 3 * size * size
    resident = total <= cfg.device_cache_gb * GIB

    def part_of(name: str) -> tuple[ImageStore, list[int]]:
        entry = record["splits"][name]
        part = source.parts[entry["part"]]
        store = ImageStore(part, entry["indices"], size, resident=resident)
        return store, [part.targets[i] for i in entry["indices"]]

    augment = Augment(crop_padding(size), dataset.hflip) if cfg.augment else None
    plain = ModelInput(cfg.image_size, normalize)
    train = TrainDataset(*part_of("train"), source.class_names, dataclasses.replace(plain, augment=augment),
                         seed=seed)
    val = ImageDataset(*part_of("val"), source.class_names, plain)
    test = ImageDataset(*part_of("test"), source.class_names, plain)
    counts = Counter(t for part in source.parts.values() for t in part.targets)
    scored = {"val": val.targets, "test": test.targets}
    warnings = early + missing_class_notes(scored, source.class_names, counts)
    if write and run_dir is not None and not info.reused:
        if not resident:  # read per batch: decode each image once now, not a broken one mid-run
            check_decodable(source, record)
        info = dataclasses.replace(info, path=save_split(record, run_dir))
    return DataBundle(
        train=train,
        val=val,
        test=test,
        num_classes=len(source.class_names),
        class_names=list(source.class_names),
        split=info,
        in_channels=3,
        image_size=cfg.image_size,
        mean=normalize.mean,
        std=normalize.std,
        warnings=warnings,
    )
