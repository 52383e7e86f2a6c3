"""Train the CNN TAKD chain (teacher -> assistant -> student, plus a baseline).

Thin entry point: it only names the family; flags, configs and exit codes live in
src/pipeline/cli.py so both families behave the same. Run from anywhere, e.g.
`python cnn_distillation/train.py --epochs 3`; `--help` lists the flags.
"""
from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # make `src` importable as a script

from src.pipeline.cli import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main("cnn"))
