"""Runs the stages of a TAKD run, each in its own scope, then writes the report.

A stage's model, optimizer (inside the Trainer), teacher and loaders are locals of
``train_stage``; when it returns they are unreachable, and only then does
``cleanup_training_state`` collect them and return the CUDA cache. This is the fix for the
seed's cleanup function, which could not free objects its caller still referenced.
"""
from __future__ import annotations

import contextlib
import logging
from pathlib import Path
from typing import Any

import torch

from src.config.schema import RunConfig
from src.data.build import DataBundle, build_datasets
from src.engine.checkpoint import CheckpointStore
from src.engine.distributed import DistributedContext
from src.errors import UserError
from src.pipeline.lock import RunLock
from src.pipeline.rundir import RunDirectory, check_output_dir, prepare_run_directory
from src.pipeline.stages import STAGES, model_name
from src.pipeline.train_stage import train_stage
from src.utils.logger import setup_logging
from src.utils.reproducibility import setup_reproducibility
from src.utils.training_guards import cleanup_training_state

LOGGER = logging.getLogger("kd_pipeline.runner")


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; asking for CUDA without it is a user error."""
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for, but no CUDA device is available; "
                        "use --device cpu or auto")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def resume_target(resume: str) -> Path | None:
    """The checkpoint file of ``--resume PATH`` (None for auto/never); a missing file is a user error."""
    if resume in ("auto", "never"):
        return None
    path = Path(resume).expanduser()
    if path.is_dir():
        raise UserError(f"--resume {resume} is a directory; pass a checkpoint_*.pt file inside it "
                        "(or --resume auto with --output-dir to continue that run)")
    if not path.is_file():
        raise UserError(f"--resume {resume}: no such checkpoint file "
                        "(use auto, never, or the path of a checkpoint_*.pt file)")
    return path


def _prepare(cfg: RunConfig, run_dir: RunDirectory, resume: str, dist: DistributedContext) -> DataBundle:
    """Check and write the run directory and the split on rank 0, then let the other ranks read them."""
    if dist.is_main:
        # Check everything (resume rules, then the data itself) before the first file is written,
        # so a mistake leaves no half-made run directory behind to trip the corrected command.
        prepare_run_directory(run_dir, cfg, resume, write=False)
        run_dir.remove_temp_files()
        data = build_datasets(cfg.data, run_dir.root, cfg.runtime.seed, write=True)
        notes = prepare_run_directory(run_dir, cfg, "auto", write=True)  # "never" was checked above
        setup_logging(log_file=run_dir.log_path)
        LOGGER.info("run directory %s, stages %s", run_dir.root, ",".join(cfg.stages))
        for note in notes:
            LOGGER.info("config changed on resume (allowed): %s", note)
        dist.barrier()
        return data
    dist.barrier()
    prepare_run_directory(run_dir, cfg, resume="auto", write=False)
    return build_datasets(cfg.data, run_dir.root, cfg.runtime.seed, write=False)


def run_pipeline(cfg: RunConfig, output_dir: str | Path, resume: str = "auto") -> dict[str, dict[str, Any]]:
    """Run ``cfg.stages`` in ``output_dir`` (skipping finished ones), write and print the report.

    Returns every finished stage's result.json content, in pipeline order.
    """
    run_dir = RunDirectory(Path(output_dir))
    device = resolve_device(cfg.runtime.device)
    checkpoint = resume_target(resume)
    dist = DistributedContext.from_env(device)
    if dist.enabled and device.type == "cuda":
        device = torch.device("cuda", dist.local_rank)
    check_output_dir(run_dir.root)
    with RunLock(run_dir.root) if dist.is_main else contextlib.nullcontext():  # rank 0 alone writes
        return _run_stages(cfg, run_dir, resume, checkpoint, device, dist)


def _run_stages(cfg: RunConfig, run_dir: RunDirectory, resume: str, checkpoint: Path | None,
                device: torch.device, dist: DistributedContext) -> dict[str, dict[str, Any]]:
    from src.pipeline.report import print_summary, write_report

    setup_reproducibility(cfg.runtime.seed, cfg.runtime.deterministic)
    data = _prepare(cfg, run_dir, resume, dist)
    finished = set(run_dir.finished_stages())
    for stage in cfg.stages:
        if stage in finished:
            LOGGER.info("stage %s: finished earlier (%s), reusing its results",
                        stage, run_dir.result_path(stage))
            if dist.is_main:  # a finished stage's spare checkpoints (also of runs made before pruning)
                CheckpointStore(run_dir.stage_dir(stage)).prune(cfg.train.keep_checkpoints)
            continue
        stage_resume: str | Path = checkpoint if checkpoint is not None else "auto"
        checkpoint = None  # --resume PATH applies to the first stage still to run
        LOGGER.info("stage %s: %s (%s)", stage, model_name(cfg, stage), STAGES[stage].description)
        train_stage(cfg, stage, run_dir, data, device=device, dist=dist, resume=stage_resume)
        cleanup_training_state(verbose=False)  # the stage's scope has ended: its objects are unreachable now
    results = {stage: run_dir.read_result(stage) for stage in run_dir.finished_stages()}
    if dist.is_main:
        summary = write_report(run_dir, results, class_names=data.class_names)
        print_summary(summary)
    dist.barrier()
    return results
