"""Score a saved checkpoint or model.safetensors of a run on one of its splits.

The run directory says everything needed to rebuild the model and the data exactly as trained:
config.yaml (architecture, image size) and split.json (which samples are test/val/train).
"""
from __future__ import annotations

import logging
from pathlib import Path

from safetensors import SafetensorError, safe_open
from torch import nn

from src.config.schema import RunConfig
from src.config.stages import STAGES
from src.deploy.export import check_export_current
from src.deploy.onnx_runtime import onnx_model_for
from src.engine.checkpoint import BEST, CheckpointStore
from src.engine.device import resolve_device
from src.engine.evaluation import EvalResult, evaluate_model
from src.errors import UserError, error_detail
from src.rundirs.inputs import run_data, stage_data
from src.rundirs.rundir import RunDirectory, open_run
from src.rundirs.seeds import chain_for
from src.rundirs.stage_models import build_model, load_weights
from src.utils.weights import WEIGHTS_FILE

LOGGER = logging.getLogger("kd_pipeline.scoring")  # unconfigured in evaluate.py: stderr
SPLITS = ("test", "val", "train")


def _stage_of(checkpoint: Path, given: str | None) -> str:
    """The stage whose architecture the file holds: ``--stage``, safetensors metadata, or its folder."""
    if given:
        return given
    if checkpoint.suffix == ".safetensors":
        try:
            with safe_open(str(checkpoint), framework="pt") as handle:
                stage = (handle.metadata() or {}).get("stage")
        except SafetensorError as exc:
            raise UserError(f"{checkpoint} is not a readable safetensors file: {exc}") from None
        if stage in STAGES:
            return stage
    if checkpoint.parent.name in STAGES:
        return checkpoint.parent.name
    raise UserError(f"cannot tell which stage {checkpoint} belongs to; pass --stage")


def finished_best(checkpoint: Path) -> Path:
    """What to score for ``checkpoint``: itself, or for a finished stage's checkpoint_best.pt,
    which is not kept (CheckpointStore.prune), model.safetensors beside it: the same best weights."""
    weights = checkpoint.parent / WEIGHTS_FILE
    if checkpoint.name != BEST or checkpoint.exists() or not weights.is_file():
        return checkpoint
    return weights


def _load_into(model: nn.Module, checkpoint: Path) -> None:
    if checkpoint.suffix == ".safetensors":
        load_weights(model, checkpoint)
        return
    state = CheckpointStore(checkpoint.parent).load(checkpoint)["model"]  # the engine saves the bare model
    try:
        model.load_state_dict(state)
    except RuntimeError as exc:
        raise UserError(f"checkpoint {checkpoint} does not fit this run's model: "
                        f"{error_detail(exc)}") from None


def _chain_of(checkpoint: Path, run: RunDirectory, cfg: RunConfig, stage: str) -> RunDirectory:
    """The chain whose ``stage`` a file belongs to: the one whose stage folder holds it, else the first."""
    folder = checkpoint.resolve().parent
    if folder.name == stage and (folder / "result.json").is_file():
        return RunDirectory(folder.parent)
    return chain_for(cfg, run).run_dir


def evaluate_file(checkpoint: Path, run_dir: Path, split: str = "test", *, stage: str | None = None,
                  device: str = "auto", batch_size: int = 256,
                  data_dir: Path | None = None) -> tuple[str, EvalResult]:
    """(stage, metrics) of ``checkpoint`` on ``split`` of the run in ``run_dir``, its data read from
    ``data_dir`` when given (moved since training), else from where it was trained. A model.onnx is
    scored only while it was exported from the stage's current weights."""
    if checkpoint.is_dir():
        raise UserError(f"checkpoint {checkpoint} is a directory; pass a checkpoint_*.pt, "
                        "model.safetensors or model.onnx file inside it")
    if not checkpoint.is_file():
        raise UserError(f"checkpoint {checkpoint} does not exist")
    if batch_size < 1:
        raise UserError(f"--batch-size must be at least 1, got {batch_size}")
    run, cfg = open_run(run_dir, data_dir=data_dir)
    stage = _stage_of(checkpoint, stage)
    data = stage_data(cfg, run_data(cfg, run.root), stage)  # the stage's own size and normalisation
    for note in data.warnings:  # a class the split lacks: its scores cover fewer classes
        LOGGER.warning(note)
    if checkpoint.suffix == ".onnx":  # the deployed artifact, through ONNX Runtime (src/deploy)
        model, target = onnx_model_for(checkpoint, data.image_size, data.num_classes, run_dir, device)
        check_export_current(checkpoint, _chain_of(checkpoint, run, cfg, stage), stage, run.root)
    else:
        model = build_model(cfg, stage, data.num_classes, initial=False)
        _load_into(model, checkpoint)
        target = resolve_device(device)
    dataset = {"test": data.test, "val": data.val, "train": data.train}[split]
    result = evaluate_model(model.to(target), dataset, device=target, batch_size=batch_size,
                            num_workers=0, seed=cfg.runtime.seed, num_classes=data.num_classes)
    return stage, result
