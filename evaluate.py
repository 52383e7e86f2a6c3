"""Score a saved checkpoint, model.safetensors or exported model.onnx on a split of its run.

    python evaluate.py --checkpoint runs/cnn-digits/student/model.safetensors --split test
    python evaluate.py --checkpoint runs/cnn-digits/student/model.onnx --split test   # ONNX Runtime

Thin entry point; the work is in src/pipeline/evaluate.py.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))  # make `src` importable as a script

from src.pipeline.evaluate import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main())
