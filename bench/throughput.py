#!/usr/bin/env python3
"""Training speed per stage, and how close distillation gets to its ideal speed.

A KD step is a student training step plus a frozen teacher's forward, so its best possible
throughput is ``ideal = 1 / (1/student_train + 1/teacher_inference)`` (images/s). The script
measures, in one process on the same synthetic batches:

  * labels-only training of each requested labels stage (e.g. the teacher),
  * for each requested KD stage: its student trained with labels, its teacher's inference alone
    (inference mode, the engine's autocast) and the real KD step (DistillationObjective),

all through the engine's own ``UpdateStep`` (autocast, scaler, channels-last, clipping, optimizer
step) with the optimizer from ``build_optimizer``. Sized by time: a warm-up of
``--warmup-seconds`` (on a GPU it brings the clocks up) times every mode, and each round then
gives each mode as many updates as fill ``--seconds``. Modes alternate within each round and the
median round counts, so a neighbour's load spike hits every mode alike; each KD stage's per-round
ratios and their spread, ``(max - min) / median``, show how much of a ratio is noise. The last
line is the worst KD stage's ``kd/ideal throughput ratio`` (target: 0.95 or better). Data
loading is left out on purpose (batches are already on the device): it is the same for both
sides of the ratio.

The models and training settings are a preset's shipped GPU config (cifar10.yaml, loaded by the
product's config loader); ``--image-size`` and ``--batch`` replace its size and batch.

    python bench/throughput.py          # CPU default: resnet50 teacher, resnet18 <- resnet34 KD
    python bench/throughput.py --device cuda --image-size 32 --batch 128 --stages teacher,assistant,student
    python bench/throughput.py --device cuda --preset vit --image-size 224 --batch 64 \
        --stages teacher,assistant,student
"""
from __future__ import annotations

import argparse
import statistics
import time
import warnings
from collections.abc import Callable, Hashable
from typing import TypeVar

import pandas as pd
import torch
from _common import (
    NUM_CLASSES,
    StageSetup,
    add_preset_flag,
    add_threads_flag,
    add_timing_flags,
    build_stage,
    machine_line,
    preset_config,
    resolve_device_and_threads,
    spread,
    steps_for,
    synthetic_batch,
    warm_up,
)

from src.config.stages import STAGE_NAMES, STAGES
from src.engine.layout import to_training_layout
from src.engine.objective import CrossEntropyObjective
from src.engine.optim import build_optimizer
from src.engine.settings import TrainConfig
from src.engine.step import UpdateStep, resolve_precision
from src.rundirs.stage_models import build_model

Runner = Callable[[], None]
Key = TypeVar("Key", bound=Hashable)


def training_runner(model: torch.nn.Module, objective, images: torch.Tensor, labels: torch.Tensor,
                    cfg: TrainConfig, device: torch.device) -> Runner:
    """One optimizer update of ``model`` on the batch, exactly as the trainer runs it."""
    dtype, scaler = resolve_precision(cfg.amp, device)
    channels_last = to_training_layout(model, cfg, device)  # as the planner and the Trainer do
    optimizer = build_optimizer(model, cfg)
    step = UpdateStep(model, objective, optimizer, cfg, device, dtype, scaler, channels_last)
    model.train()

    def run() -> None:
        _, finite, _ = step.forward_backward(images, labels, 1.0)
        step.apply(finite)

    return run


def inference_runner(teacher: torch.nn.Module, images: torch.Tensor, cfg: TrainConfig,
                     device: torch.device) -> Runner:
    """The frozen teacher's forward as the distillation objective runs it inside a KD step."""
    dtype, _ = resolve_precision(cfg.amp, device)
    if to_training_layout(teacher, cfg, device):  # the layouts of a KD step's teacher and inputs
        images = images.contiguous(memory_format=torch.channels_last)

    def run() -> None:
        with torch.inference_mode(), torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            teacher(images)

    return run


def images_per_second(run: Callable[[], int], device: torch.device) -> float:
    """Images per second of ``run``, which returns how many images it covered. Wall-clock rate on
    CUDA. On the CPU the clock is this process's CPU time: on a shared machine other processes
    stretch wall time at random, but not the work a step costs, and the ratio compares work (a KD
    step's = the student's training + the teacher's forward)."""
    clock = time.perf_counter if device.type == "cuda" else time.process_time
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = clock()
    count = run()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return count / (clock() - start)


def repeated(run: Runner, steps: int, batch: int) -> Callable[[], int]:
    """``steps`` calls of ``run`` on a ``batch``-image batch, counted for images_per_second."""
    def counted() -> int:
        for _ in range(steps):
            run()
        return steps * batch

    return counted


def alternating_rates(runners: dict[Key, Callable[[], int]], rounds: int,
                      device: torch.device) -> dict[Key, list[float]]:
    """Each runner's images/s in every round (after ``warm_up``). Modes alternate within a round,
    so a neighbour's load spike hits every mode alike; the median round counts."""
    rates: dict[Key, list[float]] = {key: [] for key in runners}
    for _ in range(rounds):
        for key, run in runners.items():
            rates[key].append(images_per_second(run, device))
    return rates


