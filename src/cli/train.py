"""The training command (``kd-pipeline train``, ``<preset>_distillation/train.py``), and the one
place exceptions become exit codes.

``cnn_distillation/train.py`` and ``vit_distillation/train.py`` only name their preset, which
picks the default config folder and the default run directory name (``runs/<preset>-<dataset>``);
any config runs under any entry point. The flags, their precedence (defaults < YAML < flags <
``--set``) and the exit-code contract live here so the entry points can never drift apart.
"""
from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from src.config.presets import PRESETS
from src.config.stages import STAGE_NAMES
from src.data.registry import DATASETS
from src.data.settings import DataConfig
from src.engine.signals import CommandInterrupted, CommandSignals
from src.errors import KDPipelineError, UserError
from src.utils.cli_args import OneLineParser, user_path

# flag destination -> dotted config key (None values mean "flag not given")
FLAG_KEYS = {
    "dataset": "data.name",
    "data_dir": "data.data_dir",
    "download": "data.download",
    "image_size": "data.image_size",
    "subset": "data.subset",
    "stages": "stages",
    "epochs": "train.epochs",
    "batch_size": "train.batch_size",
    "lr": "train.lr",
    "num_workers": "train.num_workers",
    "seed": "runtime.seed",
    "seeds": "runtime.seeds",
    "device": "runtime.device",
    "vram_budget": "runtime.vram_budget_gb",
}


def seed_list(text: str) -> list[int]:
    """``--seeds 42,43,44`` -> [42, 43, 44] (argparse turns a ValueError into the one-line error)."""
    return [int(part) for part in text.split(",") if part.strip()]


def build_parser(preset: str) -> argparse.ArgumentParser:
    """The training command's flags (docs/CONTRACTS.md, "Command line")."""
    parser = OneLineParser(
        prog=f"{PRESETS[preset].package}/train.py",
        description=f"Teacher -> assistant -> student knowledge distillation (default config: the "
        f"{preset} preset, {PRESETS[preset].description}). Re-running the same command continues an "
        "interrupted run.",
        epilog="Exit codes: 0 done, 2 user error, 3 training diverged, 130/143 interrupted "
        "(a checkpoint was saved; re-run to continue).",
    )
    add = parser.add_argument
    borrowed = "".join(f", {spec.config}.yaml for {name}" for name, spec in DATASETS.items()
                       if spec.config != name)
    add("--config", type=user_path, help="YAML config, any preset's or your own (default: "
        f"configs/<dataset>.yaml of this preset; {DataConfig().name}.yaml without --dataset{borrowed})")
    add("--dataset", choices=DATASETS.names(), help="which images to train on (the datasets registered in "
        "src/data/registry.py)")
    add("--data-dir", type=lambda text: str(user_path(text)),
        help="where datasets live (cifar: torchvision layout; imagefolder: class folders)")
    add("--download", action="store_true", default=None, help="allow torchvision to download CIFAR")
    add("--output-dir", type=user_path, help="the run directory (default: runs/<preset>-<dataset>)")
    add("--stages", help=f"comma list of {','.join(STAGE_NAMES)}")
    add("--epochs", type=int, help="epochs of every stage (replaces a config's per-stage "
        "stage_overrides.<stage>.epochs; --set can still set one)")
    add("--batch-size", type=int, help="micro-batch per step (effective batch = this x accumulation)")
    add("--lr", type=float, help="base learning rate (scaled per model size)")
    add("--image-size", type=int, help="square input size in pixels (8 or more; models.image_size.<role> "
        "sets one role's)")
    add("--seed", type=int, help="decides the split, initialisation and data order")
    add("--seeds", type=seed_list, metavar="N,N,...",
        help="train the chain once per seed under OUTPUT_DIR/seed-<n>/ (one split, made with --seed) "
        "and report mean, spread and a 95%% interval over seeds and test images")
    add("--teacher-from", type=Path, metavar="RUN_DIR",
        help="reuse the finished teacher (and assistant, baseline where their settings match) of "
        "another run instead of training them")
    add("--device", choices=("auto", "cpu", "cuda"), help="auto: CUDA when available")
    add("--subset", type=int, help="use at most N samples per split (stratified), for quick runs")
    add("--num-workers", type=int, help="data-loader worker processes")
    add("--vram-budget", type=float, metavar="GB", help="GPU memory budget for the micro-batch planner")
    add("--resume", default="auto", metavar="auto|never|PATH",
        help="auto (default): continue the run in --output-dir; never: refuse a non-empty run "
        "directory; PATH: continue the stage in progress from this checkpoint file")
    add("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override any config key by its dotted path (repeatable), e.g. train.grad_clip=1.0")
    return parser


def default_config_path(preset: str, dataset: str | None) -> Path:
    """The preset's config that ``dataset`` starts from (its registration's ``config``; the
    default dataset's when none is named)."""
    return PRESETS[preset].config_path(DATASETS[dataset or DataConfig().name].config)


def load_run_config(preset: str, args: argparse.Namespace, notes: list[str] | None = None) -> Any:
    """The validated RunConfig for these flags (the preset's default config unless --config names
    one); a line per retired key the config held goes to ``notes``."""
    from src.config.loader import load_config

    path = args.config if args.config is not None else default_config_path(preset, args.dataset)
    values = {key: getattr(args, dest) for dest, key in FLAG_KEYS.items()}
    return load_config(path, args.overrides, values, notes=notes)


def run(preset: str, argv: Sequence[str] | None = None) -> None:
    """Parse flags, then run the pipeline and print the summary (raises on failure)."""
    from src.memory.allocator import configure_cuda_allocator
    from src.pipeline.runner import run_pipeline

    args = build_parser(preset).parse_args(argv)
    configure_cuda_allocator()  # expandable segments unless the user chose; before CUDA starts
    notes: list[str] = []
    cfg = load_run_config(preset, args, notes)
    output_dir = args.output_dir or Path("runs") / f"{preset}-{cfg.data.name}"
    run_pipeline(cfg, output_dir, resume=args.resume, teacher_from=args.teacher_from, config_notes=notes)


def exit_code_for(exc: BaseException) -> int:
    """The documented exit code of an exception that ends the command."""
    if isinstance(exc, (KDPipelineError, CommandInterrupted)):
        return exc.exit_code
    if isinstance(exc, KeyboardInterrupt):
        return 130
    return 1


def _interrupted(signum: int) -> str:
    name = "Ctrl-C" if signum == signal.SIGINT else signal.Signals(signum).name
    return (f"interrupted: stopped by {name}; every finished stage is saved: "
            "re-run the same command to continue")


def main(preset: str, argv: Sequence[str] | None = None) -> int:
    """Run the command and return its exit code; errors the user can fix print one line, no traceback.
    SIGINT/SIGTERM outside training end it with 130/143 and one line, also when the signal arrived
    where Python ignores exceptions (a plotting callback)."""
    signals = CommandSignals()
    try:
        with signals:
            run(preset, argv)
    except UserError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return exit_code_for(exc)
    except KDPipelineError as exc:  # diverged (3) or interrupted after a checkpoint (130/143)
        print(f"error: {exc}" if exc.exit_code == 3 else str(exc), file=sys.stderr)  # "interrupted by ..."
        return exit_code_for(exc)
    except CommandInterrupted as exc:
        print(_interrupted(exc.signum), file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print(_interrupted(signal.SIGINT), file=sys.stderr)
        return 130
    if signals.received is not None:  # raised where it was ignored: the command still stops here
        print(_interrupted(signals.received), file=sys.stderr)
        return 128 + signals.received
    return 0
