"""What ``checkpoint_latest.pt`` holds, and how a resume puts it back.

``TrainingState`` is the trainer's one ``state_dict``/``load_state_dict`` object (as Tally and
EarlyStopping are for their own parts): it gathers every part the trainer owns (weights,
optimizer, schedule, scaler, early stopping, running sums, position, RNG, the epochs.csv rows)
into one weights_only-safe dict and puts a loaded dict back, after ``src.engine.resume_rules`` has
said the saved run may be continued under the current settings (``facts``).
"""
from __future__ import annotations

import dataclasses
import logging
import math
from pathlib import Path
from typing import Any, Literal, Optional, Protocol, Union

import torch
from torch import nn

from src.engine.checkpoint import CheckpointStore, library_versions
from src.engine.distributed import DistributedContext
from src.engine.divergence import has_diverged
from src.engine.early_stopping import EarlyStopping
from src.engine.objective import Objective
from src.engine.optim import LRSchedule
from src.engine.resume_rules import check_resume
from src.engine.settings import TrainConfig
from src.engine.tally import Tally
from src.utils.logger import EpochLogger
from src.utils.metrics import PredictionAccumulator
from src.utils.reproducibility import capture_rng_state, restore_rng_state

# What a checkpoint must hold to be resumed (a weights-only file is not enough).
RESUME_KEYS = ("model", "optimizer", "schedule", "scaler", "epoch", "samples_done", "global_step",
               "early_stopping", "epoch_tally", "interval_tally", "accumulator", "epoch_elapsed",
               "train_time", "peak_memory_mb", "rng", "micro_batch", "engine_config", "run_fingerprint",
               "objective", "world_size")


class Resumable(Protocol):
    """What ``TrainingState`` reads and restores: the trainer's parts (src/engine/trainer.py)."""

    cfg: TrainConfig
    lr: float
    seed: int
    run_fingerprint: dict[str, Any]
    objective: Objective
    dist: DistributedContext
    resume: Union[Literal["auto", "never"], Path]
    store: CheckpointStore
    stage_dir: Path
    logger: logging.Logger
    model: nn.Module
    optimizer: torch.optim.Optimizer
    schedule: LRSchedule
    scaler: Optional[torch.amp.GradScaler]
    early: EarlyStopping
    epoch_tally: Tally
    interval_tally: Tally
    accumulator: PredictionAccumulator
    epochs_log: Optional[EpochLogger]
    epoch: int
    samples_done: int
    global_step: int
    epoch_elapsed: float
    train_time: float
    peak_memory_mb: Optional[float]
    micro_batch: int
    window: int


class TrainingState:
    """The resumable state of ``trainer``; ``epoch_rows`` are the loaded checkpoint's epochs.csv rows."""

    def __init__(self, trainer: Resumable) -> None:
        self.trainer = trainer
        self.epoch_rows: Optional[list[dict[str, Any]]] = None

    def facts(self) -> dict[str, Any]:
        """What a resume must match (see src.engine.resume_rules)."""
        t = self.trainer
        engine = dataclasses.asdict(t.cfg)
        engine["lr"] = t.lr
        return {"run": {**t.run_fingerprint, "seed": t.seed}, "objective": t.objective.fingerprint(),
                "engine": engine, "world_size": t.dist.world_size}

    def state_dict(self, epoch_elapsed: float) -> dict[str, Any]:
        t = self.trainer
        facts = self.facts()
        return {
            "model": t.model.state_dict(),
            "optimizer": t.optimizer.state_dict(),
            "schedule": t.schedule.state_dict(),
            "scaler": t.scaler.state_dict() if t.scaler is not None else None,
            "epoch": t.epoch,
            "samples_done": t.samples_done,
            "global_step": t.global_step,
            "early_stopping": t.early.state_dict(),
            "best_metric": t.early.best,
            "epoch_tally": t.epoch_tally.state_dict(),
            "interval_tally": t.interval_tally.state_dict(),
            "accumulator": t.accumulator.state_dict(),
            "epoch_elapsed": epoch_elapsed,
            "train_time": t.train_time,
            "peak_memory_mb": t.peak_memory_mb,
            "rng": capture_rng_state(),
            "seed": t.seed,
            "micro_batch": t.micro_batch,
            "accumulation_steps": math.ceil(t.window / t.micro_batch),
            "epoch_rows": t.epochs_log.rows if t.epochs_log is not None else [],
            "engine_config": facts["engine"],
            "run_fingerprint": facts["run"],
            "objective": facts["objective"],
            "world_size": facts["world_size"],
            "library_versions": library_versions(),
        }

    def load_state_dict(self, state: dict[str, Any], *, keep_micro_batch: bool = True) -> None:
        """Put ``state`` back into the trainer's parts. ``keep_micro_batch``: resume with the
        checkpoint's micro-batch (an earlier out-of-memory fallback) rather than the configured one."""
        t = self.trainer
        t.model.load_state_dict(state["model"])
        t.optimizer.load_state_dict(state["optimizer"])
        t.schedule.load_state_dict(state["schedule"])
        if t.scaler is not None and state["scaler"] is not None:
            t.scaler.load_state_dict(state["scaler"])
        t.early.load_state_dict(state["early_stopping"])
        t.epoch, t.samples_done = int(state["epoch"]), int(state["samples_done"])
        t.global_step = int(state["global_step"])
        t.epoch_tally.load_state_dict(state["epoch_tally"])
        t.interval_tally.load_state_dict(state["interval_tally"])
        t.accumulator.load_state_dict(state["accumulator"])
        t.epoch_elapsed, t.train_time = float(state["epoch_elapsed"]), float(state["train_time"])
        t.peak_memory_mb = state["peak_memory_mb"]
        if keep_micro_batch:
            t.micro_batch = int(state["micro_batch"])
        self.epoch_rows = state.get("epoch_rows")  # checkpoints before this key: None
        restore_rng_state(state["rng"])

    def resume(self) -> tuple[Optional[Path], dict[str, tuple[Any, Any]]]:
        """Load the checkpoint the trainer's ``resume`` points at, if any, and continue from it.
        Returns the file and the allowed setting changes (key -> (saved, current))."""
        t = self.trainer
        if t.resume == "never":
            return None, {}
        if t.resume == "auto":
            found = t.store.load_latest()
            if found is None:
                return None, {}
            state, path = found
        else:
            path = Path(t.resume)
            state = t.store.load(path)
        saved = {"run": state["run_fingerprint"], "objective": state["objective"],
                 "engine": state["engine_config"], "world_size": state["world_size"]}
        diverged = has_diverged(t.stage_dir)
        advice = (f"Re-run with the old values to continue it, or delete {t.stage_dir} to train the stage "
                  "from scratch") if t.resume == "auto" else (
                  "Pass a checkpoint of this stage and these settings, or leave out --resume to continue "
                  "(or start) the stage in the run directory")
        changes = check_resume(saved, self.facts(), str(path), diverged=diverged, advice=advice)
        self.load_state_dict(state, keep_micro_batch="batch_size" not in changes
                             and "accumulation_steps" not in changes)
        if t.dist.is_main and t.samples_done == 0 and t.early.best_epoch == t.epoch - 1 > 0:
            t.store.link_best(path)  # a crash may have come between saving this state and linking it
        t.logger.info("resuming %s at epoch %d (update %d) from %s%s", t.stage_dir.name, t.epoch,
                      t.global_step, path, " after a divergence" if diverged else "")
        return path, changes
