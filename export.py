"""Export a finished stage to ONNX (or TorchScript), proven against PyTorch on the run's test images.

    python export.py --run-dir runs/cnn-digits --stage student [--format onnx|torchscript]

Thin entry point; the work is in src/deploy/export.py.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # make `src` importable as a script

from src.deploy.export import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main())
