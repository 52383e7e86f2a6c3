#!/usr/bin/env python3
"""Data path speed: a per-sample Dataset path against the batched device path, and against the
student's training rate, side by side in one process on the run's device.

Two input paths make the same kind of training batch (random crop with padding, flip, resize to
the model's size, normalise) from CIFAR-shaped uint8 images (synthetic: nothing downloads):

  * per-sample: a ``Dataset.__getitem__`` that pads, crops and flips one image, normalises it and
    (at 224 px, where CIFAR overflows a 1 GiB cache) resizes every item from 32 px, collated by a
    DataLoader with ``num_workers=0`` and copied to the device: the common hand-written path;
  * batched: the product's ``TrainDataset.batches`` on a resident store (src/data).

Both consume the same (epoch, index) plan. The student rates are one optimizer update on batches
already on the device, through the engine's own UpdateStep (bench/throughput.py's runner): each
preset's student at its GPU config's size (cifar10.yaml: the CNN preset's ResNet-18 at 32 px, the
ViT preset's ViT-Tiny at 224 px). Modes alternate within
each round and the median round counts. On the CPU a rate is images per CPU second of this process
(a neighbour's load stretches wall time, not the work); on CUDA it is wall time.

The last line is ``batched/per-sample throughput ratio: X.XX`` at the smallest of those sizes,
32 px (target on the CPU: 5 or more). On a GPU, the batched path should deliver at least 3x the
student's training rate.

    python bench/data.py                       # CPU: a few minutes on one core
    python bench/data.py --images 512 --rounds 1 --student-batch 8   # smoke run
    python bench/data.py --device cuda         # GPU (make gpu-check)
"""
from __future__ import annotations

import argparse
import os
import statistics
from collections.abc import Callable

import torch
import torchvision.transforms.v2.functional as F
from _common import (
    add_threads_flag,
    build_stage,
    machine_line,
    preset_config,
    resolve_device_and_threads,
    synthetic_batch,
)
from throughput import alternating_rates, repeated, training_runner
from torch.utils.data import DataLoader, Dataset

from src.config.presets import PRESETS
from src.config.schema import RunConfig
from src.config.stage_settings import model_name
from src.data.datasets import ImageStore, TrainDataset
from src.data.registry import DATASETS
from src.data.sources import ArrayReader, SourcePart
from src.data.transforms import Augment, ModelInput, crop_padding, resize_square
from src.engine.sampling import epoch_order
from src.rundirs.inputs import stage_image_size
from src.utils.reproducibility import derive_seed, setup_reproducibility

CIFAR = DATASETS["cifar10"].stats


class PerSampleDataset(Dataset):
    """A per-sample training path (one image at a time: pad, crop, flip, normalise, resize): this
    benchmark's baseline."""

    def __init__(self, images: torch.Tensor, targets: list[int], image_size: int, seed: int) -> None:
        self.images, self.targets, self.size, self.seed = images, targets, image_size, seed
        self.cached = image_size == images.shape[-1]  # 32 px fits a 1 GiB cache; 224 px does not
        self.padding = crop_padding(image_size)

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, key: tuple[int, int]) -> tuple[torch.Tensor, int]:
        epoch, index = key
        image = self.images[index]
        if not self.cached:
            image = resize_square(image, self.size)
        gen = torch.Generator().manual_seed(derive_seed(self.seed, "augment", epoch, index))
        top, left = torch.randint(0, 2 * self.padding + 1, (2,), generator=gen).tolist()
        flip = bool(torch.rand((), generator=gen) < 0.5)
        image = F.crop(F.pad(image, [self.padding]), top, left, self.size, self.size)
        image = F.horizontal_flip(image) if flip else image
        scaled = F.to_dtype(image, torch.float32, scale=True)
        return F.normalize(scaled, list(CIFAR.mean), list(CIFAR.std)), self.targets[index]


def batched_dataset(images: torch.Tensor, targets: list[int], image_size: int, seed: int) -> TrainDataset:
    store = ImageStore(SourcePart(targets, ArrayReader(images)), range(len(targets)), 32, resident=True)
    model_input = ModelInput(image_size, CIFAR, Augment(crop_padding(32), hflip=True))
    return TrainDataset(store, targets, [str(c) for c in range(10)], model_input, seed=seed)


