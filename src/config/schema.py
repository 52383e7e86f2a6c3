"""The run configuration: one dataclass per concern, composed into ``RunConfig``.

YAML files and ``--set key=value`` overrides are validated against these types by
``src.config.loader`` (unknown keys and wrong types are errors that name the key).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal, Optional

from src.config.stage_overrides import StageOverrides
from src.data.settings import DataConfig
from src.distillation.settings import DistillationConfig
from src.engine.settings import TrainConfig
from src.models.settings import ModelsConfig

MAX_SEED = 2**63 - 1  # what every seeded library (torch, NumPy via a modulo, random) accepts


@dataclass
class RuntimeConfig:
    """Where and how the run executes."""

    seed: int = 42  # the split, and the training seed of a one-seed run
    seeds: Optional[list[int]] = None  # one chain per seed under <run>/seed-<n>/ (same split)
    deterministic: bool = False  # True: bit-reproducible CUDA kernels (slower); the CPU is exact either way
    device: Literal["auto", "cpu", "cuda"] = "auto"
    vram_budget_gb: Optional[float] = 6.0  # CUDA only; None disables the planner
    # torch.compile of the training step and the teacher's forward (src/engine/compiling.py);
    # auto: CUDA stages long enough to repay the compile time, never the CPU
    compile: Literal["auto", "on", "off"] = "auto"
    attention_every: int = 10  # ViT attention maps every N epochs (0 disables)


@dataclass
class ReportConfig:
    """What the end-of-run report adds beyond accuracy (never changes what was trained)."""

    benchmark: bool = True  # measure every stage's FLOPs, latency and throughput side by side


@dataclass
class RunConfig:
    """Everything a run needs; saved as ``config.yaml`` in the run directory."""

    data: DataConfig = field(default_factory=DataConfig)
    models: ModelsConfig = field(default_factory=ModelsConfig)
    # the chain, its labels-only baseline (did distillation help?) and the student taught by the
    # teacher directly (did the assistant help?): every run answers both questions
    stages: list[str] = field(
        default_factory=lambda: ["teacher", "assistant", "student", "baseline", "direct"])
    distillation: DistillationConfig = field(default_factory=DistillationConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    stage_overrides: StageOverrides = field(default_factory=StageOverrides)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    report: ReportConfig = field(default_factory=ReportConfig)

