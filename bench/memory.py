#!/usr/bin/env python3
"""Does every stage fit a 6 GB card? Memory per stage of every preset's shipped GPU config
(cifar10.yaml, loaded by the product's config loader).

On CUDA (``--device cuda``) it measures, for every stage (KD stages with their frozen teacher),
the peak allocated and reserved memory of real training steps (the engine's UpdateStep: forward
through the stage's objective, backward, optimizer step) at the configured batch, with and
without gradient checkpointing and AMP, and the micro-batch x accumulation split the planner
picks under ``--budget-gb``.

Without a GPU it prints what the CPU can measure, so the arithmetic can be checked by hand:
  * per model: bytes autograd saves for the backward PER IMAGE (slope between two batch sizes,
    each storage counted once, the model's own weights left out), checkpointing off and on;
  * per stage: weights + buffers, gradients, optimizer state (measured from the real optimizer
    after one step), and the frozen teacher's weights for KD stages;
  * an ESTIMATE of the fp32 peak at the configured batch = fixed + batch * saved-per-image, and
    the split the planner's search would pick if that estimate were the measurement. It leaves
    out the backward's transient buffers, the recompute of one checkpointed segment, the
    teacher's transient activations and allocator rounding, and AMP (which roughly halves
    activations): only the GPU run gives the real figure.

    python bench/memory.py                                  # CPU, every preset (~1 min idle)
    python bench/memory.py --device cuda --budget-gb 6      # the real GPU table
"""
from __future__ import annotations

import argparse
import dataclasses
import time
import warnings
from typing import Any

import pandas as pd
import torch
from _common import (
    add_preset_flag,
    add_threads_flag,
    build_stage,
    chosen_presets,
    machine_line,
    preset_config,
    resolve_device_and_threads,
    synthetic_batch,
)

from src.config.stage_settings import stage_config
from src.engine.device_memory import DeviceMemory
from src.engine.objective import CrossEntropyObjective
from src.engine.optim import build_optimizer
from src.errors import UserError
from src.memory.cleanup import storage_bytes
from src.memory.planner import choose_plan, plan_stage, set_checkpointing
from src.memory.probe import probe_peaks
from src.memory.search import GIB
from src.utils.training_guards import saved_activation_bytes

MIB = 1 << 20


def optimizer_state_bytes(model: torch.nn.Module, cfg: Any) -> int:
    """State the stage's real optimizer holds after one step (SGD momentum: 1x, AdamW: 2x params)."""
    optimizer = build_optimizer(model, cfg)
    for p in model.parameters():
        if p.requires_grad:
            p.grad = torch.zeros_like(p)
    optimizer.step()
    size = storage_bytes(t for state in optimizer.state.values() for t in state.values()
                         if torch.is_tensor(t) and t.dim() > 0)
    optimizer.zero_grad(set_to_none=True)
    return size


def saved_per_image(model: torch.nn.Module, image_size: int, batches: tuple[int, int]) -> tuple[float, float]:
    """(bytes per image, bytes independent of the batch) autograd saves for one training forward.

    Measured through the labels-only objective: a KD stage's student graph is the same, its
    loss adds only logit-sized tensors, and the teacher (inference mode) saves nothing.
    """
    saved = []
    model.train()
    for b in batches:
        images, labels = synthetic_batch(b, image_size, torch.device("cpu"))
        with saved_activation_bytes(model) as counted:
            out = CrossEntropyObjective().training_step(model, images, labels)
        del out
        saved.append(counted["bytes"])
    per_image = (saved[1] - saved[0]) / (batches[1] - batches[0])
    return per_image, saved[0] - per_image * batches[0]


def split_of(plan: Any) -> str:
    return f"{plan.micro_batch}x{plan.accumulation_steps}{' ckpt' if plan.gradient_checkpointing else ''}"


def checkpointing_forced(cfg: Any, stage: str) -> bool:
    """The stage's ``train.grad_checkpointing`` is on (the ViT preset's teacher): what the planner keeps."""
    return stage_config(cfg, stage).train.grad_checkpointing == "on"


def estimated_split(forced: bool, batch: int, fixed: int, saved: dict[bool, tuple[float, float]],
                    budget: int) -> str:
    """The planner's own decision logic, fed the fp32 estimate instead of a GPU measurement."""
    gc_state = {"on": forced}

    def estimate(micro: int) -> int:
        per_img, const = saved[gc_state["on"]]
        return int(fixed + const + micro * per_img)

    def toggle(on: bool) -> bool:
        gc_state["on"] = on
        return True

    try:
        return split_of(choose_plan(batch, estimate, budget, toggle, force_checkpointing=gc_state["on"]))
    except UserError:
        return "does not fit"


