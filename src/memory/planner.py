"""Fit a stage into a VRAM budget: measure real training steps, pick the split, log the decision.

Before a stage trains on CUDA, ``plan_stage`` caps this process at the budget with
``torch.cuda.set_per_process_memory_fraction``, measures the stage's own training step
(objective forward incl. a KD teacher, backward, optimizer step) at candidate micro-batches and
keeps the largest one under the budget less a safety margin; gradient accumulation makes up the
rest of the effective batch, which never changes. Gradient checkpointing follows the stage's
``train.grad_checkpointing``: ``on`` keeps it on whatever fits, ``off`` never tries it, ``auto``
switches it on only when it is needed to fit (or to reach a useful micro-batch). A model that
cannot checkpoint is planned without it, and says so when nothing fits.

The cap stays in force after planning, on purpose: the budget is a promise about the whole stage
(a 6 GB card shared with nothing else must not be asked for more), so a later spike fails as an
out-of-memory error that the engine recovers from, instead of silently using memory the user
does not have. Each stage's plan sets the cap again.
"""
from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from typing import Optional

import torch
from torch import nn

from src.engine.device_memory import DeviceMemory
from src.engine.distributed import DistributedContext
from src.engine.layout import to_training_layout
from src.engine.objective import Objective
from src.engine.settings import TrainConfig
from src.errors import UserError
from src.memory.allocator import configure_cuda_allocator
from src.memory.probe import measure_peak
from src.memory.search import GIB, Measure, MemoryPlan, search_micro_batch
from src.models.checkpointing import switch_on_checkpointing

__all__ = ["MemoryPlan", "agree_across_ranks", "choose_plan", "configure_cuda_allocator", "plan_stage",
           "search_micro_batch", "set_checkpointing", "usable_budget"]

log = logging.getLogger("kd_pipeline.memory")  # under the pipeline logger: lands in pipeline.log

DEFAULT_MARGIN = 0.1  # 6 GiB budget -> steps must peak at or under 5.4 GiB
MIB = 1 << 20
# what the CUDA context still takes after the plan (cuBLAS/cuDNN workspaces, kernels loaded on use)
CONTEXT_GROWTH_MARGIN = 256 * MIB
MIN_USEFUL_MICRO_BATCH = 8  # below this, checkpointing (if it allows more) is worth its recompute


def set_checkpointing(model: nn.Module, enable: bool) -> bool:
    """Switch gradient checkpointing; returns whether it is now in the state asked for.

    On goes through the project's switch (timm's ``set_grad_checkpointing``, non-reentrant);
    off through timm's own switch.
    """
    if enable:
        return switch_on_checkpointing(model) is None
    setter = getattr(model, "set_grad_checkpointing", None)
    if setter is not None:
        setter(False)
    return True


