#!/usr/bin/env python3
"""What identifying an image folder costs per image: why a split.json names files by path and size
rather than by content hash, and what the decode check of a folder read per batch adds.

Writes ``--images`` random RGB PNGs (``--size`` px, three classes) into a temporary folder, then
times, per image, in one process: the product's scan (torchvision's ImageFolder over
src/data/imagefolder.py's strict walk) with one ``stat`` per file (the identity); ``stat`` alone;
sha256 of every file's bytes (the identity by content that was not chosen); a full decode of every
image (src/data/imagefolder.py ``load_image``); and the decode check of a new split
(src/data/split.py ``check_decodable``, a thread pool). Each is the median of ``--rounds``; rates
are microseconds per image of wall time and of this process's CPU time (all threads).

    python bench/data_identity.py                 # 3000 images of 32 px: about a minute
    python bench/data_identity.py --images 300    # smoke run
"""
from __future__ import annotations

import argparse
import hashlib
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from _common import machine_line
from PIL import Image

from src.data.imagefolder import load_image, load_imagefolder_source
from src.data.settings import DataConfig
from src.data.sources import file_entries
from src.data.split import check_decodable, make_split


def write_folder(root: Path, images: int, size: int) -> list[Path]:
    rng = np.random.default_rng(0)
    paths = []
    for i in range(images):
        path = root / "train" / f"class{i % 3}" / f"{i:05d}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


def timed(job: Callable[[], object], rounds: int, count: int) -> tuple[float, float]:
    """Median (wall, CPU) microseconds per image of ``job`` over ``rounds``."""
    walls, cpus = [], []
    for _ in range(rounds):
        wall, cpu = time.perf_counter(), time.process_time()
        job()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return 1e6 * statistics.median(walls) / count, 1e6 * statistics.median(cpus) / count


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=3000)
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        root = Path(folder)
        paths = write_folder(root, args.images, args.size)
        names = [str(path) for path in paths]
        cfg = DataConfig(name="imagefolder", data_dir=str(root), image_size=args.size, val_fraction=0.1,
                         test_fraction=0.1)
        source = load_imagefolder_source(cfg)
        record = make_split(source, cfg, seed=0)
        jobs = {
            "scan + stat (the identity)": lambda: load_imagefolder_source(cfg),
            "stat alone": lambda: file_entries(root, names),
            "sha256 of each file": lambda: [hashlib.sha256(path.read_bytes()).digest() for path in paths],
            "decode each image": lambda: all(load_image(name) is not None for name in names),  # none kept
            "decode check (thread pool)": lambda: check_decodable(source, record),
        }
        print(machine_line(torch.device("cpu")))
        print(f"{args.images} random {args.size}x{args.size} PNGs, median of {args.rounds} rounds; "
              "microseconds per image")
        print(f"{'':28} {'wall':>8} {'CPU':>8}")
        for name, job in jobs.items():
            wall, cpu = timed(job, args.rounds, args.images)
            print(f"{name:28} {wall:8.1f} {cpu:8.1f}")


if __name__ == "__main__":
    main()
