"""The shipped presets: a named set of YAML configs with its entry script.

``cnn`` (ResNet-50 -> ResNet-34 -> ResNet-18) and ``vit`` (ViT-Base -> ViT-Small -> ViT-Tiny)
are configurations, not code paths: each is a folder ``<preset>_distillation/`` holding
``train.py`` and ``configs/<dataset>.yaml``. The configs travel as package data, so an installed
``kd-pipeline`` finds them as a checkout does.
"""
from __future__ import annotations

from dataclasses import dataclass
from importlib.resources import files
from pathlib import Path

from src.utils.registry import Registry


@dataclass(frozen=True)
class Preset:
    """``package`` is the preset's folder (an importable package holding ``configs/``)."""

    name: str
    package: str
    description: str

    @property
    def config_dir(self) -> Path:
        return Path(str(files(self.package) / "configs"))

    def config_path(self, name: str) -> Path:
        """``configs/<name>.yaml`` of this preset."""
        return self.config_dir / f"{name}.yaml"


PRESETS: Registry[Preset] = Registry("preset")
PRESETS.register("cnn", Preset("cnn", "cnn_distillation", "ResNet-50 -> ResNet-34 -> ResNet-18"))
PRESETS.register("vit", Preset("vit", "vit_distillation", "ViT-Base -> ViT-Small -> ViT-Tiny"))
