"""The ``models:`` section: the timm architecture of each role, the size its stages see and how
they are initialised."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional


@dataclass
class RoleImageSizes:
    """``models.image_size.<role>``: the square input size of that role's stages (null:
    ``data.image_size``). Each stage sees the run's images at its own size."""

    teacher: Optional[int] = None
    assistant: Optional[int] = None
    student: Optional[int] = None


@dataclass
class ModelsConfig:
    """The timm architectures of each role (any timm model name, or a short name such as
    ``resnet50`` or ``vit_base``) and how they are initialised."""

    teacher: str = "resnet50"
    assistant: str = "resnet34"
    student: str = "resnet18"
    image_size: RoleImageSizes = field(default_factory=RoleImageSizes)
    small_input: Optional[bool] = None  # None: a small-image conv stem when the stage's size < 64
    patch_size: Optional[int] = None  # patch-embedding models only; None: follows the image size
    pretrained: bool = False  # teacher only: timm hub where online, or teacher_weights
    teacher_weights: Optional[str] = None  # local .safetensors/.pth/.bin file for the teacher
    drop_path_rate: float = 0.0