def choose_plan(
    effective_batch: int,
    measure: Measure,
    budget_bytes: int,
    checkpointing: Callable[[bool], bool],
    *,
    margin: float = DEFAULT_MARGIN,
    force_checkpointing: bool = False,
    allow_checkpointing: bool = True,
    min_micro_batch: int = MIN_USEFUL_MICRO_BATCH,
    what: str = "the stage",
) -> MemoryPlan:
    """The search, plus the checkpointing decision: ``measure`` reflects whatever
    ``checkpointing(on)`` last set (it returns False when the model cannot checkpoint).

    Checkpointing stays off unless forced, or unless it is allowed and without it nothing fits or
    only a micro-batch below ``min_micro_batch`` does (BatchNorm statistics and GPU utilisation
    suffer there) and with it a larger one fits. Raises UserError when nothing fits either way,
    saying when checkpointing was not allowed or the model cannot do it.
    """
    plan = search_micro_batch(effective_batch, measure, budget_bytes, margin)
    plan.gradient_checkpointing = force_checkpointing
    rejected: list[tuple[int, Optional[int]]] = []
    wants_more = not plan.fits or plan.micro_batch < min(min_micro_batch, effective_batch)
    unable = ""  # why checkpointing was not tried although it was wanted
    if wants_more and not force_checkpointing:
        if not allow_checkpointing:
            unable = "train.grad_checkpointing is off (auto lets the planner try it)"
        elif not checkpointing(True):
            unable = "the model cannot use gradient checkpointing"
        else:
            with_gc = search_micro_batch(effective_batch, measure, budget_bytes, margin)
            if with_gc.fits and (not plan.fits or with_gc.micro_batch > plan.micro_batch):
                without = "nothing fits" if not plan.fits else f"only micro-batch {plan.micro_batch} fits"
                with_gc.gradient_checkpointing = True
                with_gc.tried_without_checkpointing = plan.tried
                with_gc.reason = f"checkpointing on ({without} without it); {with_gc.reason}"
                return with_gc
            checkpointing(False)
            rejected = with_gc.tried
            plan.reason += f"; checkpointing gave no larger micro-batch ({_fmt_tried(rejected)})"
        if unable:
            plan.reason += f"; {unable}"
    if not plan.fits:
        gc_state = "with" if plan.gradient_checkpointing else "without"
        also = f", with checkpointing {_fmt_tried(rejected)}" if rejected else ""
        because = f"; {unable}" if unable else ""
        raise UserError(f"{what} does not fit a {budget_bytes / GIB:.2f} GiB VRAM budget less {margin:.0%} "
                        f"margin even at micro-batch 1 (tried {gc_state} checkpointing "
                        f"{_fmt_tried(plan.tried)}{also}){because}; use smaller images or models, "
                        "or raise --vram-budget")
    return plan


def agree_across_ranks(plan: MemoryPlan, micro_batches: list[int]) -> MemoryPlan:
    """The plan every rank of a DDP job can run: the smallest micro-batch any rank chose.

    Ranks must take the same number of micro-batches per update, or their gradient all-reduces
    pair up wrongly and the job hangs; identical GPUs usually agree, but a measurement near the
    limit may not. Every rank's choice divides the same effective batch, so the minimum does too,
    and a smaller micro-batch fits wherever a larger one did. Each rank keeps its checkpointing.
    """
    micro = min(micro_batches)
    if micro == plan.micro_batch:
        return plan
    peaks = dict(plan.tried)
    return dataclasses.replace(
        plan, micro_batch=micro, accumulation_steps=plan.effective_batch // micro,
        peak_bytes=peaks.get(micro),
        reason=f"{plan.reason}; micro-batch {micro} agreed across ranks "
               f"(this rank fitted {plan.micro_batch})",
    )


