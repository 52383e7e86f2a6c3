"""The command-line interface: ``kd-pipeline train|evaluate|export`` (installed by ``pip install -e .``)
and the top-level scripts, which are thin shims over the same functions."""
from __future__ import annotations

import sys
from collections.abc import Sequence

USAGE = """usage: kd-pipeline COMMAND [ARGS]

commands:
  train [--preset cnn|vit] ...   train teacher -> assistant -> student (and baseline); --help for flags
  evaluate ...                   score a checkpoint, model.safetensors or model.onnx on a split of its run
  export ...                     export a finished stage to ONNX or TorchScript, proven against PyTorch
"""


def _train(argv: list[str]) -> int:
    """``train [--preset NAME] FLAGS``: the preset's entry script with the same flags."""
    from src.cli.train import main as train_main
    from src.config.presets import PRESETS
    from src.utils.cli_args import OneLineParser

    pick = OneLineParser(prog="kd-pipeline train", add_help=False)
    pick.add_argument("--preset", choices=PRESETS.names(), default=PRESETS.names()[0])
    chosen, rest = pick.parse_known_args(argv)
    return train_main(chosen.preset, rest)


def main(argv: Sequence[str] | None = None) -> int:
    """``kd-pipeline COMMAND ...``: dispatch to the command's own parser (exit codes as documented)."""
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] in ("-h", "--help"):
        print(USAGE, end="")
        return 0 if args else 2
    command, rest = args[0], args[1:]
    if command == "train":
        return _train(rest)
    if command == "evaluate":
        from src.cli.evaluate import main as evaluate_main

        return evaluate_main(rest)
    if command == "export":
        from src.cli.export import main as export_main

        return export_main(rest)
    print(f"error: unknown command {command!r} (see kd-pipeline --help)", file=sys.stderr)
    return 2
