"""ONNX Runtime behind a ``torch.nn.Module`` face, and the one-line error when ONNX is not installed.

onnx, onnxscript and onnxruntime are an optional extra (requirements-export.txt): training never
needs them. Wrapping an ``InferenceSession`` as a module lets the very code that scores PyTorch
checkpoints (``src.engine.evaluation.evaluate_model``) score the deployed file, so both get the
same metrics by construction.
"""
from __future__ import annotations

import importlib
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import nn

from src.errors import UserError, error_detail

EXPORT_PACKAGES = ("onnx", "onnxscript", "onnxruntime")
INSTALL_HINT = "python -m pip install -r requirements-export.txt"


def require(*packages: str, purpose: str) -> dict[str, ModuleType]:
    """Import ``packages`` or raise the one-line UserError saying how to install them."""
    modules, missing = {}, []
    for name in packages:
        try:
            modules[name] = importlib.import_module(name)
        except ImportError:
            missing.append(name)
    if missing:
        raise UserError(f"{purpose} needs {', '.join(packages)} ({', '.join(missing)} not installed); "
                        f"install them with: {INSTALL_HINT}")
    return modules


class OnnxClassifier(nn.Module):
    """An ONNX image classifier run by ONNX Runtime on the CPU: float32 NCHW in, logits out."""

    def __init__(self, path: Path) -> None:
        super().__init__()
        ort = require("onnxruntime", purpose="running an ONNX model")["onnxruntime"]
        try:
            self.session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        except Exception as exc:  # ORT raises its own pybind classes (InvalidProtobuf, Fail, ...)
            raise UserError(f"{path} is not a readable ONNX model: {error_detail(exc)}") from None
        (self.input,), (self.output,) = self.session.get_inputs(), self.session.get_outputs()
        self.path = path

    def input_shape(self) -> list[Any]:
        """The declared input shape, e.g. ``['batch', 3, 32, 32]``."""
        return list(self.input.shape)

    def output_shape(self) -> list[Any]:
        return list(self.output.shape)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        array = images.detach().to("cpu", torch.float32).contiguous().numpy()
        (logits,) = self.session.run([self.output.name], {self.input.name: array})
        return torch.from_numpy(logits).to(images.device)


def check_fits(model: OnnxClassifier, image_size: int, num_classes: int, run_dir: Path) -> None:
    """Refuse an ONNX file made for other images or classes than the run's stage takes (a wrong
    --run-dir or --stage)."""
    expected_in = [3, image_size, image_size]
    if model.input_shape()[1:] != expected_in or model.output_shape()[1:] != [num_classes]:
        raise UserError(
            f"{model.path} takes {model.input_shape()} and gives {model.output_shape()}, but the run in "
            f"{run_dir} feeds this stage {image_size}x{image_size} RGB images of {num_classes} classes; "
            "pass the --run-dir (and --stage) it was exported from"
        )


def onnx_model_for(path: Path, image_size: int, num_classes: int, run_dir: Path,
                   device: str) -> tuple[OnnxClassifier, torch.device]:
    """The ONNX file ready to score on a run's split (ONNX Runtime's CPU provider, the one installed)."""
    if device == "cuda":
        raise UserError("ONNX files are scored by ONNX Runtime on the CPU; drop --device cuda "
                        "(or score model.safetensors on the GPU)")
    model = OnnxClassifier(path)
    check_fits(model, image_size, num_classes, run_dir)
    return model, torch.device("cpu")
