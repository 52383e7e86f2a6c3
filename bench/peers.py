#!/usr/bin/env python3
"""kd-pipeline side by side with the KD loop its peers' users write, on the same KD stage.

The stage: a ResNet-34 teacher distilled into a ResNet-18 student on CIFAR-shaped images at
32 px with random crop (padding 4) and horizontal flip, SGD, AMP on CUDA (bf16 where the GPU has
it, as the product's ``amp: auto``). Random uint8 images: nothing downloads, and speed does not
depend on what the pictures show.

  * kd-pipeline: ``Trainer.fit`` of one epoch with the product's batched CIFAR data path, the
    distillation objective, its one-batch validation and end-of-epoch checkpoint (curves.png is
    skipped), ``runtime.compile`` as ``--compile`` says;
  * hand-written loop: what users write after mdistiller and torchdistill's examples: the images
    as CIFAR files read by ``torchvision.datasets.CIFAR10`` with per-sample
    ``torchvision.transforms.v2``, a ``DataLoader`` with ``--workers`` persistent worker processes,
    a frozen teacher under ``no_grad`` and Hinton's KD loss (temperature 4, weight 0.9), and at
    the epoch's end what those loops do too: a validation pass over the same one-batch set the
    engine validates on, and ``torch.save`` of the student and optimizer state;
  * torchdistill itself is not run here: docs/PERFORMANCE.md says why.

Rounds alternate the sides in one process after an untimed warm-up round of each (worker start,
allocator, kernels, compilation). Rates are wall-clock images/s (the loop's work is partly in its
worker processes, which this process's CPU time would not see). The last line is
``kd-pipeline/peer throughput ratio: X.XX``: the medians' ratio against the fastest peer.

    python bench/peers.py --images 64 --batch 32 --rounds 3      # the CPU here: about a minute
    python bench/peers.py --device cuda --images 25600 --compile on   # a GPU (make gpu-check)
"""
from __future__ import annotations

import argparse
import copy
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import timm
import torch
import torch.nn.functional as F
from _common import NUM_CLASSES, add_threads_flag, machine_line, resolve_device_and_threads
from cifar_files import write_cifar10
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from torchvision import datasets
from torchvision.transforms import v2

from data import batched_dataset
from src.data.registry import DATASETS
from src.distillation.distiller import DistillationObjective
from src.distillation.settings import DistillationConfig
from src.engine import trainer as trainer_module
from src.engine.compiling import COMPILE_MODES, CompileSettings
from src.engine.settings import TrainConfig

TEMPERATURE, KD_WEIGHT = 4.0, 0.9  # the peers' usual CIFAR settings
SGD = {"lr": 0.05, "momentum": 0.9, "nesterov": True, "weight_decay": 5e-4}


def synthetic_images(count: int) -> tuple[np.ndarray, list[int]]:
    """``count`` random CIFAR-shaped uint8 images [N, 3, 32, 32] and labels."""
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (count, 3, 32, 32), dtype=np.uint8)
    return images, rng.integers(0, NUM_CLASSES, count).tolist()


