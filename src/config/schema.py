"""The run configuration: one dataclass per concern, composed into ``RunConfig``.

YAML files and ``--set key=value`` overrides are validated against these types by
``src.config.loader`` (unknown keys and wrong types are errors that name the key).
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Literal, Optional

from src.config.stage_overrides import StageOverrides
from src.distillation.config import DistillationConfig
from src.engine.config import EngineConfig

STAGE_NAMES = ("teacher", "assistant", "student", "baseline", "direct")
MIN_SUBSET = 2  # samples per split: a one-sample training batch breaks batch norm
MAX_SEED = 2**63 - 1  # what every seeded library (torch, NumPy via a modulo, random) accepts


@dataclass
class DataConfig:
    """Which images, how they are split and how they are shown to the model."""

    name: Literal["digits", "cifar10", "cifar100", "imagefolder"] = "digits"
    data_dir: str = "data"
    download: bool = False
    image_size: int = 16
    val_fraction: float = 0.15  # of the data (digits) or of the official train split (cifar, imagefolder)
    test_fraction: float = 0.15  # digits, and imagefolder without test/: carved from train
    subset: Optional[int] = None  # at most N samples per split (MIN_SUBSET or more), stratified
    augment: bool = True  # random crop with padding (+ horizontal flip where it makes sense)
    device_cache_gb: float = 1.0  # uint8 images up to this size live on the training device; larger: workers


@dataclass
class ModelsConfig:
    """The timm architectures of each role and how they are initialised."""

    family: Literal["cnn", "vit"] = "cnn"
    teacher: str = "resnet50"
    assistant: str = "resnet34"
    student: str = "resnet18"
    small_input: Optional[bool] = None  # None: on when image_size < 64 (3x3 stem / small patches)
    patch_size: Optional[int] = None  # ViT only; None: follows the image size
    pretrained: bool = False  # teacher only: timm hub where online, or teacher_weights
    teacher_weights: Optional[str] = None  # local .safetensors/.pth/.bin file for the teacher
    drop_path_rate: float = 0.0


@dataclass
class RuntimeConfig:
    """Where and how the run executes."""

    seed: int = 42  # the split, and the training seed of a one-seed run
    seeds: Optional[list[int]] = None  # one chain per seed under <run>/seed-<n>/ (same split)
    deterministic: bool = False  # True: bit-reproducible CUDA kernels (slower); the CPU is exact either way
    device: Literal["auto", "cpu", "cuda"] = "auto"
    vram_budget_gb: Optional[float] = 6.0  # CUDA only; None disables the planner
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
    stages: list[str] = field(default_factory=lambda: ["teacher", "assistant", "student", "baseline"])
    distillation: DistillationConfig = field(default_factory=DistillationConfig)
    train: EngineConfig = field(default_factory=EngineConfig)
    stage_overrides: StageOverrides = field(default_factory=StageOverrides)
    runtime: RuntimeConfig = field(default_factory=RuntimeConfig)
    report: ReportConfig = field(default_factory=ReportConfig)


assert tuple(f.name for f in fields(StageOverrides)) == STAGE_NAMES, "one override section per stage"
