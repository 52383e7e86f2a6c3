"""What the engine costs over a bare PyTorch loop: same model, data, batch size, steps and
optimizer, in one process, alternating rounds so machine noise hits both sides alike.

The engine side is a full ``Trainer.fit`` of one epoch with default logging and checkpointing
(its one end-of-epoch checkpoint and a one-batch validation included); only curves.png is
skipped. The last line is ``engine/bare throughput ratio: X.XX`` (target >= 0.97).

    .venv/bin/python bench/overhead.py                 # CPU, ResNet-18 at 32x32
    .venv/bin/python bench/overhead.py --device cuda --steps 200 --batch-size 128
"""
from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import timm
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Dataset

from src.engine import trainer as trainer_module
from src.engine.device import resolve_device
from src.engine.objective import CrossEntropyObjective
from src.engine.optim import build_optimizer
from src.engine.settings import TrainConfig


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


def bare_loop(data: Synthetic, cfg: TrainConfig, device: torch.device) -> tuple[float, float]:
    """The loop people write by hand; returns seconds for one pass over ``data``."""
    model = make_model(device)
    optimizer = build_optimizer(model, cfg)
    order = torch.Generator().manual_seed(0)
    loader = DataLoader(data, batch_size=cfg.batch_size, shuffle=True, generator=order)
    use_amp = device.type == "cuda"
    model.train()
    sync(device)
    start = clocks()
    for images, labels in loader:
        images, labels = images.to(device, non_blocking=True), labels.to(device, non_blocking=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_amp):
            loss = F.cross_entropy(model(images), labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
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
    parser.add_argument("--steps", type=int, default=100, help="optimizer steps per measured run (one epoch)")
    parser.add_argument("--rounds", type=int, default=4,
                        help="alternating engine/bare rounds; the ratio is the median of the rounds' ratios")
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
    data = Synthetic(args.steps * args.batch_size, args.image_size)
    val = Synthetic(args.batch_size, args.image_size)
    warm = Synthetic(3 * args.batch_size, args.image_size)
    images = len(data)
    print(f"resnet18 {args.image_size}x{args.image_size}, batch {args.batch_size}, {args.steps} steps x "
          f"{args.rounds} rounds on {device} ({torch.get_num_threads()} threads)")
    with tempfile.TemporaryDirectory() as tmp:
        bare_loop(warm, cfg, device)
        engine_fit(warm, val, cfg, device, Path(tmp) / "warmup")
        ratios: dict[str, list[float]] = {"wall": [], "cpu": []}
        for round_index in range(args.rounds):
            order = ("bare", "engine") if round_index % 2 == 0 else ("engine", "bare")
            seconds = {}
            for side in order:
                if side == "bare":
                    seconds[side] = bare_loop(data, cfg, device)
                else:
                    seconds[side] = engine_fit(data, val, cfg, device, Path(tmp) / f"round{round_index}")
                print(f"round {round_index + 1} {side:6s}: {images / seconds[side][0]:8.1f} images/s")
            for i, clock in enumerate(ratios):
                ratios[clock].append(seconds["bare"][i] / seconds["engine"][i])
    # medians of paired rounds: a burst of load from a neighbour spoils one round, not the figure
    for clock, values in ratios.items():
        print(f"per-round engine/bare ratios ({clock} time): {', '.join(f'{r:.3f}' for r in values)}")
    headline = "wall" if device.type == "cuda" else "cpu"  # CUDA work is invisible to CPU time
    other = "cpu" if headline == "wall" else "wall"
    print(f"median ratio by {other} time: {statistics.median(ratios[other]):.2f}")
    print(f"engine/bare throughput ratio: {statistics.median(ratios[headline]):.2f}")


if __name__ == "__main__":
    main()
