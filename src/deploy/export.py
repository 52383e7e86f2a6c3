"""Export a finished stage to ONNX (or TorchScript) and prove the file against PyTorch.

    python export.py --run-dir runs/cnn-digits --stage student [--format onnx|torchscript]

The export is written to a temporary file, run on real test images of the run's own split next
to the PyTorch model, and only moved to ``<stage>/model.onnx`` when every top-1 prediction
agrees and the largest logit difference is within the tolerance: a file that is there is a file
that was proven. Its input contract (size, channel order, value range, mean/std, class names)
goes into ``<file>.json`` beside it.

ONNX uses the exporter torch ships as its default since 2.9 (``torch.export`` + onnxscript,
``dynamo=True``) at opset 20, with a dynamic batch dimension. The example batch has 2 images
because ``torch.export`` specialises a dimension of size 1; the check runs batches of 1 and
of ``--batch-size`` to prove the batch dimension really is free.
"""
from __future__ import annotations

import json
import warnings
from dataclasses import dataclass
from importlib.metadata import version
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import Subset

from src.data.build import DataBundle
from src.deploy.onnx_runtime import EXPORT_PACKAGES, OnnxClassifier, require
from src.engine.evaluation import evaluate_model
from src.errors import KDPipelineError, UserError, error_detail
from src.rundirs.inputs import run_data, stage_data
from src.rundirs.rundir import SEED_PREFIX, RunDirectory, open_run
from src.rundirs.seeds import chain_for
from src.rundirs.stage_models import load_stage_model
from src.utils.atomic import atomic_write_json, atomic_write_with
from src.utils.names import readable_name

FORMATS = {"onnx": "model.onnx", "torchscript": "model.torchscript.pt"}
ONNX_OPSET = 20
DEFAULT_IMAGES = 256
DEFAULT_TOLERANCE = 1e-3
CHECK_BATCH = 64
INPUT_NAME, OUTPUT_NAME = "images", "logits"


class ExportCheckFailed(KDPipelineError):
    """The exported model does not compute what the PyTorch model computes (exit code 1)."""


@dataclass(frozen=True)
class Parity:
    """How the exported model compared with PyTorch on the same real test images."""

    images: int
    max_abs_diff: float
    agree: int  # images with the same top-1 class
    accuracy: float  # the exported model's, on these images


class _SideBySide(nn.Module):
    """Runs the PyTorch model and the exported one on each batch; returns the exported logits."""

    def __init__(self, reference: nn.Module, exported: Any) -> None:
        super().__init__()
        self.reference, self.exported = reference, exported
        self.images, self.agree, self.max_abs_diff = 0, 0, 0.0

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        expected, actual = self.reference(images), self.exported(images)
        self.max_abs_diff = max(self.max_abs_diff, float((expected - actual).abs().max()))
        self.agree += int((expected.argmax(dim=1) == actual.argmax(dim=1)).sum())
        self.images += len(images)
        return actual


def compare(reference: nn.Module, exported: Any, data: DataBundle, images: int, seed: int) -> Parity:
    """Both models on the first ``images`` test images, through the evaluation data path: the first
    image alone, the rest in batches of ``CHECK_BATCH`` and a shorter last one (the exported batch
    dimension must really be free)."""
    pair = _SideBySide(reference.eval(), exported)
    count = min(images, len(data.test))
    parts = [(range(1), 1), (range(1, count), CHECK_BATCH)]
    y_true, y_pred = [], []
    for indices, batch in parts:
        if len(indices):
            result = evaluate_model(pair, Subset(data.test, indices), device=torch.device("cpu"),
                                    batch_size=batch, num_workers=0, seed=seed, num_classes=data.num_classes)
            y_true.append(result.y_true)
            y_pred.append(result.y_pred)
    accuracy = float((np.concatenate(y_true) == np.concatenate(y_pred)).mean())
    return Parity(images=pair.images, max_abs_diff=pair.max_abs_diff, agree=pair.agree, accuracy=accuracy)


def _export_onnx(model: nn.Module, image_size: int, path: Path) -> None:
    example = torch.zeros(2, 3, image_size, image_size)
    torch.onnx.export(model, (example,), str(path), dynamo=True, opset_version=ONNX_OPSET,
                      input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                      dynamic_shapes=({0: torch.export.Dim("batch")},), external_data=False, verbose=False)


def _export_torchscript(model: nn.Module, image_size: int, path: Path) -> None:
    example = torch.zeros(2, 3, image_size, image_size)
    with warnings.catch_warnings():  # asked for by name; the README says torch deprecates it
        warnings.filterwarnings("ignore", message=r".*torch\.jit.*deprecated", category=Warning)
        torch.jit.trace(model, example).save(str(path))


def _load_exported(fmt: str, path: Path) -> Any:
    if fmt == "onnx":
        return OnnxClassifier(path)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r".*torch\.jit.*deprecated", category=Warning)
        return torch.jit.load(str(path), map_location="cpu")


def finished_stage(run: RunDirectory, stage: str) -> dict[str, Any]:
    """The stage's result.json, once the stage has finished (load_stage_model checks its weights)."""
    if not run.result_path(stage).is_file():
        done = run.finished_stages()
        hint = (f"export a finished one ({', '.join(done)})" if done
                else "run the training command first")
        raise UserError(f"stage '{stage}' has not finished in {run.root} (no {stage}/result.json); "
                        f"re-run the training command to finish it, or {hint}")
    return run.read_result(stage)


