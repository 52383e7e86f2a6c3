"""``build_datasets``: config -> source -> persisted split -> train/val/test datasets."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path

from src.config.schema import DataConfig
from src.data.datasets import ImageDataset, ImageStore, TrainDataset
from src.data.sources import HFLIP, STATS, Source, load_source
from src.data.split import SplitInfo, load_or_create_split, save_split
from src.data.transforms import Augment, Normalize, crop_padding
from src.errors import UserError


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


def build_datasets(
    cfg: DataConfig,
    run_dir: Path | None,
    seed: int,
    *,
    write: bool = True,
    small_input_family: str | None = None,
) -> DataBundle:
    """Load ``cfg.name``, reuse or make ``run_dir/split.json`` and return the three datasets.

    With ``run_dir=None`` or ``write=False`` nothing is written (evaluation, benchmarks); an
    existing split.json in ``run_dir`` is still reused so evaluation sees the run's test split.
    ``small_input_family`` is accepted for the pipeline's call signature; the data does not depend
    on the model family (the image size in ``cfg`` already does).
    """
    del small_input_family
    if cfg.image_size < 8:
        raise UserError(f"data.image_size must be at least 8 pixels, got {cfg.image_size}")
    source: Source = load_source(cfg)
    # a new split is saved only once its images have been read: a broken image file must not
    # leave a split.json behind that the corrected data no longer matches
    record, info = load_or_create_split(source, cfg, seed, run_dir, write=False)
    mean, std = STATS[source.name]
    normalize = Normalize(mean, std)

    def part_of(name: str) -> tuple[ImageStore, list[int]]:
        entry = record["splits"][name]
        part = source.parts[entry["part"]]
        store = ImageStore(part, entry["indices"], cfg.image_size)
        return store, [part.targets[i] for i in entry["indices"]]

    augment = Augment(crop_padding(cfg.image_size), HFLIP[source.name]) if cfg.augment else None
    train_store, train_targets = part_of("train")
    train = TrainDataset(
        train_store, train_targets, source.class_names, normalize, seed=seed, augment=augment
    )
    val = ImageDataset(*part_of("val"), source.class_names, normalize)
    test = ImageDataset(*part_of("test"), source.class_names, normalize)
    if write and run_dir is not None and not info.reused:
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
        mean=mean,
        std=std,
    )
