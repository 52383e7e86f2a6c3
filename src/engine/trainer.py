"""The training engine: trains one classifier for one stage, validates every epoch, keeps
exactly-resumable checkpoints and restores the best weights at the end.

The engine knows nothing about teachers: an Objective turns a batch into a loss. Everything a
resumed run needs to continue bit for bit (weights, optimizer, schedule, RNG, data position,
half-finished epoch sums) is in ``checkpoint_latest.pt``.
"""
from __future__ import annotations

import logging
import math
import signal
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, NamedTuple, Optional, Union

import pandas as pd
import torch
from torch import nn
from torch.utils.data import Dataset

from src.data.feed import UnreadableImage
from src.engine.checkpoint import LATEST, CheckpointStore
from src.engine.compiling import EAGER, CompiledModule, CompileSettings, should_compile
from src.engine.device_memory import DeviceMemory
from src.engine.distributed import DistributedContext
from src.engine.divergence import NonFiniteLossError, clear_divergence, record_divergence, validate_loss
from src.engine.early_stopping import EarlyStopping
from src.engine.evaluation import EvalResult, evaluate_model, num_classes_of
from src.engine.layout import to_training_layout
from src.engine.objective import Objective
from src.engine.optim import build_optimizer, build_schedule
from src.engine.progress import Progress
from src.engine.run_log import MetricsLog, open_tensorboard, read_records
from src.engine.sampling import MicroBatch, load_batches, plan_micro_batches, train_keys, window_sizes
from src.engine.settings import TrainConfig
from src.engine.signals import StopSignals
from src.engine.step import UpdateStep, resolve_precision
from src.engine.tally import Tally, micro_batch_contribution
from src.engine.training_state import RESUME_KEYS, TrainingState
from src.errors import DiskFullError, TrainingInterrupted, UserError
from src.utils.logger import MONITORABLE, SPLIT_METRICS, EpochLogger
from src.utils.metrics import PredictionAccumulator
from src.visualization.curves import plot_curves

ResumeMode = Union[Literal["auto", "never"], Path]
EpochCallback = Callable[[int, nn.Module], None]


@dataclass
class FitResult:
    """How a ``fit`` went. ``micro_batch``/``accumulation_steps`` are the final split (after any
    out-of-memory fallback); ``train_time_sec`` adds up every session of a resumed run. The peaks
    are the largest per-epoch CUDA peaks (MiB; None off CUDA, and on ranks other than 0 for the
    reserved one, which comes from metrics.jsonl's epoch records)."""

    best_epoch: int
    best_metric: float
    epochs_run: int
    stopped_early: bool
    resumed_from: Optional[Path]
    micro_batch: int
    accumulation_steps: int
    train_time_sec: float
    peak_gpu_memory_mb: Optional[float]
    peak_gpu_reserved_mb: Optional[float] = None


class _Piece(NamedTuple):
    """One micro-batch's results, held until its window's update is applied."""

    contribution: torch.Tensor  # see micro_batch_contribution
    parts: dict[str, torch.Tensor]
    samples: int
    preds: torch.Tensor  # predicted classes, not logits: [N] instead of [N, classes] held per window
    labels: torch.Tensor
    finite: torch.Tensor
    loss: torch.Tensor


