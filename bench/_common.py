"""What the benchmarks share: the presets' shipped configs (loaded by the product's own config
loader), building a stage's model and objective exactly as the pipeline does, and a line
describing the machine.

Benchmarks are scripts (``python bench/memory.py``) over the installed package (``pip install -e
.``, as ``make`` does; ``make gpu-check`` sets PYTHONPATH instead).
"""
from __future__ import annotations

import os
import platform
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from src.config.loader import load_config
from src.config.presets import PRESETS
from src.config.schema import RunConfig
from src.config.stage_settings import model_name, stage_config
from src.config.stages import STAGES
from src.distillation.distiller import DistillationObjective
from src.engine.device import resolve_device as resolve_run_device
from src.engine.layout import to_training_layout
from src.engine.objective import CrossEntropyObjective, Objective
from src.errors import UserError
from src.models.checkpointing import require_gradient_checkpointing
from src.rundirs.stage_models import build_model

NUM_CLASSES = 10  # CIFAR-10 shapes; the class count barely moves memory or speed
GPU_CONFIG = "cifar10"  # each preset's GPU configuration: what the product promises to fit in 6 GB


def preset_config(preset: str, config: Optional[str] = None, image_size: Optional[int] = None,
                  batch: Optional[int] = None, optimizer: Optional[str] = None) -> RunConfig:
    """A preset's shipped config (``config``: its name in the preset's configs/, default the GPU
    one, or a YAML path), loaded and validated like a real run's, with the benchmark's overrides."""
    path = Path(config) if config and config.endswith((".yaml", ".yml")) else \
        PRESETS[preset].config_path(config or GPU_CONFIG)
    overrides = ["runtime.device=auto"] + [f"{key}={value}" for key, value in (
        ("data.image_size", image_size), ("train.batch_size", batch), ("train.optimizer", optimizer))
        if value is not None]
    try:
        return load_config(path, overrides)
    except UserError as exc:
        raise SystemExit(f"error: {exc}") from None


def add_preset_flag(parser: Any, *, both: bool = False) -> None:
    """``--preset``: one of the registry's presets (or all of them, when ``both``)."""
    names = PRESETS.names()
    parser.add_argument("--preset", choices=[*names, "all"] if both else names,
                        default="all" if both else names[0],
                        help="which preset's shipped config to measure" + (" (default: all)" if both else ""))


def chosen_presets(choice: str) -> tuple[str, ...]:
    return PRESETS.names() if choice == "all" else (choice,)


@dataclass
class StageSetup:
    """A stage's student, its objective (with the frozen teacher for KD stages) and their names."""

    stage: str
    name: str
    model: nn.Module
    objective: Objective
    teacher_name: Optional[str]
    teacher: Optional[nn.Module]


def build_stage(cfg: RunConfig, stage: str, device: torch.device) -> StageSetup:
    """Fresh (random-weight) models for ``stage``, on ``device``, set up as the pipeline's stage
    does (checkpointed when the stage's ``train.grad_checkpointing`` is on, the training layout);
    memory and speed depend on shapes, not on trained weights."""
    torch.manual_seed(0)
    model = build_model(cfg, stage, NUM_CLASSES, initial=False)
    if stage_config(cfg, stage).train.grad_checkpointing == "on":  # as train_stage does
        require_gradient_checkpointing(model, model_name(cfg, stage), f"stage_overrides.{stage}")
    model.to(device)
    to_training_layout(model, cfg.train, device)  # as the planner does before it measures
    teacher_stage = STAGES[stage].teacher_stage
    if teacher_stage is None:
        return StageSetup(stage, model_name(cfg, stage), model,
                          CrossEntropyObjective(cfg.train.label_smoothing), None, None)
    teacher = build_model(cfg, teacher_stage, NUM_CLASSES, initial=False).to(device)
    objective = DistillationObjective(teacher, cfg.distillation, label_smoothing=cfg.train.label_smoothing)
    return StageSetup(stage, model_name(cfg, stage), model, objective, model_name(cfg, teacher_stage),
                      teacher)


def synthetic_batch(batch: int, image_size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Random images and labels already on ``device``: the benchmarks time compute, not data loading."""
    gen = torch.Generator().manual_seed(0)
    images = torch.randn(batch, 3, image_size, image_size, generator=gen)
    labels = torch.randint(0, NUM_CLASSES, (batch,), generator=gen)
    return images.to(device), labels.to(device)


def resolve_device(name: str) -> torch.device:
    """The pipeline's device resolution (an indexed CUDA device); a bad choice ends the script."""
    try:
        return resolve_run_device(name)
    except UserError as exc:
        raise SystemExit(f"error: {exc}") from None


def add_threads_flag(parser: Any) -> None:
    parser.add_argument("--threads", type=int, default=1,
                        help="CPU threads for torch (default 1: on a shared 2-core machine a second "
                             "thread mostly spin-waits on the first and makes timings erratic)")


def resolve_device_and_threads(device_name: str, threads: int) -> torch.device:
    device = resolve_device(device_name)
    if device.type == "cpu":
        torch.set_num_threads(threads)
    return device


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_line(device: torch.device) -> str:
    """Where the numbers come from: device, threads, library versions."""
    if device.type == "cuda":
        where = f"{torch.cuda.get_device_name(device)} (CUDA {torch.version.cuda})"
    else:
        where = f"CPU {cpu_model()}, {os.cpu_count()} cores, {torch.get_num_threads()} torch thread(s)"
    return f"machine: {where}; torch {torch.__version__}, python {platform.python_version()}"


def add_timing_flags(parser: Any, *, seconds: float, warmup_seconds: float, rounds: int) -> None:
    """``--seconds``, ``--warmup-seconds``, ``--rounds``: benchmarks sized by time, not steps, so a
    fast GPU gets as long a measurement as a slow CPU (a few hundred steps on an H-class GPU last
    under a second: too short to rise above its clock and launch noise)."""
    parser.add_argument("--seconds", type=float, default=seconds,
                        help=f"timed seconds per side (or mode) per round (default {seconds:g})")
    parser.add_argument("--warmup-seconds", type=float, default=warmup_seconds,
                        help="seconds of untimed work first: kernels, allocator, optimizer state; on a GPU "
                             f"it also brings the clocks up (default {warmup_seconds:g})")
    parser.add_argument("--rounds", type=int, default=rounds,
                        help=f"alternating rounds; the median counts, the spread shows (default {rounds})")


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def warm_up(runs: Sequence[Callable[[], Any]], seconds: float, device: torch.device) -> list[float]:
    """Call ``runs`` in turn (each at least twice) until ``seconds`` have passed; returns each
    one's wall seconds per call over the calls after its first. A GPU runs at its full clock only
    after some seconds of load, so the timed rounds start after this."""
    times: list[list[float]] = [[] for _ in runs]
    start = time.perf_counter()
    while not all(len(t) >= 2 for t in times) or time.perf_counter() - start < seconds:
        for run, took in zip(runs, times, strict=True):
            synchronize(device)
            began = time.perf_counter()
            run()
            synchronize(device)
            took.append(time.perf_counter() - began)
    return [statistics.mean(took[1:]) for took in times]


def steps_for(seconds: float, seconds_per_step: float, minimum: int = 1) -> int:
    """How many steps fill ``seconds`` (at least ``minimum``)."""
    return max(minimum, round(seconds / max(seconds_per_step, 1e-9)))


def spread(values: Sequence[float]) -> float:
    """(max - min) / median of per-round figures: how far apart rounds of the same thing land; a
    difference between two sides smaller than this is noise."""
    return (max(values) - min(values)) / statistics.median(values)
