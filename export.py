"""Export a finished stage to ONNX (or TorchScript), proven against PyTorch on the run's test images.

    python export.py --run-dir runs/cnn-digits --stage student [--format onnx|torchscript]

Thin entry point, the same as `kd-pipeline export`; the command is src/cli/export.py.
"""
import sys

try:
    from src.cli.export import main
except ModuleNotFoundError as missing:  # a checkout that was never installed
    print(f"error: {missing}; install kd-pipeline first: pip install -e . (make does it)", file=sys.stderr)
    raise SystemExit(2) from None

if __name__ == "__main__":
    raise SystemExit(main())
