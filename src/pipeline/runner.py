"""Runs the stages of a TAKD run, each in its own scope, then writes the report.

A stage's model, optimizer (inside the Trainer), teacher and loaders are locals of
``train_stage``; when it returns they are unreachable, and only then does
``cleanup_training_state`` collect them and return the CUDA cache (a function cannot free
objects its caller still references).
"""
from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

from src.config.schema import RunConfig
from src.config.stage_settings import model_name
from src.config.stages import STAGES
from src.data.build import DataBundle
from src.engine.checkpoint import CheckpointStore
from src.engine.device import resolve_device
from src.engine.distributed import DistributedContext
from src.errors import UserError
from src.memory.cleanup import cleanup_training_state
from src.pipeline.teacher_from import apply_reuse, plan_reuse, reuse_data
from src.pipeline.train_stage import train_stage
from src.rundirs.inputs import run_data
from src.rundirs.lock import RunLock
from src.rundirs.provenance import Staleness, has_provenance, stale_reason
from src.rundirs.rundir import RunDirectory, check_output_dir, check_stage_plan, prepare_run_directory
from src.rundirs.seeds import Chain, adopt_one_seed_run, seed_chains
from src.utils.logger import setup_logging
from src.utils.reproducibility import determinism_note, setup_reproducibility

LOGGER = logging.getLogger("kd_pipeline.runner")


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


def _prepare(cfg: RunConfig, run_dir: RunDirectory, resume: str, dist: DistributedContext,
             chains: list[Chain], teacher_from: Path | None, config_notes: Sequence[str]) -> DataBundle:
    """Check and write the run directory and the split on rank 0, then let the other ranks read them.
    ``config_notes`` (retired keys of the config given) go to pipeline.log with the saved config's."""
    if dist.is_main:
        # Check everything (resume rules, then the data itself) before the first file is written,
        # so a mistake leaves no half-made run directory behind to trip the corrected command.
        prepare_run_directory(run_dir, cfg, resume, write=False)
        config_notes = [*config_notes, *run_dir.retired_notes()]  # before config.yaml is rewritten
        run_dir.remove_temp_files()
        adopted = adopt_one_seed_run(cfg, run_dir)  # before the plans: its stages are finished then
        reuse = plan_reuse(cfg, run_dir, chains, teacher_from) if teacher_from is not None else None
        for chain in chains:
            reused = reuse.stages_for(chain) if reuse is not None else []
            check_stage_plan(cfg.stages, chain.run_dir.finished_stages() + reused)
            for stage in chain.run_dir.finished_stages():  # a damaged result.json: one line, nothing trained
                chain.run_dir.read_result(stage)
        if reuse is None:
            data = run_data(cfg, run_dir.root, write=True)
        else:
            data = reuse_data(reuse, cfg, run_dir)
        notes = prepare_run_directory(run_dir, cfg, "auto", write=True)  # "never" was checked above
        setup_logging(log_file=run_dir.log_path)
        LOGGER.info("run directory %s, stages %s", run_dir.root, ",".join(cfg.stages))
        for note in [*config_notes, *([adopted] if adopted else [])]:
            LOGGER.info(note)
        for note in notes:
            LOGGER.info("config changed on resume (allowed): %s", note)
        for warning in data.warnings:
            LOGGER.warning(warning)
        if reuse is not None:
            apply_reuse(reuse)
        dist.barrier()
        return data
    dist.barrier()
    prepare_run_directory(run_dir, cfg, resume="auto", write=False)
    return run_data(cfg, run_dir.root)


def _stale(chain: Chain, stage: str, result: dict[str, Any], split_sha256: str) -> Staleness | None:
    """Why the finished ``stage`` of ``chain`` (its ``result``) no longer fits (its split, its
    teacher's weights now)."""
    teacher = STAGES[stage].teacher_stage
    teacher_result = (chain.run_dir.read_result(teacher)
                      if teacher is not None and chain.run_dir.result_path(teacher).is_file() else None)
    return stale_reason(stage, result, split_sha256, teacher_result)


def _refusal(chain: Chain, stale: Staleness, retrain: bool) -> UserError | None:
    """The fix for a stale stage this command may not set aside (every rank decides alike)."""
    stage = stale.stage
    if stage not in chain.cfg.stages:
        asked = ",".join(s for s in STAGES if s == stage or s in chain.cfg.stages)
        return UserError(f"{stage} is stale: {stale.reason}; add {stage} to --stages (e.g. --stages {asked})")
    if not retrain:
        return UserError(f"{stage} is stale: {stale.reason}; re-run with --resume auto, which moves it "
                         "aside and trains it again")
    return None