class Trainer:
    """Trains ``model`` with ``objective`` on ``train_dataset`` (keys ``(epoch, index)``),
    validating on ``val_dataset`` (int keys); files go to ``stage_dir`` (rank 0 only)."""

    def __init__(self, model: nn.Module, objective: Objective, train_dataset: Dataset[Any],
                 val_dataset: Dataset[Any], config: TrainConfig, stage_dir: Path, *, device: torch.device,
                 seed: int, run_fingerprint: dict[str, Any], dist: Optional[DistributedContext] = None,
                 epoch_callbacks: Sequence[EpochCallback] = (), resume: ResumeMode = "auto",
                 lr: Optional[float] = None, logger: Optional[logging.Logger] = None,
                 compilation: CompileSettings = EAGER) -> None:
        if config.monitor not in MONITORABLE:
            raise UserError(f"cannot monitor {config.monitor!r}: choose one of {', '.join(MONITORABLE)}")
        if len(train_dataset) == 0 or len(val_dataset) == 0:  # type: ignore[arg-type]
            raise UserError("the training and validation sets must not be empty")
        self.cfg = config
        self.stage_dir = Path(stage_dir)
        self.device = device
        self.seed = seed
        self.run_fingerprint = dict(run_fingerprint)
        self.dist = dist or DistributedContext()
        self.epoch_callbacks = tuple(epoch_callbacks)
        self.resume = resume
        self.logger = logger or logging.getLogger("kd_pipeline.engine")
        self.train_dataset, self.val_dataset = train_dataset, val_dataset

        self.model = model.to(device)
        self.channels_last = to_training_layout(self.model, config, device)  # already so after planning
        self.memory = DeviceMemory(device)
        self.objective = objective.to(device)
        self.autocast_dtype, self.scaler = resolve_precision(config.amp, device)
        self.optimizer = build_optimizer(self.model, config, lr=lr, fused=device.type == "cuda")
        self.lr = config.lr if lr is None else lr

        self.micro_batch = config.batch_size
        self.window = config.batch_size * config.accumulation_steps  # samples per update, per rank
        self.samples_per_rank = math.ceil(len(train_dataset) / self.dist.world_size)  # type: ignore[arg-type]
        # the out-of-memory fallback never halves below this (BatchNorm cannot train on one sample)
        self.min_micro_batch = _smallest_micro_batch(model, config.batch_size, self.samples_per_rank)
        updates_per_epoch = len(window_sizes(self.samples_per_rank, self.window))
        self.schedule = build_schedule(self.optimizer, config, updates_per_epoch)
        self.early = EarlyStopping(config.monitor, config.mode, config.patience, config.min_delta)
        self.store = CheckpointStore(self.stage_dir, required_keys=RESUME_KEYS)
        self.checkpoint_state = TrainingState(self)  # what checkpoint_latest.pt holds
        self.epochs_log: Optional[EpochLogger] = None
        self.num_classes = num_classes_of(val_dataset, fallback=_output_classes(model))

        self.dist.broadcast_weights(self.model)  # every rank starts from rank 0's model
        self.stepper = UpdateStep(self.model, self.objective, self.optimizer, config, device,
                                  self.autocast_dtype, self.scaler, self.channels_last,
                                  self._compiled_model(compilation))

        # Position and running state: everything below goes into checkpoint_latest.pt.
        self.epoch = 1  # the epoch in progress (1-based)
        self.samples_done = 0  # samples this rank has consumed in that epoch
        self.global_step = 0  # optimizer updates attempted (applied or skipped)
        self.epoch_tally = Tally(device)
        self.interval_tally = Tally(device)
        self.accumulator = PredictionAccumulator(device)
        self.epoch_elapsed = 0.0  # seconds already spent on the epoch in progress
        self.train_time = 0.0
        self.peak_memory_mb: Optional[float] = None
        self.oom_history: list[str] = []

    # ------------------------------------------------------------------ public API

    def fit(self) -> FitResult:
        """Train until ``cfg.epochs`` or early stopping, resuming per ``resume``; returns with the
        best weights loaded into ``model``. Raises TrainingInterrupted on SIGINT/SIGTERM (after
        saving), NonFiniteLossError under the ``raise`` policy, IncompatibleResumeError."""
        with StopSignals() as signals:
            resumed_from, changes = self.checkpoint_state.resume()
            main = self.dist.is_main
            self.epochs_log = EpochLogger(self.stage_dir / "epochs.csv", resume_from_epoch=self.epoch - 1,
                                          saved_rows=self.checkpoint_state.epoch_rows) if main else None
            self.metrics_log = self._open_metrics_log(resumed_from is not None) if main else None
            if self.metrics_log is not None and resumed_from is not None:
                changed = {key: list(change) for key, change in changes.items()}
                self.metrics_log.append({"event": "resume", "step": self.global_step, "epoch": self.epoch,
                                         "from": str(resumed_from), "changed": changed})
            self.progress = Progress(self.cfg.progress, self.logger, main)
            try:
                self.stopping = self.early.should_stop
                while self.epoch <= self.cfg.epochs and not self.stopping:
                    self._train_epoch(signals)
                    self._finish_epoch()  # saves latest
                    if self.dist.any_flags(signals.received is not None)[0]:
                        raise self._interrupted(signals.received)
            except NonFiniteLossError as exc:
                if main:  # lets the recovery settings change on the next run (src/engine/divergence.py)
                    record_divergence(self.stage_dir, exc, self.epoch)
                raise
            finally:
                self.progress.close()
                if self.metrics_log is not None and self.metrics_log.tensorboard is not None:
                    self.metrics_log.tensorboard.close()
        epochs_run = self.epoch - 1
        self._restore_best()
        if main:
            self._plot_curves()
        return FitResult(
            best_epoch=self.early.best_epoch,
            best_metric=self.early.best,
            epochs_run=epochs_run,
            stopped_early=self.stopping and epochs_run < self.cfg.epochs,
            resumed_from=resumed_from,
            micro_batch=self.micro_batch,
            accumulation_steps=math.ceil(self.window / self.micro_batch),
            train_time_sec=self.train_time,
            peak_gpu_memory_mb=self.peak_memory_mb,
            peak_gpu_reserved_mb=self._peak_reserved_mb(),
        )

    def evaluate(self, dataset: Dataset[Any]) -> EvalResult:
        """Cross-entropy (sample weighted) and macro metrics of the current weights on ``dataset``."""
        return evaluate_model(
            self.model, dataset, device=self.device, batch_size=self.micro_batch,
            num_workers=self.cfg.num_workers, seed=self.seed,
            num_classes=num_classes_of(dataset, self.num_classes),
            dist=self.dist, autocast_dtype=self.autocast_dtype, channels_last=self.channels_last,
        )

    def _compiled_model(self, settings: CompileSettings) -> Optional[CompiledModule]:
        """The student's compiled forward (and the objective's teacher compiled) when
        ``runtime.compile`` applies to this stage (src/engine/compiling.py), else None."""
        if not should_compile(settings.mode, self.device, self.schedule.total_updates):
            return None
        self.logger.info("runtime.compile=%s: compiling the training step (%d updates on %s)",
                         settings.mode, self.schedule.total_updates, self.device.type)
        self.objective.compile(settings, self.device)
        return CompiledModule(self.model, "training step", settings, self.device, logger=self.logger)

    # ------------------------------------------------------------------ the epoch

    def _train_epoch(self, signals: StopSignals) -> None:
        self.objective.on_epoch_start(self.epoch, self.cfg.epochs)
        self.memory.reset_peaks()
        self.model.train()
        started = time.perf_counter()
        self._interval_started = started
        self._last_save = time.monotonic()
        while True:  # one pass per micro-batch size: an OOM fallback re-plans the rest of the epoch
            keys = train_keys(self.seed, self.epoch, len(self.train_dataset), self.dist.rank,  # type: ignore[arg-type]
                              self.dist.world_size, self.samples_done)
            plan = plan_micro_batches(keys, self.window, self.micro_batch)
            # samples_done is always a whole number of windows: the bar resumes where it was.
            done = self.samples_done // self.window * math.ceil(self.window / self.micro_batch)
            self.progress.start_epoch(self.epoch, self.cfg.epochs, len(plan), done)
            failed = self._run_plan(plan, signals, started)
            if failed is None:
                break
            self.progress.close()
            self._fall_back_after_oom(failed)
            # Only now, with _run_plan's frames and the exception gone, are the failed window's
            # tensors unreachable: emptying the cache earlier would return nothing.
            self.memory.release_cached()
        self.epoch_elapsed += time.perf_counter() - started
        self.progress.close()

    def _run_plan(self, plan: list[MicroBatch], signals: StopSignals, started: float) -> Optional[str]:
        """Train through ``plan``; returns None at its end, or what ran out of GPU memory (on this
        rank or another), after which every rank redoes or continues from the same window.

        Under DDP the ranks agree at the end of each window, before its gradients are averaged,
        that every rank computed its share; an out-of-memory error before that point (forward or
        backward of any micro-batch) makes every rank drop the window, so no rank is ever left
        waiting in a collective the others skipped (docs/ARCHITECTURE.md)."""
        loader = load_batches(self.train_dataset, [mb.keys for mb in plan], self.device, self.cfg.num_workers,
                              self.seed, "train", self.epoch)
        try:
            return self._run_batches(plan, loader, signals, started)
        except UnreadableImage as exc:  # a streamed folder's broken file: keep the updates made so far
            self._save_latest(epoch_elapsed=self.epoch_elapsed + time.perf_counter() - started)
            raise exc.mid_run(str(self.stage_dir / LATEST)) from None

    def _run_batches(self, plan: list[MicroBatch], loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
                     signals: StopSignals, started: float) -> Optional[str]:
        """``_run_plan``'s loop over the loaded micro-batches."""
        window: list[_Piece] = []
        for mb, (images, labels) in zip(plan, loader, strict=True):
            piece = self._compute(mb, images, labels)
            if piece is not None:
                window.append(piece)
                self.progress.advance()
                if not mb.last_in_window:
                    continue
            # The window is computed, or this rank ran out of memory in it: did every rank compute?
            if self.dist.any_flags(piece is None)[0]:
                return f"micro-batch {self.micro_batch}" + ("" if piece is None else " on another rank")
            step_oom, books_oom = self._finish_window(window, mb.window_samples)
            window = []
            failed = self._at_update_boundary(signals, started, step_oom, books_oom)
            if failed is not None:
                return failed
        return None

    def _compute(self, mb: MicroBatch, images: torch.Tensor, labels: torch.Tensor) -> Optional[_Piece]:
        """Forward and backward of one micro-batch; None when it ran out of memory. Returning
        from the except clause drops the exception, whose traceback holds the failed step's tensors."""
        n = len(mb.keys)
        try:
            out, finite, labels = self.stepper.forward_backward(images, labels, n / mb.window_samples)
            contribution, parts, preds = micro_batch_contribution(out, finite, labels)
            return _Piece(contribution, parts, n, preds, labels, finite, out.loss.detach())
        except torch.OutOfMemoryError:
            return None

    def _finish_window(self, window: list[_Piece], window_samples: int) -> tuple[bool, bool]:
        """Average the gradients over ranks, apply the window's update, then count it: the sums
        only take a window once its update has happened, so an OOM retry of the window never
        counts a sample twice, and an OOM after the update never applies it twice. Returns
        whether the optimizer step ran out of memory (nothing applied, gradients cleared) and
        whether the bookkeeping after it did (the update stands)."""
        self.dist.average_gradients(self.stepper.params)
        try:
            outcome = self.stepper.apply(torch.stack([piece.finite for piece in window]).all())
        except torch.OutOfMemoryError:
            return True, False
        # The update has happened: record the position and the schedule before anything below
        # allocates on the device, so an out-of-memory error there never redoes (re-applies) it.
        self.global_step += 1
        self.samples_done += window_samples
        if outcome.applied:
            self.schedule.step_update()
        if outcome.loss_nonfinite and self.cfg.nonfinite_policy == "raise":
            losses = torch.stack([piece.loss.float() for piece in window])
            validate_loss(losses[~torch.isfinite(losses)][0], self.global_step)  # raises NonFiniteLossError
        try:
            for piece in window:
                self.epoch_tally.add_micro_batch(piece.contribution, piece.parts, piece.samples)
                self.interval_tally.add_micro_batch(piece.contribution, piece.parts, piece.samples)
                self.accumulator.update(piece.preds, piece.labels)
            for tally in (self.epoch_tally, self.interval_tally):
                tally.add_update(outcome.applied, outcome.grad_norm)
        except torch.OutOfMemoryError:
            return False, True
        if not outcome.applied:
            self.progress.message(f"update {self.global_step} skipped: non-finite "
                                  f"{'loss' if outcome.loss_nonfinite else 'gradients'}")
        return False, False

    def _at_update_boundary(self, signals: StopSignals, started: float, step_oom: bool,
                            books_oom: bool) -> Optional[str]:
        """Log, checkpoint and obey signals; every rank takes the same decision. Returns what ran
        out of memory in the update on any rank (the caller falls back from it), or None."""
        every_steps = self.cfg.checkpoint_every_steps
        every_minutes = self.cfg.checkpoint_every_minutes
        time_due = every_minutes is not None and time.monotonic() - self._last_save >= every_minutes * 60
        update = self.global_step + 1 if step_oom else self.global_step  # ours failed: not counted
        stop, time_due, step_oom, books_oom = self.dist.any_flags(signals.received is not None, time_due,
                                                                   step_oom, books_oom)
        if step_oom:
            if self.dist.enabled:  # some ranks applied the update, others did not: they cannot agree again
                raise UserError(
                    f"out of GPU memory in the optimizer step of update {update} on at least one of the "
                    f"{self.dist.world_size} ranks, so the ranks' weights would differ; "
                    "raise --vram-budget if the GPUs have memory to spare, or free them of other "
                    "processes, then re-run the same command to continue from the last checkpoint"
                )
            return f"micro-batch {self.micro_batch} (optimizer step)"
        if self.global_step % self.cfg.log_interval == 0:
            self._log_interval()
        steps_due = every_steps is not None and self.global_step % every_steps == 0
        if stop or time_due or steps_due:
            elapsed_now = time.perf_counter() - started
            self._save_latest(epoch_elapsed=self.epoch_elapsed + elapsed_now)
        if stop:
            raise self._interrupted(signals.received)
        return f"micro-batch {self.micro_batch} (after the update)" if books_oom else None

    def _interrupted(self, signum: Optional[int]) -> TrainingInterrupted:
        """The error for a stop request, raised once checkpoint_latest.pt is saved. A rank that
        did not get the signal itself reports SIGTERM, which is what torchrun forwards."""
        signum = signum or signal.SIGTERM
        latest = self.stage_dir / LATEST
        name = signal.Signals(signum).name
        return TrainingInterrupted(signum, f"interrupted by {name}; checkpoint saved to {latest}; "
                                           "re-run the same command to resume")

    def _fall_back_after_oom(self, tried: str) -> None:
        """Drop the failed window's gradients and halve the micro-batch (the window, i.e. the
        effective batch, stays); the caller then redoes the window, or goes on after it when its
        update stood. Every rank calls this for the same failures, so all keep the same split."""
        self.optimizer.zero_grad(set_to_none=True)
        self.oom_history.append(tried)
        if self.micro_batch <= self.min_micro_batch or len(self.oom_history) > self.cfg.max_oom_retries:
            raise UserError(
                f"out of GPU memory even after {len(self.oom_history)} attempts "
                f"({', '.join(self.oom_history)}); "
                "use a smaller --batch-size or --image-size, a smaller model, or free the GPU"
            )
        self.micro_batch = max(math.ceil(self.micro_batch / 2), self.min_micro_batch)
        self.progress.message(
            f"out of GPU memory with {tried}: retrying with micro-batch {self.micro_batch} x "
            f"{math.ceil(self.window / self.micro_batch)} accumulation steps (same effective batch)"
        )

    def _log_interval(self) -> None:
        now = time.perf_counter()
        values = self.interval_tally.read()
        record = {
            "step": self.global_step,
            "epoch": self.epoch,
            **values,
            "lr": self.schedule.current_lr(),
            "images_per_sec": self.interval_tally.samples * self.dist.world_size
            / max(now - self._interval_started, 1e-9),
            "skipped_updates": self.interval_tally.skipped,
        }
        self.interval_tally.reset()
        self._interval_started = now
        self.progress.interval(record)
        if self.metrics_log is not None:
            self.metrics_log.append(record)  # written with the next checkpoint (see run_log)

    def _finish_epoch(self) -> None:
        """Validate, log the epoch's row, step early stopping and save (epoch time includes validation)."""
        started = time.perf_counter()
        self.dist.broadcast_buffers(self.model)
        train, parts = self._train_metrics()
        try:
            val = self.evaluate(self.val_dataset)
        except UnreadableImage as exc:  # the epoch's updates are done: keep them, validate on the re-run
            self._save_latest(epoch_elapsed=self.epoch_elapsed + time.perf_counter() - started)
            raise exc.mid_run(str(self.stage_dir / LATEST)) from None
        self.epoch_elapsed += time.perf_counter() - started
        peaks = self.memory.peaks()  # this epoch's: reset at its start
        peak = None if peaks is None else peaks.allocated_mib
        if peaks is not None:
            self.peak_memory_mb = max(peaks.allocated_mib, self.peak_memory_mb or 0.0)
            if self.metrics_log is not None:  # reserved memory has no epochs.csv column: kept here
                self.metrics_log.append({"step": self.global_step, "epoch": self.epoch,
                                         "event": "epoch_memory", "peak_allocated_mb": peaks.allocated_mib,
                                         "peak_reserved_mb": peaks.reserved_mib})
        row: dict[str, Any] = {
            "epoch": self.epoch,
            **{f"train_{k}": train[k] for k in SPLIT_METRICS},
            **val.as_row("val"),
            "learning_rate": self.schedule.current_lr(),
            "epoch_time_sec": self.epoch_elapsed,
            "gpu_memory_mb": peak,
        }
        improved = self.early.update(row[self.cfg.monitor], self.epoch)
        self.schedule.step_epoch(row[self.cfg.monitor])
        self.train_time += self.epoch_elapsed
        self.progress.end_epoch(row)
        if self.epochs_log is not None:
            self.epochs_log.log(row)
        if self.metrics_log is not None and parts:  # curves.png plots the train cross-entropy from here
            self.metrics_log.append({"event": "epoch", "step": self.global_step, "epoch": self.epoch,
                                     **{f"train_{name}": value for name, value in parts.items()}})
        if self.dist.is_main:
            for callback in self.epoch_callbacks:
                callback(self.epoch, self.model)
        self.stopping = self.dist.broadcast_flag(self.early.should_stop)  # rank 0 decides for all
        self.epoch += 1
        self.samples_done = 0
        self.epoch_elapsed = 0.0
        self.epoch_tally.reset()
        self.accumulator.reset()
        self._save_latest(epoch_elapsed=0.0, is_best=improved)

    def _train_metrics(self) -> tuple[dict[str, float], dict[str, float]]:
        """Train loss and macro metrics for the epoch, and the epoch's mean loss parts (``ce``,
        ``kd``, ...), over every rank (one sync for the sums, one gather for the predictions)."""
        tally = self.epoch_tally
        samples = torch.tensor([float(tally.samples)], dtype=torch.float64, device=tally.sums.device)
        part_sums = [value.double().reshape(1) for value in tally.parts.values()]
        loss_sum, finite, _, *totals, seen = self.dist.all_reduce_sum(
            torch.cat([tally.sums, *part_sums, samples])).tolist()
        parts = {name: total / seen for name, total in zip(tally.parts, totals, strict=True)} if seen else {}
        accumulator = self.accumulator
        if self.dist.enabled:
            accumulator = PredictionAccumulator(self.device)
            for state in self.dist.all_gather_object(self.accumulator.state_dict()):
                accumulator.update(state["y_pred"], state["y_true"])
        metrics = accumulator.compute(self.num_classes)
        return {"loss": loss_sum / finite if finite else float("nan"), **metrics}, parts

    # ------------------------------------------------------------------ checkpoints

    def _open_metrics_log(self, resumed: bool) -> MetricsLog:
        """metrics.jsonl (cut back to the checkpoint's step on a resume) and, if asked, TensorBoard."""
        step = self.global_step if resumed else None
        board = None
        if self.cfg.tensorboard:
            board = open_tensorboard(self.stage_dir / "tensorboard", purge_step=step)
        return MetricsLog(self.stage_dir / "metrics.jsonl", resume_after_step=step, tensorboard=board)

    def _save_latest(self, epoch_elapsed: float, is_best: bool = False) -> None:
        if self.dist.is_main:
            self.metrics_log.flush()  # first: a resume drops records past its checkpoint, never misses any
            self.store.save_latest(self.checkpoint_state.state_dict(epoch_elapsed))
            if is_best:
                self.store.link_best(self.store.latest_path)
            clear_divergence(self.stage_dir)  # a sound state under the current settings is on disk
        self._last_save = time.monotonic()
        self.dist.barrier()

    def _plot_curves(self) -> None:
        """curves.png is a picture of epochs.csv: a plotting failure (a font cache, a backend) must
        not cost the stage its results, so it is a warning. A full disk is not: it stops the run
        here, before the weights would fail to save."""
        folder = self.stage_dir
        try:
            metrics = folder / "metrics.jsonl"
            records = read_records(metrics) if metrics.exists() else []
            plot_curves(pd.read_csv(folder / "epochs.csv"), records, folder / "curves.png")
        except DiskFullError:
            raise
        except Exception as exc:  # noqa: BLE001 (matplotlib and pandas raise many kinds)
            self.logger.warning("could not draw %s (%s: %s); the numbers are in epochs.csv and metrics.jsonl",
                                folder / "curves.png", type(exc).__name__, exc)

    def _restore_best(self) -> None:
        """Load the best epoch's weights into ``model`` (every rank reads rank 0's file),
        unless the last epoch was the best: then the model already holds them."""
        self.dist.barrier()
        if self.early.best_epoch not in (0, self.epoch - 1) and self.store.best_path.exists():
            self.model.load_state_dict(self.store.load_best()["model"])

    def _peak_reserved_mb(self) -> Optional[float]:
        """The largest per-epoch reserved peak of the stage, every session of a resumed run included."""
        if self.metrics_log is None:
            return None
        peaks = [record["peak_reserved_mb"] for record in self.metrics_log.records
                 if record.get("event") == "epoch_memory"]
        return max(peaks, default=None)


def _smallest_micro_batch(model: nn.Module, batch_size: int, samples_per_rank: int) -> int:
    """The smallest micro-batch ``model`` can train on: 2 with BatchNorm, which cannot take a batch
    of one sample in training mode, else 1. The sampler merges a lone last sample into the batch
    before it; a batch size of 1, or one training sample per process, is refused here instead of
    crashing in the first forward."""
    if not any(isinstance(module, nn.modules.batchnorm._BatchNorm) for module in model.modules()):
        return 1
    if batch_size < 2:
        raise UserError(
            f"--batch-size {batch_size}: {type(model).__name__} has BatchNorm layers, which cannot train "
            "on one sample per step; use --batch-size 2 or more (with --set train.accumulation_steps=N "
            "to keep the memory of a small batch)"
        )
    if samples_per_rank < 2:
        raise UserError(
            f"{type(model).__name__} has BatchNorm layers, which cannot train on one sample per step, and "
            f"each process gets {samples_per_rank} training sample; use more data (a larger --subset) "
            "or fewer processes"
        )
    return 2


def _output_classes(model: nn.Module) -> int:
    """The classifier's width (timm models expose ``num_classes``)."""
    return int(getattr(model, "num_classes", 0)) or 0
