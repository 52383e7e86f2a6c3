"""What the engine costs over a bare PyTorch loop: same model, data, batch size, steps,
optimizer, precision and memory layout, in one process, alternating rounds so machine noise hits
both sides alike.

The engine side is a full ``Trainer.fit`` of one epoch with default logging and checkpointing
(its one end-of-epoch checkpoint and a one-batch validation included); only curves.png is
skipped. The bare side is the loop people write by hand, with the engine's own precision
(``resolve_precision``: bf16 autocast, or fp16 with a GradScaler) and layout
(``to_training_layout``: channels-last for a CNN on CUDA), so the ratio is like for like.

Sized by time: the warm-up (``--warmup-seconds``; on a GPU it brings the clocks up) measures the
bare loop's speed, and each round then runs as many steps as fill ``--seconds`` per side. Each
round's ratio is printed, then the spread of the rounds, ``(max - min) / median``: a ratio closer
to 1 than the spread is noise. The last line is ``engine/bare throughput ratio: X.XX`` (target
>= 0.97, with a spread under 0.05).

    .venv/bin/python bench/overhead.py                 # CPU, ResNet-18 at 32x32
    .venv/bin/python bench/overhead.py --device cuda --batch-size 128
"""
from __future__ import annotations

import argparse
import contextlib
import statistics
import tempfile
import time
from pathlib import Path
from typing import Optional

import timm
import torch
import torch.nn.functional as F
from _common import add_timing_flags, spread, steps_for, warm_up
from torch.utils.data import DataLoader, Dataset

from src.engine import trainer as trainer_module
from src.engine.device import resolve_device
from src.engine.layout import to_training_layout
from src.engine.objective import CrossEntropyObjective
from src.engine.optim import build_optimizer
from src.engine.settings import TrainConfig
from src.engine.step import resolve_precision


class Synthetic(Dataset):
    """Fixed random images; accepts the engine's (epoch, index) keys and plain indices."""

    def __init__(self, count: int, image_size: int, num_classes: int = 10) -> None:
        generator = torch.Generator().manual_seed(0)
        self.images = torch.randn(count, 3, image_size, image_size, generator=generator)
        self.targets = torch.randint(0, num_classes, (count,), generator=generator).tolist()
        self.num_classes = num_classes

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, key: int | tuple[int, int]) -> tuple[torch.Tensor, int]:
        index = key[1] if isinstance(key, tuple) else key
        return self.images[index], self.targets[index]


def make_model(device: torch.device) -> torch.nn.Module:
    return timm.create_model("resnet18", num_classes=10).to(device)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def clocks() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def elapsed(start: tuple[float, float]) -> tuple[float, float]:
    """Wall seconds and this process's CPU seconds since ``start``. On a shared CPU, other
    processes stretch wall time at random but not the work done; CPU time leaves out waiting
    for the disk (the engine's checkpoint fsync), so both are reported."""
    wall, cpu = clocks()
    return wall - start[0], cpu - start[1]


class BareStep:
    """One hand-written training step, in the engine's precision and memory layout (what the
    engine's ``UpdateStep`` and ``Trainer`` resolve for the same settings and device)."""

    def __init__(self, model: torch.nn.Module, cfg: TrainConfig, device: torch.device) -> None:
        self.model, self.device = model, device
        self.channels_last = to_training_layout(model, cfg, device)
        self.dtype: Optional[torch.dtype]
        self.scaler: Optional[torch.amp.GradScaler]
        self.dtype, self.scaler = resolve_precision(cfg.amp, device)
        self.optimizer = build_optimizer(model, cfg)

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        images, labels = images.to(self.device, non_blocking=True), labels.to(self.device, non_blocking=True)
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        autocast = (torch.autocast(self.device.type, dtype=self.dtype) if self.dtype is not None
                    else contextlib.nullcontext())
        with autocast:
            loss = F.cross_entropy(self.model(images), labels)
        self.optimizer.zero_grad(set_to_none=True)
        if self.scaler is None:
            loss.backward()
            self.optimizer.step()
        else:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()


