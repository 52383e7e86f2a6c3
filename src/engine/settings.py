"""The `train:` section (`TrainConfig`): everything that decides how one classifier is trained.

Kept free of pipeline notions (teachers, stages) so the engine can train any classifier.
Every field is a plain, YAML-friendly value; ``src.config`` validates types and names.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional


@dataclass
class TrainConfig:
    """How to train one stage. ``batch_size`` is the micro-batch a step sees; the effective
    batch is ``batch_size * accumulation_steps`` (the OOM fallback and the memory planner
    change the split, never the product)."""

    epochs: int = 10
    batch_size: int = 64
    accumulation_steps: int = 1
    lr: float = 0.05
    optimizer: Literal["sgd", "adamw"] = "sgd"
    momentum: float = 0.9
    nesterov: bool = True
    weight_decay: float = 5e-4
    scheduler: Literal["cosine", "step", "plateau", "onecycle", "constant"] = "cosine"
    warmup_epochs: float = 0.0  # linear warmup length, in epochs (fractions allowed)
    min_lr: float = 0.0
    step_size: int = 30  # step schedule: epochs between decays
    gamma: float = 0.1  # step/plateau decay factor
    grad_clip: Optional[float] = None  # max global grad norm, applied after unscaling
    amp: Literal["auto", "off", "fp16", "bf16"] = "auto"  # auto: bf16 if supported else fp16, CUDA only
    channels_last: bool = True  # CNNs on CUDA only
    # on: always (any device); auto: the memory planner decides on CUDA; off: never
    grad_checkpointing: Literal["auto", "on", "off"] = "auto"
    monitor: str = "val_loss"  # any val_* column of epochs.csv
    mode: Literal["min", "max"] = "min"
    patience: Optional[int] = 10  # validation epochs without strict improvement; None disables
    min_delta: float = 0.0
    label_smoothing: float = 0.0
    log_interval: int = 20  # optimizer steps between metrics.jsonl records / host syncs
    checkpoint_every_steps: Optional[int] = None
    checkpoint_every_minutes: Optional[float] = None
    keep_checkpoints: int = 1  # full training checkpoints a finished stage keeps (see CheckpointStore.prune)
    nonfinite_policy: Literal["raise", "skip"] = "raise"
    max_oom_retries: int = 4
    num_workers: int = 0
    tensorboard: bool = False
    progress: Literal["auto", "bar", "plain", "off"] = "auto"
