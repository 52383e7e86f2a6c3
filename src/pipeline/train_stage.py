"""One stage, start to finish, inside one function scope.

``train_stage`` owns everything a stage builds (model, teacher, objective, Trainer with its
optimizer and loaders); none of it escapes, so when it returns the runner can free it all.
Files a stage leaves: the engine's epochs.csv, metrics.jsonl, checkpoints and curves.png,
then model.safetensors, test_predictions.csv (the verdict, the confusion matrix),
val_predictions.csv (comparisons made without the test images) and, last,
result.json, which marks the stage finished (a stage without it is continued from its latest
checkpoint on the next run); then the checkpoints beyond ``train.keep_checkpoints`` go.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import nn

from src.config.change_rules import stage_identity
from src.config.loader import flatten
from src.config.schema import RunConfig
from src.config.stage_settings import model_name, stage_config
from src.config.stages import STAGES
from src.data.build import DataBundle
from src.distillation.distiller import DistillationObjective
from src.engine.checkpoint import LATEST
from src.engine.compiling import CompileSettings
from src.engine.distributed import DistributedContext
from src.engine.objective import CrossEntropyObjective, Objective
from src.engine.trainer import Trainer
from src.memory.planner import plan_stage
from src.models.checkpointing import require_gradient_checkpointing
from src.models.factory import check_runs_at, count_parameters
from src.models.lr_scale import get_model_specific_lr
from src.rundirs.inputs import stage_data, teacher_view_change
from src.rundirs.provenance import stage_provenance
from src.rundirs.rundir import RunDirectory
from src.rundirs.stage_models import build_model, load_stage_model, stage_seed
from src.utils.atomic import atomic_write_json, atomic_write_with
from src.utils.logger import SPLIT_METRICS
from src.utils.weights import save_weights
from src.visualization.attention import has_vit_attention, save_attention_maps, should_visualize

LOGGER = logging.getLogger("kd_pipeline.stage")


def run_fingerprint(cfg: RunConfig, stage: str) -> dict[str, Any]:
    """What a stage's checkpoint must agree with to be continued, besides the engine settings the
    engine compares itself: the settings that change this stage's results (src/config/change_rules.py)."""
    return {"stage": stage, "model": model_name(cfg, stage), "config": stage_identity(flatten(cfg), stage)}


def load_teacher(cfg: RunConfig, run_dir: RunDirectory, teacher_stage: str, num_classes: int,
                 result: dict[str, Any]) -> tuple[nn.Module, dict[str, str]]:
    """The teacher stage's final weights, verified against the hash its result.json recorded."""
    teacher, path, sha = load_stage_model(cfg, run_dir, teacher_stage, num_classes, result)
    # relative to the run directory: a moved run directory still resumes; the hash is the identity
    fingerprint = {"teacher_stage": teacher_stage, "teacher_file": str(path.relative_to(run_dir.root)),
                   "teacher_sha256": sha}
    return teacher, fingerprint


def make_objective(cfg: RunConfig, stage: str, run_dir: RunDirectory, data: DataBundle,
                   device: torch.device, teacher_result: dict[str, Any] | None) -> Objective:
    """Labels only, or KD from the stage's frozen teacher (on ``device``), which sees each
    training batch converted to its own view (``data``: the run's datasets, src/rundirs/inputs.py)."""
    teacher_stage = STAGES[stage].teacher_stage
    if teacher_stage is None:
        return CrossEntropyObjective(label_smoothing=cfg.train.label_smoothing)
    assert teacher_result is not None
    teacher, fingerprint = load_teacher(cfg, run_dir, teacher_stage, data.num_classes, teacher_result)
    objective = DistillationObjective(teacher.to(device), cfg.distillation,
                                      label_smoothing=cfg.train.label_smoothing,
                                      teacher_fingerprint=fingerprint,
                                      teacher_input=teacher_view_change(cfg, data, stage))
    return objective.to(device)


