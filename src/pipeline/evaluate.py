"""Score a saved checkpoint or model.safetensors of a run on one of its splits.

The run directory says everything needed to rebuild the model and the data exactly as trained:
config.yaml (architecture, image size) and split.json (which samples are test/val/train).
"""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from torch import nn

from src.data.build import build_datasets
from src.deploy.onnx_runtime import onnx_model_for
from src.engine.checkpoint import CheckpointStore
from src.engine.device import resolve_device
from src.engine.evaluation import EvalResult, evaluate_model
from src.errors import UserError, error_detail
from src.pipeline.cli import OneLineParser, user_path
from src.pipeline.rundir import open_run
from src.pipeline.seeds import run_dir_of
from src.pipeline.stages import STAGES, build_model
from src.pipeline.train_stage import load_weights
from src.utils.logger import SPLIT_METRICS

SPLITS = ("test", "val", "train")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="evaluate.py",
        description="Score a stage's checkpoint_best.pt, checkpoint_latest.pt or model.safetensors "
        "on a split of the run it belongs to; a model.onnx from export.py is scored through ONNX Runtime.",
    )
    parser.add_argument("--checkpoint", type=user_path, required=True,
                        help="a .pt checkpoint, model.safetensors or model.onnx")
    parser.add_argument("--run-dir", type=user_path,
                        help="the run directory (default: the one the file is in, e.g. RUN/student/ or "
                        "RUN/seed-42/student/)")
    parser.add_argument("--split", choices=SPLITS, default="test")
    parser.add_argument("--stage", choices=tuple(STAGES),
                        help="whose architecture (default: the file's metadata or folder)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--batch-size", type=int, default=256)
    return parser


def _stage_of(checkpoint: Path, given: str | None) -> str:
    """The stage whose architecture the file holds: ``--stage``, safetensors metadata, or its folder."""
    if given:
        return given
    if checkpoint.suffix == ".safetensors":
        try:
            with safe_open(str(checkpoint), framework="pt") as handle:
                stage = (handle.metadata() or {}).get("stage")
        except SafetensorError as exc:
            raise UserError(f"{checkpoint} is not a readable safetensors file: {exc}") from None
        if stage in STAGES:
            return stage
    if checkpoint.parent.name in STAGES:
        return checkpoint.parent.name
    raise UserError(f"cannot tell which stage {checkpoint} belongs to; pass --stage")


def _load_into(model: nn.Module, checkpoint: Path) -> None:
    if checkpoint.suffix == ".safetensors":
        load_weights(model, checkpoint)
        return
    state = CheckpointStore(checkpoint.parent).load(checkpoint)["model"]  # the engine saves the bare model
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise UserError(f"checkpoint {checkpoint} does not fit this run's model: "
                        f"{error_detail(exc)}") from None


def evaluate_file(checkpoint: Path, run_dir: Path, split: str = "test", *, stage: str | None = None,
                  device: str = "auto", batch_size: int = 256) -> tuple[str, EvalResult]:
    """(stage, metrics) of ``checkpoint`` on ``split`` of the run in ``run_dir``."""
    if checkpoint.is_dir():
        raise UserError(f"checkpoint {checkpoint} is a directory; pass a checkpoint_*.pt, "
                        "model.safetensors or model.onnx file inside it")
    if not checkpoint.is_file():
        raise UserError(f"checkpoint {checkpoint} does not exist")
    if batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {batch_size}")
    run, cfg = open_run(run_dir)
    stage = _stage_of(checkpoint, stage)
    data = build_datasets(cfg.data, run.root, cfg.runtime.seed, write=False, models=cfg.models)
    if checkpoint.suffix == ".onnx":  # the deployed artifact, through ONNX Runtime (src/deploy)
        model, target = onnx_model_for(checkpoint, cfg.data.image_size, data.num_classes, run_dir, device)
    else:
        model = build_model(cfg, stage, data.num_classes, initial=False)
        _load_into(model, checkpoint)
        target = resolve_device(device)
    dataset = {"test": data.test, "val": data.val, "train": data.train}[split]
    result = evaluate_model(model.to(target), dataset, device=target, batch_size=batch_size,
                            num_workers=0, seed=cfg.runtime.seed, num_classes=data.num_classes)
    return stage, result


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        with torch.inference_mode():
            run_dir = args.run_dir or run_dir_of(args.checkpoint)
            stage, result = evaluate_file(args.checkpoint, run_dir, args.split, stage=args.stage,
                                          device=args.device, batch_size=args.batch_size)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    metrics = {name: getattr(result, name) for name in SPLIT_METRICS}
    print(json.dumps({"checkpoint": str(args.checkpoint), "stage": stage, "split": args.split,
                      "samples": len(result.y_true), **metrics}, indent=2))
    return 0