def data_runners(images: torch.Tensor, targets: list[int], size: int, batch: int, device: torch.device
                 ) -> dict[str, Callable[[], int]]:
    order = epoch_order(0, 1, len(targets))
    plan = [[(1, i) for i in order[j : j + batch]] for j in range(0, len(order), batch)]
    old, new = PerSampleDataset(images, targets, size, seed=0), batched_dataset(images, targets, size, seed=0)
    new.store.on(device)

    def per_sample() -> int:
        loader = DataLoader(old, batch_sampler=plan, num_workers=0,
                            generator=torch.Generator().manual_seed(0))
        count = 0
        for x, y in loader:
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            count += len(y)
        return count

    def batched() -> int:
        return sum(len(y) for _, y in new.batches(plan, device))

    return {"per-sample": per_sample, "batched": batched}


def student_size(cfg: RunConfig) -> int:
    return stage_image_size(cfg, "baseline")


def student_runner(cfg: RunConfig, device: torch.device) -> tuple[str, Callable[[], int]]:
    """One training update of ``cfg``'s student architecture (the baseline stage: labels only)."""
    stage = build_stage(cfg, "baseline", device)
    batch = cfg.train.batch_size
    images, labels = synthetic_batch(batch, student_size(cfg), device)
    step = training_runner(stage.model, stage.objective, images, labels, cfg.train, device)
    return stage.name, repeated(step, 1, batch)


def under_determinism(deterministic: bool, run: Callable[[], int]) -> Callable[[], int]:
    """``run`` under ``runtime.deterministic`` = ``deterministic`` (switched per call, so the two
    settings can alternate within a round)."""
    def switched() -> int:
        setup_reproducibility(0, deterministic=deterministic)
        return run()

    return switched


def median_rates(runners: dict[str, Callable[[], int]], rounds: int,
                 device: torch.device) -> dict[str, float]:
    rates = alternating_rates(runners, rounds, device)  # bench/throughput.py's warm-up and rounds
    return {mode: statistics.median(values) for mode, values in rates.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--images", type=int, default=4096, help="synthetic CIFAR images per pass")
    parser.add_argument("--batch", type=int, default=128, help="images per batch (the GPU configs' 128)")
    parser.add_argument("--student-batch", type=int, default=None,
                        help="batch of the student's timed updates (default: --batch on CUDA, 32 on the CPU)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds; the median counts")
    add_threads_flag(parser)
    args = parser.parse_args()
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # read once, at CUDA's first matmul
    device = resolve_device_and_threads(args.device, args.threads)
    student_batch = args.student_batch or (args.batch if device.type == "cuda" else 32)
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (args.images, 3, 32, 32), generator=gen, dtype=torch.uint8)
    targets = torch.randint(0, 10, (args.images,), generator=gen).tolist()
    print(machine_line(device))
    clock = "wall" if device.type == "cuda" else "CPU"
    print(f"{args.images} CIFAR-shaped images per pass, batch {args.batch}, median of {args.rounds} rounds; "
          f"student updates at batch {student_batch}; images/s of {clock} time")
    print(f"{'size':>5} {'per-sample':>11} {'batched':>9} {'ratio':>6}  {'student':<9} {'trains':>7} "
          f"{'batched/student':>15}")
    ratios = {}
    configs = sorted((preset_config(preset, batch=student_batch) for preset in PRESETS),
                     key=student_size)  # each preset's GPU config, smallest student size first
    for cfg in configs:
        size = student_size(cfg)
        setup_reproducibility(0, deterministic=False)  # the default: speed
        name, student = student_runner(cfg, device)
        rates = median_rates({**data_runners(images, targets, size, args.batch, device), name: student},
                             args.rounds, device)
        ratios[size] = rates["batched"] / rates["per-sample"]
        print(f"{size:>5} {rates['per-sample']:>11,.0f} {rates['batched']:>9,.0f} {ratios[size]:>6.2f}  "
              f"{name:<9} {rates[name]:>7,.1f} {rates['batched'] / rates[name]:>15.1f}")
    smallest = configs[0]
    modes = {f"{flag}": under_determinism(flag, student_runner(smallest, device)[1])
             for flag in (False, True)}
    cost = median_rates(modes, args.rounds, device)
    setup_reproducibility(0, deterministic=False)
    print(f"student deterministic/fast training ratio ({model_name(smallest, 'baseline')}, "
          f"{student_size(smallest)} px): "
          f"{cost['True'] / cost['False']:.2f}")
    print(f"batched/per-sample throughput ratio: {ratios[student_size(smallest)]:.2f}")


if __name__ == "__main__":
    main()