def cpu_rows(preset: str, args: argparse.Namespace) -> list[dict[str, Any]]:
    cfg = preset_config(preset, args.config, args.image_size, args.batch, args.optimizer)
    size, batch = cfg.data.image_size, cfg.train.batch_size * cfg.train.accumulation_steps
    per_model: dict[str, dict[bool, tuple[float, float]]] = {}
    rows = []
    for stage in cfg.stages:
        setup = build_stage(cfg, stage, torch.device("cpu"))
        if setup.name not in per_model:
            start = time.perf_counter()
            per_model[setup.name] = {}
            for gc_on in (False, True):
                set_checkpointing(setup.model, gc_on)
                per_model[setup.name][gc_on] = saved_per_image(setup.model, size, args.probe_batches)
            print(f"  measured {setup.name} at {size}px in {time.perf_counter() - start:.1f} s", flush=True)
        saved = per_model[setup.name]
        weights = storage_bytes([*setup.model.parameters(), *setup.model.buffers()])
        grads = storage_bytes(p for p in setup.model.parameters() if p.requires_grad)
        state = optimizer_state_bytes(setup.model, cfg.train)
        teacher = 0 if setup.teacher is None else storage_bytes([*setup.teacher.parameters(),
                                                                 *setup.teacher.buffers()])
        fixed = weights + grads + state + teacher
        rows.append({
            "preset": preset, "stage": stage, "model": setup.name, "teacher": setup.teacher_name or "-",
            "px": size, "batch": batch, "optimizer": cfg.train.optimizer,
            "weights+buf MiB": weights / MIB, "grads MiB": grads / MIB, "optim state MiB": state / MIB,
            "teacher MiB": teacher / MIB, "fixed MiB": fixed / MIB,
            "saved/img MiB": saved[False][0] / MIB, "saved/img ckpt MiB": saved[True][0] / MIB,
            "est. fp32 peak GiB": (fixed + saved[False][1] + batch * saved[False][0]) / GIB,
            "est. fp32 peak ckpt GiB": (fixed + saved[True][1] + batch * saved[True][0]) / GIB,
            f"est. split <= {args.budget_gb:g} GiB": estimated_split(checkpointing_forced(cfg, stage), batch,
                                                                     fixed, saved, int(args.budget_gb * GIB)),
        })
    return rows


def gpu_rows(preset: str, args: argparse.Namespace, device: torch.device) -> list[dict[str, Any]]:
    cfg = preset_config(preset, args.config, args.image_size, args.batch, args.optimizer)
    batch = cfg.train.batch_size * cfg.train.accumulation_steps
    rows = []
    for stage in cfg.stages:
        setup = build_stage(cfg, stage, device)
        row: dict[str, Any] = {"preset": preset, "stage": stage, "model": setup.name,
                               "teacher": setup.teacher_name or "-", "px": cfg.data.image_size,
                               "batch": batch}
        images, labels = synthetic_batch(batch, cfg.data.image_size, torch.device("cpu"))
        for amp in ("off", "auto"):
            run_cfg = dataclasses.replace(cfg, train=dataclasses.replace(cfg.train, amp=amp))
            for gc_on in (False, True):
                set_checkpointing(setup.model, gc_on)
                peaks = probe_peaks(setup.model, setup.objective, images, labels, batch, 1,
                                    run_cfg.train, device)
                alloc, reserved = peaks if peaks is not None else (None, None)
                tag = f"{'amp' if amp == 'auto' else 'fp32'}{' ckpt' if gc_on else ''}"
                row[f"{tag} alloc GiB"] = "oom" if alloc is None else round(alloc / GIB, 2)
                row[f"{tag} reserved GiB"] = "oom" if reserved is None else round(reserved / GIB, 2)
        set_checkpointing(setup.model, checkpointing_forced(cfg, stage))  # as the pipeline hands it over
        sample = synthetic_batch(min(8, batch), cfg.data.image_size, torch.device("cpu"))
        try:
            plan = plan_stage(setup.model, setup.objective, sample, stage_config(cfg, stage).train, device,
                              args.budget_gb, model_name=setup.name)
            row["planner split"] = split_of(plan)
            row["planner peak GiB"] = round(plan.peak_bytes / GIB, 2)
        except UserError as exc:
            row["planner split"], row["planner peak GiB"] = f"none: {exc}", None
        finally:
            torch.cuda.set_per_process_memory_fraction(1.0, device)  # measure the next stage uncapped
        rows.append(row)
        del setup
        DeviceMemory(device).release_cached()
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_preset_flag(parser, both=True)
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="cpu")
    parser.add_argument("--budget-gb", type=float, default=6.0, help="VRAM budget in GiB (default 6)")
    parser.add_argument("--config", help="a config of the preset by name (e.g. digits) or a run YAML, "
                        "instead of its GPU config (one preset only)")
    parser.add_argument("--image-size", type=int, help="override the image size (default: the config's)")
    parser.add_argument("--batch", type=int, help="override the effective batch (default: the config's)")
    parser.add_argument("--optimizer", choices=["sgd", "adamw"],
                        help="override the optimizer (default: the config's)")
    parser.add_argument("--probe-batches", type=int, nargs=2, default=(1, 2), metavar=("B1", "B2"),
                        help="CPU: the two batch sizes whose difference gives the per-image bytes")
    add_threads_flag(parser)
    args = parser.parse_args()
    presets = chosen_presets(args.preset)
    if args.config and len(presets) > 1:
        parser.error("--config needs one --preset")
    device = resolve_device_and_threads(args.device, args.threads)
    print(machine_line(device), flush=True)
    start = time.perf_counter()
    rows = []
    for preset in presets:
        rows += gpu_rows(preset, args, device) if device.type == "cuda" else cpu_rows(preset, args)
    with pd.option_context("display.width", 250, "display.max_columns", None,
                           "display.float_format", "{:.2f}".format):
        print(pd.DataFrame(rows).to_string(index=False))
    if device.type != "cuda":
        print("fixed = weights+buf + grads + optim state + teacher; "
              "est. fp32 peak = fixed + batch x saved/img.\n"
              "est. columns are ESTIMATES (fp32, no AMP, no transient backward buffers, no recompute of a\n"
              "checkpointed segment, no teacher activations); run --device cuda for the real peaks")
    print(f"done in {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        main()
