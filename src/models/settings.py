"""The ``models:`` section: the timm architecture of each role and how they are initialised."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional


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
