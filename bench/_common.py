"""What both benchmarks share: the families' GPU-sized defaults, building a stage's model and
objective exactly as the pipeline does, and a line describing the machine.

Benchmarks are scripts (``python bench/memory.py``), so this module also makes ``src``
importable from the repository root.
"""
from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import torch
from torch import nn

from src.config.loader import config_from_dict, read_yaml
from src.config.schema import RunConfig
from src.config.stage_settings import model_name
from src.config.stages import STAGES
from src.distillation.distiller import DistillationObjective
from src.engine.device import resolve_device as resolve_run_device
from src.engine.layout import to_training_layout
from src.engine.objective import CrossEntropyObjective, Objective
from src.errors import UserError
from src.runs.stage_models import build_model, is_vit_base
from src.utils.training_guards import enforce_gradient_checkpointing

NUM_CLASSES = 10  # CIFAR-10 shapes; the class count barely moves memory or speed

# The default GPU configurations the product promises to fit in 6 GB: ResNets on CIFAR-sized
# 32x32 images with batch 128, ViTs at 224x224 with an effective batch of 64.
GPU_DEFAULTS: dict[str, dict[str, Any]] = {
    "cnn": {
        "data": {"name": "cifar10", "image_size": 32},
        "models": {"family": "cnn", "teacher": "resnet50", "assistant": "resnet34", "student": "resnet18"},
        "train": {"batch_size": 128, "optimizer": "sgd"},
    },
    "vit": {
        "data": {"name": "cifar10", "image_size": 224},
        "models": {"family": "vit", "teacher": "vit_base", "assistant": "vit_small", "student": "vit_tiny"},
        "train": {"batch_size": 64, "optimizer": "adamw", "lr": 5e-4, "weight_decay": 0.05},
    },
}


def family_config(family: str, config_path: Optional[str] = None, image_size: Optional[int] = None,
                  batch: Optional[int] = None, optimizer: Optional[str] = None) -> RunConfig:
    """The family's GPU default (or a YAML config), validated like a real run's, with overrides."""
    raw = read_yaml(config_path) if config_path else {k: dict(v) for k, v in GPU_DEFAULTS[family].items()}
    raw.setdefault("models", {})["family"] = family
    raw.setdefault("runtime", {})["device"] = "auto"
    for section, key, value in (("data", "image_size", image_size), ("train", "batch_size", batch),
                                ("train", "optimizer", optimizer)):
        if value is not None:
            raw.setdefault(section, {})[key] = value
    return config_from_dict(raw)


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
    does (ViT-Base checkpointed, the training layout); memory and speed depend on shapes, not on
    trained weights."""
    torch.manual_seed(0)
    model = build_model(cfg, stage, NUM_CLASSES, initial=False)
    if is_vit_base(model_name(cfg, stage)):
        enforce_gradient_checkpointing(model, "vit_base", verbose=False)  # as train_stage does
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
