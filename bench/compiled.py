#!/usr/bin/env python3
"""Eager against compiled (``runtime.compile``) training speed, stage by stage, for the presets'
shipped GPU configs.

Each stage's update runs through the engine's own UpdateStep on a synthetic batch already on
the device, once eager and once compiled as the Trainer compiles it (the student's forward and
backward; a KD stage's frozen teacher too, as a CUDA graph on CUDA), each on its own model copy.
Compilation happens in untimed warm-up calls; the modes alternate within each round and the
median round counts. Rates: wall-clock images/s on CUDA; on the CPU images per CPU-second of
this process (a neighbour's load stretches wall time, not the work). One line per stage:

    <preset> <stage> <model>: eager X images/s, compiled Y images/s, compiled/eager Z.ZZ

and last ``compiled/eager throughput ratio: Z.ZZ``, the last KD stage's (the last stage's when
none distils): with ``--preset cnn`` the ResNet-18 32 px KD stage, whose target on an H-class
GPU is 2.0.

    python bench/compiled.py --device cuda --batch 128            # a GPU (make gpu-check)
    python bench/compiled.py --preset cnn --stages baseline --image-size 16 --batch 4 \\
        --steps 1 --rounds 1 --backend eager                      # a CPU smoke run
"""
from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Sequence

import torch
from _common import (
    add_preset_flag,
    add_threads_flag,
    build_stage,
    chosen_presets,
    machine_line,
    preset_config,
    resolve_device_and_threads,
    synthetic_batch,
)

from src.config.schema import RunConfig
from src.config.stage_settings import stage_config
from src.config.stages import STAGE_NAMES, STAGES
from src.engine.compiling import CompiledModule, CompileSettings
from src.engine.layout import to_training_layout
from src.engine.optim import build_optimizer
from src.engine.step import UpdateStep, resolve_precision

Runner = Callable[[], None]


def update_runner(cfg: RunConfig, stage: str, device: torch.device, batch: int,
                  settings: CompileSettings | None) -> tuple[str, Runner]:
    """(the stage's model name, one optimizer update as the Trainer runs it), compiled when
    ``settings`` is given."""
    setup = build_stage(cfg, stage, device)
    train = stage_config(cfg, stage).train
    images, labels = synthetic_batch(batch, cfg.data.image_size, device)
    dtype, scaler = resolve_precision(train.amp, device)
    channels_last = to_training_layout(setup.model, train, device)
    optimizer = build_optimizer(setup.model, train, fused=device.type == "cuda")
    compiled = None
    if settings is not None:
        setup.objective.compile(settings, device)
        compiled = CompiledModule(setup.model, f"{stage} training step", settings, device)
    step = UpdateStep(setup.model, setup.objective, optimizer, train, device, dtype, scaler, channels_last,
                      compiled)
    setup.model.train()

    def run() -> None:
        _, finite, _ = step.forward_backward(images, labels, 1.0)
        step.apply(finite)

    return setup.name, run


def rate(run: Runner, steps: int, batch: int, device: torch.device) -> float:
    """Images/s of ``steps`` updates (wall clock on CUDA, process CPU time on the CPU)."""
    clock = time.perf_counter if device.type == "cuda" else time.process_time
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = clock()
    for _ in range(steps):
        run()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return steps * batch / (clock() - start)


def compare(cfg: RunConfig, stage: str, device: torch.device,
            args: argparse.Namespace) -> tuple[str, float, float]:
    """(model name, eager images/s, compiled images/s): medians over alternating rounds."""
    name, eager = update_runner(cfg, stage, device, args.batch, None)
    _, compiled = update_runner(cfg, stage, device, args.batch, CompileSettings("on", args.backend))
    for run in (eager, compiled):  # warm-up: kernels, allocator, optimizer state, compilation
        for _ in range(args.warmup):
            run()
    rates: dict[str, list[float]] = {"eager": [], "compiled": []}
    for round_index in range(args.rounds):
        order = ("eager", "compiled") if round_index % 2 == 0 else ("compiled", "eager")
        for mode in order:
            rates[mode].append(rate(eager if mode == "eager" else compiled, args.steps, args.batch, device))
    return name, statistics.median(rates["eager"]), statistics.median(rates["compiled"])


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_preset_flag(parser, both=True)
    parser.add_argument("--stages", default=",".join(STAGE_NAMES), help="comma list (default: every stage)")
    parser.add_argument("--image-size", type=int, default=None, help="default: the config's")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=20, help="timed updates per mode per round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=3, help="untimed updates per mode (compiles)")
    parser.add_argument("--backend", default="inductor", help="torch.compile backend (default inductor)")
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    add_threads_flag(parser)
    args = parser.parse_args(argv)
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    unknown = [s for s in stages if s not in STAGE_NAMES]
    if unknown or not stages:
        parser.error(f"unknown stage(s) {unknown}; choose from {', '.join(STAGE_NAMES)}")
    device = resolve_device_and_threads(args.device, args.threads)
    print(machine_line(device), flush=True)
    ratios: dict[bool, float] = {}  # is a KD stage -> the last such stage's compiled/eager
    for preset in chosen_presets(args.preset):
        cfg = preset_config(preset, image_size=args.image_size, batch=args.batch)
        for stage in stages:
            name, eager, compiled = compare(cfg, stage, device, args)
            print(f"{preset} {stage} {name}: eager {eager:.1f} images/s, compiled {compiled:.1f} images/s, "
                  f"compiled/eager {compiled / eager:.2f}", flush=True)
            ratios[STAGES[stage].teacher_stage is not None] = compiled / eager
    print(f"compiled/eager throughput ratio: {ratios.get(True, ratios.get(False)):.2f}")


if __name__ == "__main__":
    main()