def build_runners(cfg, stages: list[str], batch: int, device: torch.device) -> dict[tuple[str, str], Runner]:
    """(stage, mode) -> runner; KD stages get their student trained with labels, the teacher's
    inference and the KD step, each on its own model copy so no mode changes another's weights."""
    images, labels = synthetic_batch(batch, cfg.data.image_size, device)
    runners: dict[tuple[str, str], Runner] = {}
    for stage in stages:
        kd: StageSetup = build_stage(cfg, stage, device)
        if kd.teacher is None:
            runners[(stage, f"train {kd.name} (labels)")] = training_runner(
                kd.model, kd.objective, images, labels, cfg.train, device)
            continue
        plain = build_model(cfg, stage, NUM_CLASSES, initial=False).to(device)  # a second student
        runners[(stage, f"train {kd.name} (labels)")] = training_runner(
            plain, CrossEntropyObjective(cfg.train.label_smoothing), images, labels, cfg.train, device)
        runners[(stage, f"inference {kd.teacher_name}")] = inference_runner(
            kd.teacher, images, cfg.train, device)
        runners[(stage, f"kd {kd.name} <- {kd.teacher_name}")] = training_runner(
            kd.model, kd.objective, images, labels, cfg.train, device)
    return runners


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_preset_flag(parser)
    parser.add_argument("--stages", default="teacher,student",
                        help=f"comma list of {', '.join(STAGE_NAMES)} (default: teacher,student)")
    parser.add_argument("--image-size", type=int, default=32, help="default 32 (CIFAR-sized)")
    parser.add_argument("--batch", type=int, default=32, help="default 32 (GPU default: 128)")
    add_timing_flags(parser, seconds=1.0, warmup_seconds=3.0, rounds=5)
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument("--amp", choices=["auto", "off", "fp16", "bf16"], default="auto",
                        help="as train.amp (CUDA only)")
    add_threads_flag(parser)
    args = parser.parse_args()
    stages = [s.strip() for s in args.stages.split(",") if s.strip()]
    unknown = [s for s in stages if s not in STAGE_NAMES]
    if unknown or not stages:
        parser.error(f"unknown stage(s) {unknown}; choose from {', '.join(STAGE_NAMES)}")
    device = resolve_device_and_threads(args.device, args.threads)
    cfg = preset_config(args.preset, image_size=args.image_size, batch=args.batch)
    cfg.train.amp = args.amp
    print(machine_line(device), flush=True)
    unit = "images/s" if device.type == "cuda" else "images per CPU-second (process CPU time)"
    runners = build_runners(cfg, stages, args.batch, device)
    per_update = dict(zip(runners, warm_up(list(runners.values()), args.warmup_seconds, device), strict=True))
    steps = {key: steps_for(args.seconds, seconds) for key, seconds in per_update.items()}
    print(f"preset {args.preset}, {args.image_size}px, batch {args.batch}, amp {args.amp}, "
          f"{args.rounds} rounds x ~{args.seconds:g} s per mode ({min(steps.values())}-{max(steps.values())} "
          f"updates); rates in {unit}", flush=True)
    rates = alternating_rates({key: repeated(run, steps[key], args.batch) for key, run in runners.items()},
                              args.rounds, device)
    median = {key: statistics.median(r) for key, r in rates.items()}

    table = pd.DataFrame([{"stage": stage, "mode": mode, "images/s": median[(stage, mode)],
                           "min": min(rates[(stage, mode)]), "max": max(rates[(stage, mode)])}
                          for stage, mode in runners])
    print(table.to_string(index=False, float_format="{:.1f}".format))
    ratios, spreads = {}, {}
    for stage in stages:
        if STAGES[stage].teacher_stage is None:
            continue
        student, teacher, kd = (median[key] for key in runners if key[0] == stage)
        ideal = 1.0 / (1.0 / student + 1.0 / teacher)
        ratios[stage] = kd / ideal
        print(f"{stage}: kd {kd:.1f} images/s, ideal {ideal:.1f} images/s "
              f"(student training {student:.1f}, teacher inference {teacher:.1f})")
        rounds = [k / (1.0 / (1.0 / s + 1.0 / t))
                  for s, t, k in zip(*(rates[key] for key in runners if key[0] == stage), strict=True)]
        spreads[stage] = spread(rounds)
        print(f"{stage}: per-round kd/ideal {', '.join(f'{r:.3f}' for r in rounds)}; "
              f"spread {spreads[stage]:.3f}")
    if ratios:
        print(f"kd/ideal round spread: {max(spreads.values()):.3f} (the noisiest KD stage's)")
        print(f"kd/ideal throughput ratio: {min(ratios.values()):.2f}")


if __name__ == "__main__":
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        main()
