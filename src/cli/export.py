"""``kd-pipeline export`` / ``python export.py``: a finished stage to ONNX or TorchScript, proven
against PyTorch on the run's test images (the work is in src/deploy/export.py)."""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from src.config.stages import STAGES
from src.deploy.export import (
    DEFAULT_IMAGES,
    DEFAULT_TOLERANCE,
    FORMATS,
    ONNX_OPSET,
    contract_path,
    export_stage,
)
from src.errors import KDPipelineError
from src.utils.cli_args import OneLineParser, user_path


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="export.py",
        description="Export a finished stage's model.safetensors to ONNX (dynamic batch, opset "
        f"{ONNX_OPSET}) or TorchScript, checked against PyTorch on the run's test images.",
        epilog="Exit codes: 0 exported and checked, 1 the export does not match PyTorch (nothing "
        "written), 2 bad input.",
    )
    parser.add_argument("--run-dir", type=user_path, required=True, help="the training run's --output-dir")
    parser.add_argument("--stage", choices=tuple(STAGES), default="student")
    parser.add_argument("--data-dir", type=user_path,
                        help="where the run's data is now, if it moved since training (default: the "
                        "folder it was trained on); split.json checks it is the same data")
    parser.add_argument("--format", dest="fmt", choices=tuple(FORMATS), default="onnx")
    parser.add_argument("--seed", type=int,
                        help="in a run with several seeds (--seeds): whose chain (default: the first seed)")
    parser.add_argument("--images", type=int, default=DEFAULT_IMAGES,
                        help=f"test images to check the export on (default {DEFAULT_IMAGES})")
    parser.add_argument("--tolerance", type=float, default=DEFAULT_TOLERANCE,
                        help=f"largest logit difference accepted (default {DEFAULT_TOLERANCE:g})")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        path, parity = export_stage(args.run_dir, args.stage, args.fmt, images=args.images,
                                    tolerance=args.tolerance, seed=args.seed,
                                    data_dir=args.data_dir)
    except KDPipelineError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    detail = f"ONNX opset {ONNX_OPSET}" if args.fmt == "onnx" else "TorchScript (traced)"
    print(f"exported stage {args.stage} to {path} ({detail}, dynamic batch dimension)")
    print(f"checked against PyTorch on {parity.images} test images: largest logit difference "
          f"{parity.max_abs_diff:.3g}, top-1 agrees on {parity.agree}/{parity.images} "
          f"(accuracy {100 * parity.accuracy:.2f}%)")
    print(f"input contract: {contract_path(path)}")
    return 0
