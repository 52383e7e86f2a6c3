"""``kd-pipeline evaluate`` / ``python evaluate.py``: score a saved checkpoint, model.safetensors or
model.onnx on a split of its run (the work is in src/pipeline/scoring.py)."""
from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

import torch

from src.config.stages import STAGES
from src.errors import UserError
from src.pipeline.scoring import SPLITS, evaluate_file, finished_best
from src.rundirs.seeds import run_dir_of
from src.utils.cli_args import OneLineParser, user_path
from src.utils.logger import SPLIT_METRICS


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="evaluate.py",
        description="Score a stage's model.safetensors (a finished stage's best weights) or a checkpoint "
        "(checkpoint_latest.pt; checkpoint_best.pt while it trains) on a split of the run it belongs to; "
        "a model.onnx from export.py is scored through ONNX Runtime.",
    )
    parser.add_argument("--checkpoint", type=user_path, required=True,
                        help="a .pt checkpoint, model.safetensors or model.onnx")
    parser.add_argument("--run-dir", type=user_path,
                        help="the run directory (default: the one the file is in, e.g. RUN/student/ or "
                        "RUN/seed-42/student/)")
    parser.add_argument("--data-dir", type=user_path,
                        help="where the run's data is now, if it moved since training (default: the "
                        "folder it was trained on); split.json checks it is the same data")
    parser.add_argument("--split", choices=SPLITS, default="test")
    parser.add_argument("--stage", choices=tuple(STAGES),
                        help="whose architecture (default: the file's metadata or folder)")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto")
    parser.add_argument("--batch-size", type=int, default=256)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        with torch.inference_mode():
            checkpoint = finished_best(args.checkpoint)
            if checkpoint != args.checkpoint:
                print(f"note: {args.checkpoint.name} is not kept once a stage has finished; scoring "
                      f"{checkpoint}, the same best weights", file=sys.stderr)
            run_dir = args.run_dir or run_dir_of(checkpoint)
            stage, result = evaluate_file(checkpoint, run_dir, args.split, stage=args.stage,
                                          device=args.device, batch_size=args.batch_size,
                                          data_dir=args.data_dir)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    metrics = {name: getattr(result, name) for name in SPLIT_METRICS}
    print(json.dumps({"checkpoint": str(checkpoint), "stage": stage, "split": args.split,
                      "samples": len(result.y_true), **metrics}, indent=2))
    return 0