def input_contract(fmt: str, path: Path, stage: str, result: dict[str, Any], data: DataBundle,
                   dataset: str, parity: Parity) -> dict[str, Any]:
    """What a deployment must feed the file and how to read what it returns."""
    size = data.image_size
    packages = ("torch", *EXPORT_PACKAGES) if fmt == "onnx" else ("torch",)
    return {
        "file": path.name, "format": fmt, "opset": ONNX_OPSET if fmt == "onnx" else None,
        "stage": stage, "architecture": result.get("model"), "dataset": dataset,
        "weights_sha256": result.get("weights_sha256"),
        "input": {
            "name": INPUT_NAME if fmt == "onnx" else None, "shape": ["batch", 3, size, size],
            "dtype": "float32", "layout": "NCHW", "channel_order": "RGB",
            "preprocessing": [f"resize the shorter side to {size} px (bilinear, antialiased) and centre-crop "
                              f"{size}x{size}; grey images are repeated to 3 channels",
                              "scale uint8 pixels to [0, 1] (divide by 255)",
                              "normalise per channel: (x - mean) / std"],
            "mean": list(data.mean), "std": list(data.std),
        },
        "output": {"name": OUTPUT_NAME if fmt == "onnx" else None, "shape": ["batch", data.num_classes],
                   "dtype": "float32",
                   "meaning": "logits: argmax is the index into class_names; softmax gives probabilities"},
        "class_names": [readable_name(name) for name in data.class_names],  # no lone surrogate in JSON
        "check": {"split": "test", "images": parity.images, "top1_agree": parity.agree,
                  "max_abs_logit_diff": parity.max_abs_diff, "accuracy": parity.accuracy},
        "exported_with": {name: version(name) for name in packages},
    }


def contract_path(path: Path) -> Path:
    """The input contract beside an exported file (``model.onnx.json``)."""
    return path.with_name(path.name + ".json")


def check_export_current(path: Path, chain: RunDirectory, stage: str, top: Path) -> None:
    """An exported file is scored as ``stage`` only while its contract names the weights the stage
    holds now: a stage continued or trained again after export.py leaves the old file behind."""
    result = finished_stage(chain, stage)
    seed = f" --seed {chain.root.name.removeprefix(SEED_PREFIX)}" if chain.root != top else ""
    fix = f"re-export it: python export.py --run-dir {top} --stage {stage}{seed}"
    try:
        recorded = json.loads(contract_path(path).read_text(encoding="utf-8")).get("weights_sha256")
    except (OSError, ValueError, AttributeError):  # missing, not JSON, or JSON of another shape
        raise UserError(f"{path} has no readable {contract_path(path).name} naming the weights it was "
                        f"exported from, so it cannot be scored as stage {stage}; {fix}") from None
    if recorded != result.get("weights_sha256"):
        raise UserError(f"{path} was exported from other weights than stage {stage}'s current "
                        f"{chain.weights_path(stage)} (trained again since?), so it is stale; {fix}")


def export_stage(run_dir: Path, stage: str, fmt: str = "onnx", *, images: int = DEFAULT_IMAGES,
                 tolerance: float = DEFAULT_TOLERANCE, seed: int | None = None,
                 data_dir: str | None = None) -> tuple[Path, Parity]:
    """Write ``<stage>/model.onnx`` (or the TorchScript file) and its contract; returns (file, parity).
    In a run with several seeds the stage of ``seed``'s chain (default: the first seed) is exported.
    ``data_dir`` is where the run's data is now (default: where it was trained); its split.json
    proves it is the same data.

    Raises UserError for bad input and ExportCheckFailed when the export does not match PyTorch
    (nothing is written then).
    """
    if fmt not in FORMATS:
        raise UserError(f"unknown export format {fmt!r}; use one of {', '.join(FORMATS)}")
    if images < 1 or not tolerance > 0:
        raise UserError(f"--images must be at least 1 and --tolerance positive (got {images}, {tolerance})")
    if fmt == "onnx":
        require(*EXPORT_PACKAGES, purpose="ONNX export")
    top, cfg = open_run(run_dir, data_dir=data_dir)
    run = chain_for(cfg, top, seed).run_dir  # the run itself, or seed-<n>/ of a run with several seeds
    result = finished_stage(run, stage)
    data = stage_data(cfg, run_data(cfg, top.root), stage)  # the stage's own size and normalisation
    model = load_stage_model(cfg, run, stage, data.num_classes, result)[0].eval()
    target = run.stage_dir(stage) / FORMATS[fmt]
    writer = _export_onnx if fmt == "onnx" else _export_torchscript
    checked: list[Parity] = []

    def write_and_check(tmp: Path) -> None:
        try:
            writer(model, data.image_size, tmp)
        except Exception as exc:  # the exporters raise many types; the first line says what failed
            raise ExportCheckFailed(f"{fmt} export of {result.get('model')} failed: {error_detail(exc)}; "
                                    "try the other --format") from exc
        parity = compare(model, _load_exported(fmt, tmp), data, images, cfg.runtime.seed)
        if parity.agree != parity.images or parity.max_abs_diff > tolerance:
            raise ExportCheckFailed(
                f"the {fmt} export of stage '{stage}' does not match PyTorch on the test split: top-1 "
                f"agrees on {parity.agree}/{parity.images} images, largest logit difference "
                f"{parity.max_abs_diff:.3g} (tolerance {tolerance:g}); nothing was written. Try the other "
                "--format, or report it with your torch and onnxruntime versions")
        checked.append(parity)

    atomic_write_with(target, write_and_check)
    atomic_write_json(contract_path(target),
                      input_contract(fmt, target, stage, result, data, cfg.data.name, checked[0]))
    return target, checked[0]
