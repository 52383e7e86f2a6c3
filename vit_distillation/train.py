"""Train the VIT preset's TAKD chain (teacher -> assistant -> student, plus a baseline).

Thin entry point: it only names the preset; flags, configs and exit codes live in
src/cli/train.py, shared by every preset and by `kd-pipeline train --preset vit`.
Run from anywhere, e.g. `python vit_distillation/train.py --epochs 3`; `--help` lists the flags.
"""
import sys

try:
    from src.cli.train import main
except ModuleNotFoundError as missing:  # a checkout that was never installed
    print(f"error: {missing}; install kd-pipeline first: pip install -e . (make does it)", file=sys.stderr)
    raise SystemExit(2) from None

if __name__ == "__main__":
    raise SystemExit(main("vit"))
