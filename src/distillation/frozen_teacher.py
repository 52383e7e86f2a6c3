"""``freeze_teacher``: the teacher of a KD stage only produces soft targets, so it must build no
gradient graph and keep fixed BatchNorm statistics (re-exported by ``src.utils.training_guards``);
``compile_teacher``: its forward compiled for a compiled stage."""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from src.engine.compiling import CompiledModule, CompileSettings
from src.utils.logger import announce

_FP32_BYTES = 4
_MB = 1e6  # decimal megabytes, the unit the summary prints


@dataclass(frozen=True)
class FreezeReport:
    """What ``freeze_teacher`` did: parameters (elements) frozen out of the model's total."""

    frozen_params: int
    total_params: int

    @property
    def gradient_mb_saved(self) -> float:
        """FP32 gradient memory the frozen parameters no longer need (MB = 1e6 bytes)."""
        return self.frozen_params * _FP32_BYTES / _MB


def freeze_teacher(model: nn.Module, verbose: bool = True) -> FreezeReport:
    """Put ``model`` in eval mode and stop gradients for every parameter.

    A teacher only produces soft targets: with gradients on, every forward would build a graph
    and reserve gradient buffers for nothing. Eval mode also fixes BatchNorm statistics and
    disables dropout so its targets are deterministic. Returns a :class:`FreezeReport`.
    """
    model.eval()
    for param in model.parameters():
        param.requires_grad_(False)
    total = sum(p.numel() for p in model.parameters())
    frozen = sum(p.numel() for p in model.parameters() if not p.requires_grad)
    report = FreezeReport(frozen_params=frozen, total_params=total)
    if verbose:
        announce(
            f"Teacher frozen: {frozen:,} / {total:,} parameters\n"
            f"  mode: eval(), requires_grad=False\n"
            f"  FP32 gradient memory saved: {report.gradient_mb_saved:.1f} MB"
        )
    return report


def compile_teacher(teacher: nn.Module, settings: CompileSettings, device: torch.device) -> CompiledModule:
    """The frozen teacher's forward, compiled. Its shapes are static and it needs no gradients,
    so on CUDA it is captured as a CUDA graph: one launch per forward instead of one per kernel
    (the teacher's forward is a large share of a KD step). Eager again if compiling fails."""
    return CompiledModule(teacher, "frozen teacher's forward", settings, device, cuda_graphs=True)