def bare_loop(data: Synthetic, cfg: TrainConfig, device: torch.device) -> tuple[float, float]:
    """The loop people write by hand; returns (wall, CPU) seconds for one pass over ``data``."""
    step = BareStep(make_model(device), cfg, device)
    order = torch.Generator().manual_seed(0)
    loader = DataLoader(data, batch_size=cfg.batch_size, shuffle=True, generator=order)
    step.model.train()
    sync(device)
    start = clocks()
    for images, labels in loader:
        step(images, labels)
    sync(device)
    return elapsed(start)


def engine_fit(data: Synthetic, val: Synthetic, cfg: TrainConfig, device: torch.device,
               folder: Path) -> tuple[float, float]:
    """``Trainer.fit`` for one epoch over ``data``; returns (wall, CPU) seconds."""
    trainer = trainer_module.Trainer(make_model(device), CrossEntropyObjective(), data, val, cfg, folder,
                                     device=device, seed=0, run_fingerprint={"bench": "overhead"},
                                     resume="never")
    sync(device)
    start = clocks()
    trainer.fit()
    sync(device)
    return elapsed(start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_timing_flags(parser, seconds=5.0, warmup_seconds=5.0, rounds=5)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads; 1 by default: on a shared CPU, OpenMP threads that wait for "
                             "each other swamp the engine's cost (0: torch's own choice)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    trainer_module.plot_curves = lambda *paths: None  # the benchmark measures training, not plotting
    cfg = TrainConfig(epochs=1, batch_size=args.batch_size, lr=0.05, scheduler="constant", amp="auto",
                      progress="off", patience=None)
    val = Synthetic(args.batch_size, args.image_size)
    warm = Synthetic(3 * args.batch_size, args.image_size)
    with tempfile.TemporaryDirectory() as tmp:
        engine_fit(warm, val, cfg, device, Path(tmp) / "warmup")  # the engine's first-call costs
        step = BareStep(make_model(device).train(), cfg, device)
        batch = warm.images[:args.batch_size], torch.tensor(warm.targets[:args.batch_size])
        (step_seconds,) = warm_up([lambda: step(*batch)], args.warmup_seconds, device)
        steps = steps_for(args.seconds, step_seconds, minimum=3)  # an epoch of at least 3 steps
        data = Synthetic(steps * args.batch_size, args.image_size)
        images = len(data)
        print(f"resnet18 {args.image_size}x{args.image_size}, batch {args.batch_size}, "
              f"precision {step.dtype or torch.float32}, channels-last {step.channels_last}, "
              f"{steps} steps (~{args.seconds:g} s) x {args.rounds} rounds on {device} "
              f"({torch.get_num_threads()} threads)", flush=True)
        ratios: dict[str, list[float]] = {"wall": [], "cpu": []}
        for round_index in range(args.rounds):
            order = ("bare", "engine") if round_index % 2 == 0 else ("engine", "bare")
            seconds = {}
            for side in order:
                if side == "bare":
                    seconds[side] = bare_loop(data, cfg, device)
                else:
                    seconds[side] = engine_fit(data, val, cfg, device, Path(tmp) / f"round{round_index}")
            for i, clock in enumerate(ratios):
                ratios[clock].append(seconds["bare"][i] / seconds["engine"][i])
            print(f"round {round_index + 1}: bare {images / seconds['bare'][0]:8.1f} images/s, "
                  f"engine {images / seconds['engine'][0]:8.1f} images/s, "
                  f"engine/bare {ratios['wall'][-1]:.3f} (wall), {ratios['cpu'][-1]:.3f} (CPU)", flush=True)
    # medians of paired rounds: a burst of load from a neighbour spoils one round, not the figure
    headline = "wall" if device.type == "cuda" else "cpu"  # CUDA work is invisible to CPU time
    other = "cpu" if headline == "wall" else "wall"
    print(f"median ratio by {other} time: {statistics.median(ratios[other]):.2f}")
    print(f"engine/bare round spread: {spread(ratios[headline]):.3f} ((max-min)/median of the rounds' "
          f"{headline}-time ratios)")
    print(f"engine/bare throughput ratio: {statistics.median(ratios[headline]):.2f}")


if __name__ == "__main__":
    main()