def first_val_batch(data: DataBundle, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first ``size`` validation items as one model-ready CPU batch, each image read once:
    exactly what ``data.val[i]`` gives, stacked."""
    count = min(size, len(data.val))
    images = data.val.model_input(data.val.store.read(range(count)))
    return images, torch.tensor(data.val.targets[:count])


def attention_callback(cfg: RunConfig, model: nn.Module, data: DataBundle, stage_dir: Path,
                       dist: DistributedContext) -> list[Any]:
    """Stages whose model has ViT-style attention blocks: attention maps of one fixed validation
    batch of the stage's view every N epochs, on rank 0."""
    every = cfg.runtime.attention_every
    if every <= 0 or not dist.is_main or not has_vit_attention(model):
        return []
    images, _ = first_val_batch(data, 4)

    def on_epoch_end(epoch: int, model: nn.Module) -> None:
        if should_visualize(epoch, every):
            save_attention_maps(model, images, stage_dir / "attention", epoch)

    return [on_epoch_end]


def write_predictions(path: Path, y_true: Any, y_pred: Any) -> None:
    frame = pd.DataFrame({"y_true": y_true, "y_pred": y_pred})
    atomic_write_with(path, lambda tmp: frame.to_csv(tmp, index_label="index"))


def train_stage(cfg: RunConfig, stage: str, run_dir: RunDirectory, run_datasets: DataBundle, *,
                device: torch.device, dist: DistributedContext, resume: str | Path = "auto") -> None:
    """Train, test and save ``stage`` on its own view of ``run_datasets``; everything built here
    is released when this returns."""
    cfg = stage_config(cfg, stage)  # stage_overrides.<stage> applied to train: what this stage trains with
    spec, name = STAGES[stage], model_name(cfg, stage)
    stage_dir = run_dir.stage_dir(stage)
    data = stage_data(cfg, run_datasets, stage)  # the stage's size and normalisation
    teacher_result = run_dir.read_result(spec.teacher_stage) if spec.teacher_stage else None
    # a stage continued from a checkpoint gets its weights from there: no pretrained download
    continuing = isinstance(resume, Path) or (resume == "auto"
                                              and (stage_dir / LATEST).exists())
    model = build_model(cfg, stage, data.num_classes, initial=not continuing)
    check_runs_at(model, name, data.image_size)  # before the stage holds any state
    if cfg.train.grad_checkpointing == "on":
        require_gradient_checkpointing(model, name, f"train.grad_checkpointing=on (stage {stage})")
    model.to(device)
    objective = make_objective(cfg, stage, run_dir, run_datasets, device, teacher_result)
    lr = get_model_specific_lr(name, cfg.train.lr)
    data.to(device, cfg.runtime.vram_budget_gb)  # resident images first: the memory plan counts them
    sample = first_val_batch(data, cfg.train.batch_size)
    plan = plan_stage(model, objective, sample, cfg.train, device, cfg.runtime.vram_budget_gb,
                      model_name=name, dist=dist)  # ranks agree on one split
    del sample
    trainer = Trainer(
        model, objective, data.train, data.val, plan.apply(cfg.train), stage_dir,
        device=device, seed=cfg.runtime.seed, run_fingerprint=run_fingerprint(cfg, stage), dist=dist,
        epoch_callbacks=attention_callback(cfg, model, data, stage_dir, dist), resume=resume, lr=lr,
        compilation=CompileSettings(cfg.runtime.compile),
    )
    torch.manual_seed(stage_seed(cfg.runtime.seed, "train", stage))  # a resume restores its saved RNG
    fit = trainer.fit()
    test = trainer.evaluate(data.test)
    val = trainer.evaluate(data.val)  # the best weights' predictions: choices made without the test images
    if dist.is_main:
        metadata = {"stage": stage, "arch": name, "num_classes": str(data.num_classes),
                    "image_size": str(data.image_size)}
        sha = save_weights(model, run_dir.weights_path(stage), metadata)
        write_predictions(run_dir.predictions_path(stage), test.y_true, test.y_pred)
        write_predictions(run_dir.predictions_path(stage, "val"), val.y_true, val.y_pred)
        result = {
            "stage": stage,
            "model": name,
            "params": count_parameters(model),
            "best_epoch": fit.best_epoch,
            "epochs_run": fit.epochs_run,
            "stopped_early": fit.stopped_early,
            "test": {k: float(getattr(test, k)) for k in SPLIT_METRICS},
            "peak_gpu_memory_mb": fit.peak_gpu_memory_mb,
            "peak_gpu_reserved_mb": fit.peak_gpu_reserved_mb,  # what the allocator held: the card's view
            "final_split": {"micro_batch": fit.micro_batch, "accumulation_steps": fit.accumulation_steps},
            "train_time_sec": fit.train_time_sec,
            "teacher": spec.teacher_stage,
            "seed": cfg.runtime.seed,
            "weights_sha256": sha,
            "memory_plan": plan.to_dict(),
            "lr": lr,
            "image_size": data.image_size,
            "normalization": {"mean": list(data.mean), "std": list(data.std)},
            "num_classes": data.num_classes,
            # what it was made from: checked before the stage is reused (src/rundirs/provenance.py)
            "provenance": stage_provenance(cfg, stage, data.split.hash,
                                           teacher_result.get("weights_sha256") if teacher_result else None),
        }
        atomic_write_json(run_dir.result_path(stage), result)
        trainer.store.prune(cfg.train.keep_checkpoints)  # finished: only what train.keep_checkpoints asks for
        LOGGER.info("stage %s done: test accuracy %.4f, macro F1 %.4f (best epoch %s of %s)",
                    stage, test.accuracy, test.f1_score, fit.best_epoch, fit.epochs_run)
    dist.barrier()