def _set_aside(chain: Chain, stale: Staleness) -> None:
    """Move a stale stage to ``<stage>.stale-<UTC time>/``: nothing is deleted."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    target = chain.run_dir.stage_dir(stale.stage).with_name(f"{stale.stage}.stale-{stamp}")
    os.replace(chain.run_dir.stage_dir(stale.stage), target)
    LOGGER.info("stage %s is stale (%s): moved to %s, training it again", stale.stage, stale.reason, target)


def _reuse_or_set_aside(chain: Chain, stage: str, split_sha256: str, dist: DistributedContext,
                        retrain: bool) -> bool:
    """Whether the finished ``stage`` is reused; a stale one is set aside (or refused)."""
    result = chain.run_dir.read_result(stage)
    stale = _stale(chain, stage, result, split_sha256)
    taught = [s for s in chain.cfg.stages if STAGES[s].teacher_stage == stage]
    if stale is not None and (stage in chain.cfg.stages or taught):
        refusal = _refusal(chain, stale, retrain)
        if refusal is not None:
            raise refusal
        dist.barrier()  # every rank has read the stage's result before rank 0 moves it
        if dist.is_main:
            _set_aside(chain, stale)
        dist.barrier()
        return False
    where = chain.run_dir.result_path(stage)
    if stale is not None:
        LOGGER.info("stage %s is stale (%s) but neither in --stages nor a teacher of one: kept as it is "
                    "(add it to --stages to train it again)", stage, stale.reason)
    elif not has_provenance(result):
        LOGGER.info("stage %s: finished earlier (%s) by a version that recorded no provenance "
                    "(history unknown), reusing it as it is", stage, where)
    elif stage in chain.cfg.stages:
        LOGGER.info("stage %s: finished earlier (%s), reusing its results", stage, where)
    if dist.is_main and stage in chain.cfg.stages:  # its spare checkpoints (also of runs made before pruning)
        CheckpointStore(chain.run_dir.stage_dir(stage)).prune(chain.cfg.train.keep_checkpoints)
    return True


def _run_chain(chain: Chain, data: DataBundle, device: torch.device, dist: DistributedContext,
               checkpoint: Path | None, retrain: bool) -> Path | None:
    """Train the chain's stages that have not finished, or are stale, in pipeline order (a stage
    is checked after its teacher has run); returns ``--resume PATH`` if still unused. ``retrain``:
    a stale stage may be set aside and trained again (``--resume auto``)."""
    for stage in STAGES:
        finished = chain.run_dir.result_path(stage).is_file()
        if finished and _reuse_or_set_aside(chain, stage, data.split.hash, dist, retrain):
            continue
        if stage not in chain.cfg.stages:
            continue
        stage_resume: str | Path = checkpoint if checkpoint is not None else "auto"
        checkpoint = None  # --resume PATH applies to the first stage still to run
        LOGGER.info("stage %s: %s (%s)", stage, model_name(chain.cfg, stage), STAGES[stage].description)
        train_stage(chain.cfg, stage, chain.run_dir, data, device=device, dist=dist, resume=stage_resume)
        cleanup_training_state(verbose=False)  # the stage's scope has ended: its objects are unreachable now
    return checkpoint


def run_pipeline(cfg: RunConfig, output_dir: str | Path, resume: str = "auto",
                 teacher_from: Path | None = None,
                 config_notes: Sequence[str] = ()) -> dict[str, dict[str, Any]]:
    """Run ``cfg.stages`` in ``output_dir`` (skipping finished ones), once per seed of
    ``runtime.seeds``; write and print the report. ``teacher_from`` reuses another run's
    finished teacher (and assistant, baseline) where they fit. ``config_notes`` are logged to
    pipeline.log (what the loader ignored: ``load_config(notes=...)``).

    Returns every finished stage's result.json content, in pipeline order (of the last seed's
    chain when there are several; each chain's are in its folder).
    """
    run_dir = RunDirectory(Path(output_dir))
    device = resolve_device(cfg.runtime.device)  # indexed: this rank's GPU under torchrun
    checkpoint = resume_target(resume)
    dist = DistributedContext.from_env(device)
    check_output_dir(run_dir.root)
    with RunLock(run_dir.root) if dist.is_main else contextlib.nullcontext():  # rank 0 alone writes
        return _run_chains(cfg, run_dir, resume, checkpoint, teacher_from, device, dist, config_notes)


def _run_chains(cfg: RunConfig, run_dir: RunDirectory, resume: str, checkpoint: Path | None,
                teacher_from: Path | None, device: torch.device, dist: DistributedContext,
                config_notes: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Everything ``run_pipeline`` does while it holds the run directory's lock."""
    from src.deploy.cost import run_costs
    from src.evidence.seeds_report import print_seeds_summary, write_seeds_report
    from src.pipeline.report import print_summary, write_report

    setup_reproducibility(cfg.runtime.seed, cfg.runtime.deterministic)
    chains = seed_chains(cfg, run_dir)
    data = _prepare(cfg, run_dir, resume, dist, chains, teacher_from, config_notes)
    LOGGER.info(determinism_note(cfg.runtime.deterministic, device))
    results: dict[int, dict[str, dict[str, Any]]] = {}
    for chain in chains:
        if len(chains) > 1:
            LOGGER.info("seed %d: chain in %s", chain.seed, chain.run_dir.root)
        # the run's split and images (one copy for every chain), this seed's augmentation
        chain_data = data if chain.seed == cfg.runtime.seed else data.with_seed(chain.seed)
        checkpoint = _run_chain(chain, chain_data, device, dist, checkpoint, retrain=resume == "auto")
        results[chain.seed] = {s: chain.run_dir.read_result(s) for s in chain.run_dir.finished_stages()}
    if dist.is_main:
        # costs follow the architectures and the image size, not a seed's weights: measured once
        first = chains[0]
        costs = (run_costs(cfg, first.run_dir, results[first.seed], device, data.num_classes)
                 if cfg.report.benchmark else None)
        summaries = [write_report(chain.run_dir, results[chain.seed], data.class_names, costs)
                     for chain in chains]
        if cfg.runtime.seeds is None:
            print_summary(summaries[0])
        else:
            print_seeds_summary(write_seeds_report(run_dir, chains, results, costs=costs))
    dist.barrier()
    return results[chains[-1].seed]