def kd_loss(student: torch.Tensor, teacher: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Hinton's loss as the peers' examples write it."""
    soft = F.kl_div(F.log_softmax(student / TEMPERATURE, dim=1), F.softmax(teacher / TEMPERATURE, dim=1),
                    reduction="batchmean") * TEMPERATURE**2
    return KD_WEIGHT * soft + (1 - KD_WEIGHT) * F.cross_entropy(student, labels)


def peer_loader(root: Path, images: np.ndarray, labels: Sequence[int], batch: int, workers: int,
                device: torch.device) -> DataLoader:
    """CIFAR files read back by torchvision, per-sample v2 transforms, a DataLoader with workers."""
    checksums = write_cifar10(root, images, labels, images[:batch], labels[:batch])
    for name, value in checksums.items():  # torchvision checks every file against these
        setattr(datasets.CIFAR10, name, value)
    stats = DATASETS["cifar10"].stats
    transform = v2.Compose([v2.ToImage(), v2.RandomCrop(32, padding=4), v2.RandomHorizontalFlip(),
                            v2.ToDtype(torch.float32, scale=True),
                            v2.Normalize(list(stats.mean), list(stats.std))])
    dataset = datasets.CIFAR10(str(root), train=True, transform=transform)
    return DataLoader(dataset, batch_size=batch, shuffle=True, num_workers=workers,
                      pin_memory=device.type == "cuda", persistent_workers=workers > 0)


def amp_dtype(device: torch.device) -> torch.dtype | None:
    if device.type != "cuda":
        return None
    return torch.bfloat16 if torch.cuda.is_bf16_supported(including_emulation=False) else torch.float16


def peer_epoch(loader: DataLoader, val: TensorDataset, teacher: nn.Module, template: nn.Module,
               device: torch.device, checkpoint: Path) -> Callable[[], int]:
    """One epoch of the hand-written loop (a fresh student from ``template`` per call)."""
    dtype = amp_dtype(device)
    val_images, val_labels = (tensor.to(device) for tensor in val.tensors)

    def run() -> int:
        student = copy.deepcopy(template).to(device).train()
        optimizer = torch.optim.SGD(student.parameters(), **SGD)
        scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
        count = 0
        for images, labels in loader:
            images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
            with torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None):
                with torch.no_grad():
                    teacher_logits = teacher(images)
                loss = kd_loss(student(images), teacher_logits, labels)
            optimizer.zero_grad(set_to_none=True)
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
            count += len(labels)
        student.eval()
        autocast = torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None)
        with torch.no_grad(), autocast:
            accuracy = (student(val_images).argmax(1) == val_labels).float().mean().item()
        torch.save({"model": student.state_dict(), "optimizer": optimizer.state_dict(), "accuracy": accuracy},
                   checkpoint)
        return count

    return run


def validation_set(batch: int) -> TensorDataset:
    """One batch of normalised images: what both sides validate on at the epoch's end."""
    generator = torch.Generator().manual_seed(1)
    return TensorDataset(torch.randn(batch, 3, 32, 32, generator=generator),
                         torch.randint(0, NUM_CLASSES, (batch,), generator=generator))


def engine_epoch(images: np.ndarray, labels: list[int], val: TensorDataset, teacher: nn.Module,
                 template: nn.Module, batch: int, device: torch.device, compile_mode: str,
                 folder: Path) -> Callable[[], int]:
    """One epoch of ``Trainer.fit`` on the product's data path (a fresh student per call)."""
    train = batched_dataset(torch.from_numpy(images), labels, 32, seed=0)
    train.store.on(device)
    cfg = TrainConfig(epochs=1, batch_size=batch, lr=SGD["lr"], momentum=SGD["momentum"],
                      weight_decay=SGD["weight_decay"], scheduler="constant", amp="auto", progress="off",
                      patience=None)
    objective = DistillationObjective(teacher, DistillationConfig())
    calls = iter(range(sys.maxsize))

    def run() -> int:
        trainer = trainer_module.Trainer(
            copy.deepcopy(template), objective, train, val, cfg, folder / f"fit{next(calls)}", device=device,
            seed=0, run_fingerprint={"bench": "peers"}, resume="never",
            compilation=CompileSettings(compile_mode))  # type: ignore[arg-type]
        sync(device)
        started = time.perf_counter()
        trainer.fit()
        sync(device)
        run.seconds = time.perf_counter() - started  # type: ignore[attr-defined]
        return len(labels)

    return run


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(run: Callable[[], int], device: torch.device) -> float:
    """Images/s of one call; the engine side times its own ``fit`` (not the Trainer's set-up)."""
    sync(device)
    started = time.perf_counter()
    count = run()
    sync(device)
    seconds = getattr(run, "seconds", time.perf_counter() - started)
    return count / seconds


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=2048, help="training images per epoch (one round)")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3, help="timed rounds per side, alternating")
    parser.add_argument("--workers", type=int, default=2, help="the hand-written loop's DataLoader workers")
    parser.add_argument("--compile", choices=COMPILE_MODES, default="auto",
                        help="kd-pipeline's runtime.compile")
    parser.add_argument("--device", default="cpu")
    add_threads_flag(parser)
    args = parser.parse_args(argv)
    if args.images < args.batch or args.batch < 2:
        print("error: --images must be at least --batch, and --batch at least 2", file=sys.stderr)
        raise SystemExit(2)
    device = resolve_device_and_threads(args.device, args.threads)
    trainer_module.plot_curves = lambda *paths: None  # the benchmark measures training, not plotting
    print(machine_line(device))
    print(f"KD resnet34 -> resnet18, 32 px crop+flip, batch {args.batch}, {args.images} images x "
          f"{args.rounds} rounds on {device}; loop workers {args.workers}; "
          f"kd-pipeline compile={args.compile}")
    torch.manual_seed(0)
    teacher = timm.create_model("resnet34", num_classes=NUM_CLASSES).to(device).eval()
    template = timm.create_model("resnet18", num_classes=NUM_CLASSES)
    images, labels = synthetic_images(args.images)
    val = validation_set(args.batch)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        loader = peer_loader(folder / "cifar", images, labels, args.batch, args.workers, device)
        sides = {
            "kd-pipeline": engine_epoch(images, labels, val, teacher, template, args.batch, device,
                                        args.compile, folder / "runs"),
            "hand-written loop": peer_epoch(loader, val, teacher, template, device, folder / "loop.pth"),
        }
        for run in sides.values():  # warm-up: workers, allocator, kernels, compilation
            run()
        rates: dict[str, list[float]] = {name: [] for name in sides}
        for round_index in range(args.rounds):
            order = list(sides) if round_index % 2 == 0 else list(reversed(sides))
            for name in order:
                rates[name].append(timed(sides[name], device))
                print(f"round {round_index + 1} {name:18s}: {rates[name][-1]:9.1f} images/s")
    medians = {name: statistics.median(values) for name, values in rates.items()}
    for name, values in rates.items():
        spread = (max(values) - min(values)) / medians[name]
        print(f"{name:18s}: median {medians[name]:9.1f} images/s, spread {100 * spread:.1f}% "
              f"({min(values):.1f}-{max(values):.1f})")
    peers = {name: rate for name, rate in medians.items() if name != "kd-pipeline"}
    fastest = max(peers, key=peers.__getitem__)
    print(f"fastest peer: {fastest}")
    print(f"kd-pipeline/peer throughput ratio: {medians['kd-pipeline'] / peers[fastest]:.2f}")


if __name__ == "__main__":
    main()
