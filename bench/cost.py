#!/usr/bin/env python3
"""What the student saves against the teacher: FLOPs, parameters, latency, measured side by side.

The same measurement the run report makes (``src.deploy.cost.measure_costs``: FLOPs from
``FlopCounterMode``, batch-1 latency and throughput timed in interleaved rounds), on
random-weight models of each preset's shipped config (default: its GPU config, cifar10.yaml:
CNN 32 px, ViT 224 px), each stage at its own image size, or all at ``--image-size``. Costs
depend on shapes, not on trained weights, so no run is needed.

    .venv/bin/python bench/cost.py                          # every preset, CPU, 1 thread (~1-2 min)
    .venv/bin/python bench/cost.py --config digits         # the models `make run`/`make run-vit` train
    python bench/cost.py --device cuda --threads 8          # GPU latency; CPU throughput beside it
"""
from __future__ import annotations

import argparse

import pandas as pd
import torch
from _common import (
    NUM_CLASSES,
    add_preset_flag,
    add_threads_flag,
    chosen_presets,
    machine_line,
    preset_config,
    resolve_device_and_threads,
)

from src.config.stage_settings import model_name
from src.deploy.benchmark import FLOP_CONVENTION
from src.deploy.cost import CostTable, measure_costs
from src.rundirs.inputs import stage_image_size
from src.rundirs.stage_models import build_model

CHAIN = ("teacher", "assistant", "student")


def weights_bytes(model: torch.nn.Module) -> int:
    """What model.safetensors holds (its small JSON header aside)."""
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())


def measure_preset(preset: str, config: str | None, image_size: int | None,
                   device: torch.device) -> tuple[str, CostTable]:
    cfg = preset_config(preset, config, image_size=image_size)
    torch.manual_seed(0)
    models = {}
    for stage in CHAIN:
        model = build_model(cfg, stage, NUM_CLASSES, initial=False)
        models[stage] = (model_name(cfg, stage), model, weights_bytes(model))
    sizes = {stage: stage_image_size(cfg, stage) for stage in CHAIN}
    shown = "/".join(str(size) for size in dict.fromkeys(sizes.values()))
    return shown, measure_costs(models, sizes, device, key={})


def report(preset: str, size: str, table: CostTable) -> None:
    rows = [{"stage": c.stage, "model": c.architecture, "params M": c.parameters / 1e6,
             "GFLOPs": c.flops / 1e9, "latency ms": c.device.latency_ms, "p90 ms": c.device.latency_p90_ms,
             f"img/s (batch {c.device.batch})": c.device.throughput,
             f"CPU img/s (batch {c.cpu.batch})": c.cpu.throughput} for c in table.stages.values()]
    print(f"\n{preset} preset at {size} px on {table.device} ({table.seconds:.0f} s, "
          f"{table.stages['student'].device.samples} batch-1 samples per model)")
    print(pd.DataFrame(rows).to_string(index=False, float_format=lambda v: f"{v:.3g}"))
    teacher, student = table.stages["teacher"], table.stages["student"]
    print(f"{preset} student/teacher: {teacher.parameters / student.parameters:.2f}x fewer parameters, "
          f"{teacher.flops / student.flops:.2f}x fewer FLOPs, "
          f"{teacher.device.latency_ms / student.device.latency_ms:.2f}x faster at batch 1, "
          f"{student.device.throughput / teacher.device.throughput:.2f}x the throughput")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_preset_flag(parser, both=True)
    parser.add_argument("--config", help="a config of the preset by name (e.g. digits); default: cifar10, "
                        "the GPU config")
    parser.add_argument("--image-size", type=int, help="default: the config's (GPU configs: 32 / 224)")
    parser.add_argument("--device", default="cpu", choices=("cpu", "cuda", "auto"))
    add_threads_flag(parser)
    args = parser.parse_args()
    device = resolve_device_and_threads(args.device, args.threads)
    print(machine_line(device))
    print(FLOP_CONVENTION)
    for preset in chosen_presets(args.preset):
        report(preset, *measure_preset(preset, args.config, args.image_size, device))


if __name__ == "__main__":
    main()
