"""A stage's objects die with its scope: nothing a stage built outlives ``train_stage``.

This is what makes freeing memory between stages work at all (docs/ARCHITECTURE.md, "Decisions":
``del`` inside a cleanup function cannot free what a caller still references).
"""
from __future__ import annotations

import gc
import weakref
from pathlib import Path
from typing import Any

import pytest
import torch

import src.pipeline.train_stage as train_stage_module
from src.config.loader import load_config
from src.data.build import build_datasets
from src.engine.device import resolve_device
from src.engine.distributed import DistributedContext
from src.rundirs import stage_models
from src.rundirs.rundir import RunDirectory, prepare_run_directory
from src.utils.training_guards import cleanup_training_state

TINY = ["models.teacher=resnet18", "stages=teacher,direct", "train.epochs=1", "train.batch_size=16",
        "data.subset=16", "data.image_size=8", "train.warmup_epochs=0"]


def _setup(tmp_path: Path, device: str) -> tuple[Any, RunDirectory, Any]:
    cfg = load_config(None, [*TINY, f"runtime.device={device}"])
    run = RunDirectory(tmp_path / "run")
    prepare_run_directory(run, cfg, "auto", write=True)
    return cfg, run, build_datasets(cfg.data, run.root, cfg.runtime.seed)


def _spy_on_stage_objects(monkeypatch: pytest.MonkeyPatch) -> list[weakref.ref]:
    """Weak references to every model and Trainer ``train_stage`` builds (a spy; the real ones run)."""
    refs: list[weakref.ref] = []
    real_build, real_trainer = train_stage_module.build_model, train_stage_module.Trainer

    def build_model(*args: Any, **kwargs: Any) -> torch.nn.Module:
        model = real_build(*args, **kwargs)
        refs.append(weakref.ref(model))
        return model

    class Trainer(real_trainer):  # type: ignore[misc, valid-type]
        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            refs.append(weakref.ref(self))
            refs.append(weakref.ref(self.optimizer))

    monkeypatch.setattr(train_stage_module, "build_model", build_model)  # the stage's own model
    monkeypatch.setattr(stage_models, "build_model", build_model)  # its teacher, read back from disk
    monkeypatch.setattr(train_stage_module, "Trainer", Trainer)
    return refs


@pytest.mark.slow
def test_model_teacher_and_optimizer_are_gone_after_a_kd_stage(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    cfg, run, data = _setup(tmp_path, "cpu")
    device, dist = torch.device("cpu"), DistributedContext()
    train_stage_module.train_stage(cfg, "teacher", run, data, device=device, dist=dist)
    refs = _spy_on_stage_objects(monkeypatch)
    train_stage_module.train_stage(cfg, "direct", run, data, device=device, dist=dist)
    assert len(refs) == 4  # the student, its teacher, the Trainer and its optimizer
    gc.collect()
    alive = [type(ref()).__name__ for ref in refs if ref() is not None]
    assert alive == [], f"still referenced after the stage: {alive}"
    assert run.result_path("direct").is_file()


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_memory_returns_to_the_pre_stage_level(tmp_path: Path) -> None:
    cfg, run, data = _setup(tmp_path, "cuda")
    device, dist = resolve_device("cuda"), DistributedContext()  # indexed, as the runner passes it
    cfg.runtime.vram_budget_gb = None  # the planner's per-process cap is not what this test measures
    train_stage_module.train_stage(cfg, "teacher", run, data, device=device, dist=dist)
    cleanup_training_state(verbose=False)
    before = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    train_stage_module.train_stage(cfg, "direct", run, data, device=device, dist=dist)
    assert torch.cuda.max_memory_allocated() > before  # the stage did hold a student and a teacher
    cleanup_training_state(verbose=False)
    assert torch.cuda.memory_allocated() == before
