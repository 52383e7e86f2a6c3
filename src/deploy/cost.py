"""What each finished stage costs to deploy, measured in the run: the report's cost columns.

All stages' final ``model.safetensors`` are loaded into one process and measured together
(``src.deploy.benchmark``), so the student/teacher ratios come from one interleaved measurement.
Each model is measured at its own stage's image size. The result is kept in ``<run>/cost.json``
keyed by the weights' hashes, the image size(s), the device and the torch version: re-running a
finished run's command prints the same report instead of new noise, while a retrained stage,
another machine or another torch measures again. Delete cost.json to measure again on the same
machine.
"""
from __future__ import annotations

import json
import logging
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch
from torch import nn

from src.config.schema import RunConfig
from src.deploy.benchmark import (
    DEVICE_BATCH,
    Speed,
    count_flops,
    cpu_batch,
    fitting_batch,
    time_models,
)
from src.engine.device_memory import DeviceMemory
from src.errors import UserError, error_detail
from src.models.factory import count_parameters
from src.rundirs.inputs import stage_image_size
from src.rundirs.rundir import RunDirectory
from src.rundirs.stage_models import load_stage_model
from src.utils.atomic import atomic_write_json

LOGGER = logging.getLogger("kd_pipeline.cost")
COST_FILE = "cost.json"
METHOD_VERSION = 1  # bump when the measurement changes, so old cost.json files are measured again


@dataclass(frozen=True)
class StageCost:
    """One stage's final model: size, work per image and speed on the run's device and the CPU."""

    stage: str
    architecture: str
    parameters: int
    weights_bytes: int
    flops: int  # per image, torch's convention (a multiply-add is 2 FLOPs)
    device: Speed
    cpu: Speed


@dataclass(frozen=True)
class CostTable:
    """Every finished stage's cost from one measurement, and what it was measured for."""

    device: str  # e.g. "CPU, 2 threads" or "CUDA, NVIDIA GeForce RTX 3060"
    stages: dict[str, StageCost]
    key: dict[str, Any]
    seconds: float  # how long the measurement took

    def to_dict(self) -> dict[str, Any]:
        return {"device": self.device, "key": self.key, "seconds": self.seconds,
                "stages": {name: asdict(cost) for name, cost in self.stages.items()}}

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> CostTable:
        stages = {}
        for name, cost in raw["stages"].items():
            speeds = {part: Speed(**cost[part]) for part in ("device", "cpu")}
            stages[name] = StageCost(**{**cost, **speeds})
        return cls(device=raw["device"], stages=stages, key=dict(raw["key"]), seconds=float(raw["seconds"]))


def describe_device(device: torch.device) -> str:
    """The measured hardware in words, part of the cache key: another machine measures again."""
    if device.type == "cuda":
        return f"CUDA, {torch.cuda.get_device_name(device)}"
    threads = torch.get_num_threads()
    return f"CPU, {threads} thread{'s' if threads != 1 else ''}"


def cache_key(results: Mapping[str, Mapping[str, Any]], image_sizes: Mapping[str, int],
              device: torch.device) -> dict[str, Any]:
    """What a measurement was made for. ``image_size`` is the one size when every stage shares it
    (the key runs made before per-stage sizes wrote), else each stage's."""
    sizes = set(image_sizes.values())
    image_size: int | dict[str, int] = sizes.pop() if len(sizes) == 1 else dict(image_sizes)
    return {"method": METHOD_VERSION, "image_size": image_size, "device": describe_device(device),
            "torch": torch.__version__,
            "weights": {stage: result.get("weights_sha256") for stage, result in results.items()}}


def measure_costs(models: Mapping[str, tuple[str, nn.Module, int]], image_sizes: Mapping[str, int],
                  device: torch.device, key: dict[str, Any]) -> CostTable:
    """Measure ``{stage: (architecture, model on the CPU, weights file bytes)}`` side by side, each
    at its stage's ``image_sizes[stage]``.

    On a CUDA run the models are timed on the GPU first, then on the CPU; each phase interleaves
    all models. On a CPU run the one CPU measurement fills both.
    """
    started = time.perf_counter()
    modules = {stage: module.eval() for stage, (_, module, _) in models.items()}
    flops = {stage: count_flops(module, image_sizes[stage]) for stage, module in modules.items()}
    batch_cpu = cpu_batch(max(flops.values()))
    if device.type == "cuda":
        on_device = {stage: module.to(device) for stage, module in modules.items()}
        batch = fitting_batch(on_device, image_sizes, device, DEVICE_BATCH)
        device_speed = time_models(on_device, image_sizes, device, batch=batch)
        modules = {stage: module.cpu() for stage, module in modules.items()}
        DeviceMemory(device).release_cached()
        cpu_speed = time_models(modules, image_sizes, torch.device("cpu"), batch=batch_cpu)
    else:
        device_speed = cpu_speed = time_models(modules, image_sizes, device, batch=batch_cpu)
    stages = {
        stage: StageCost(stage=stage, architecture=arch, parameters=count_parameters(module),
                         weights_bytes=size, flops=flops[stage], device=device_speed[stage],
                         cpu=cpu_speed[stage])
        for stage, (arch, module, size) in models.items()
    }
    return CostTable(device=describe_device(device), stages=stages, key=key,
                     seconds=round(time.perf_counter() - started, 2))


def _cached(run_dir: RunDirectory, key: dict[str, Any]) -> CostTable | None:
    """The saved measurement when it was made for exactly these weights, sizes and machine."""
    path = run_dir.root / COST_FILE
    if not path.is_file():
        return None
    try:
        table = CostTable.from_dict(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:  # damaged: measure again
        LOGGER.warning("%s is not a cost table (%s: %s); measuring the costs again", path,
                       type(exc).__name__, error_detail(exc, 80))
        return None
    return table if table.key == key else None


def _load_stage(cfg: RunConfig, run_dir: RunDirectory, stage: str, result: Mapping[str, Any],
                num_classes: int) -> tuple[str, nn.Module, int]:
    """(architecture, model, weights file bytes) of a finished stage whose weights are what its
    result.json recorded: cost.json is keyed by that hash, so a changed file is refused, not measured."""
    classes = int(result.get("num_classes", num_classes))
    try:
        model, path, _ = load_stage_model(cfg, run_dir, stage, classes, result)
    except UserError as exc:
        raise UserError(f"{exc} (or --set report.benchmark=false to report without costs)") from None
    return str(result.get("model")), model, path.stat().st_size


def run_costs(cfg: RunConfig, run_dir: RunDirectory, results: Mapping[str, Mapping[str, Any]],
              device: torch.device, num_classes: int) -> CostTable | None:
    """The cost of every finished stage (None when no stage has finished); cached in cost.json."""
    if not results:
        return None
    sizes = {stage: stage_image_size(cfg, stage) for stage in results}
    key = cache_key(results, sizes, device)
    cached = _cached(run_dir, key)
    if cached is not None:
        LOGGER.info("costs: reusing %s (same weights, image size and machine)", run_dir.root / COST_FILE)
        return cached
    models = {stage: _load_stage(cfg, run_dir, stage, result, num_classes)
              for stage, result in results.items()}
    table = measure_costs(models, sizes, device, key)
    atomic_write_json(run_dir.root / COST_FILE, table.to_dict())
    LOGGER.info("costs: measured %d stages side by side on %s in %.1f s", len(models), table.device,
                table.seconds)
    return table
