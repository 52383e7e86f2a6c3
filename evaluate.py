"""Score a saved checkpoint, model.safetensors or exported model.onnx on a split of its run.

    python evaluate.py --checkpoint runs/cnn-digits/student/model.safetensors --split test
    python evaluate.py --checkpoint runs/cnn-digits/student/model.onnx --split test   # ONNX Runtime

Thin entry point, the same as `kd-pipeline evaluate`; the command is src/cli/evaluate.py.
"""
import sys

try:
    from src.cli.evaluate import main
except ModuleNotFoundError as missing:  # a checkout that was never installed
    print(f"error: {missing}; install kd-pipeline first: pip install -e . (make does it)", file=sys.stderr)
    raise SystemExit(2) from None

if __name__ == "__main__":
    raise SystemExit(main())