def plan_stage(
    model: nn.Module,
    objective: Objective,
    sample_batch: tuple[torch.Tensor, torch.Tensor],
    engine_cfg: TrainConfig,
    device: torch.device,
    budget_gb: Optional[float],
    *,
    model_name: str = "",
    margin: float = DEFAULT_MARGIN,
    min_micro_batch: int = MIN_USEFUL_MICRO_BATCH,
    dist: Optional[DistributedContext] = None,
) -> MemoryPlan:
    """The micro-batch / accumulation split (and checkpointing) for one stage under ``budget_gb`` GiB.

    ``model`` and the objective's teacher must already be on ``device``. The model is first put
    in its training layout (``to_training_layout``: channels-last for CNNs on CUDA), so the probe
    measures what will train; otherwise both are left exactly as they were, except that
    checkpointing is switched on when ``engine_cfg.grad_checkpointing`` is ``on`` or the plan
    says so (``auto``). Raises UserError when even micro-batch 1 does not fit. Under DDP pass
    ``dist``: every rank probes its own GPU, then all take the smallest micro-batch (a collective:
    every rank must call this). Apply with ``plan.apply(engine_cfg)``.
    """
    effective = engine_cfg.batch_size * engine_cfg.accumulation_steps
    force = engine_cfg.grad_checkpointing == "on"
    # the setting decides, not what the model was left with: on, or off until the plan says otherwise
    if not set_checkpointing(model, force):
        raise UserError(f"train.grad_checkpointing=on asks for gradient checkpointing, but "
                        f"{model_name or type(model).__name__} does not support it; set it to auto or off")
    to_training_layout(model, engine_cfg, device)
    if device.type != "cuda" or budget_gb is None:
        why = "no budget" if budget_gb is None else f"no CUDA (device {device.type})"
        plan = MemoryPlan(engine_cfg.batch_size, engine_cfg.accumulation_steps, gradient_checkpointing=force,
                          reason=f"planner inactive: {why}; configured split kept")
        log.info("memory plan for %s: %s", _stage(model_name), plan.reason)
        return plan
    if budget_gb <= 0:
        raise UserError(f"--vram-budget must be positive, got {budget_gb}")

    total = torch.cuda.get_device_properties(device).total_memory
    budget = usable_budget(int(budget_gb * GIB), device)
    torch.cuda.set_per_process_memory_fraction(budget / total, device)
    images, labels = sample_batch

    def measure(micro: int) -> Optional[int]:
        return measure_peak(model, objective, images, labels, micro, effective, engine_cfg, device)

    try:
        plan = choose_plan(
            effective, measure, budget, lambda on: set_checkpointing(model, on), margin=margin,
            force_checkpointing=force, allow_checkpointing=engine_cfg.grad_checkpointing != "off",
            min_micro_batch=min_micro_batch, what=_stage(model_name),
        )
    finally:
        memory = DeviceMemory(device)
        memory.release_cached()
        memory.reset_peaks()  # the stage's own peak must not include the probe's
    if dist is not None and dist.enabled:
        plan = agree_across_ranks(plan, dist.all_gather_object(plan.micro_batch))
    # An agreed micro-batch smaller than this rank's own may never have been measured here.
    peak = "not measured" if plan.peak_bytes is None else f"{plan.peak_bytes / GIB:.2f} GiB"
    log.info("memory plan for %s: micro-batch %d x %d accumulation steps (effective %d), checkpointing %s, "
             "peak %s of %.2f GiB budget: %s", _stage(model_name),
             plan.micro_batch, plan.accumulation_steps, plan.effective_batch,
             "on" if plan.gradient_checkpointing else "off", peak, budget / GIB, plan.reason)
    return plan


def usable_budget(budget_bytes: int, device: torch.device) -> int:
    """The budget to plan against: ``budget_bytes``, or what the card really offers this process
    when that is less (a card at or under the budget, or one shared with other processes).

    Why: on a 6 GB card the CUDA context, a display and other processes hold memory outside
    PyTorch's allocator, so ``--vram-budget 6`` cannot mean 6 GiB of tensors there. What this
    process can still use is the driver's free memory plus what its own allocator has reserved,
    less ``CONTEXT_GROWTH_MARGIN``. Raises UserError when nothing is free.
    """
    free, _ = torch.cuda.mem_get_info(device)
    reserved = torch.cuda.memory_reserved(device)
    available = free + reserved - CONTEXT_GROWTH_MARGIN
    if available <= 0:
        raise UserError(f"no GPU memory is free for training on {device}: {free / MIB:.0f} MiB free and "
                        f"{reserved / MIB:.0f} MiB reserved by this process, "
                        f"{CONTEXT_GROWTH_MARGIN // MIB} MiB needed for the CUDA context; "
                        "free the card (other processes hold it) or use another GPU")
    if available >= budget_bytes:
        return budget_bytes
    log.info("VRAM budget %.2f GiB: this card offers %.2f GiB (%.0f MiB free + %.0f MiB reserved by this "
             "process - %d MiB for the CUDA context); planning for that", budget_bytes / GIB, available / GIB,
             free / MIB, reserved / MIB, CONTEXT_GROWTH_MARGIN // MIB)
    return available


def _fmt_tried(tried: list[tuple[int, Optional[int]]]) -> str:
    return ", ".join(f"{b}: {'oom' if p is None else f'{p / GIB:.2f} GiB'}" for b, p in tried)


def _stage(model_name: str) -> str:
    return f"stage {model_name}" if model_name else "the stage"
