"""Inference cost of several models measured side by side: FLOPs, batch-1 latency, throughput.

Wall-clock numbers on a shared machine swing by tens of percent from one minute to the next,
so one model timed after another says little about their ratio. Here every model is timed in
every round, in an order that rotates from round to round, and the statistics are taken over
all rounds: a slow moment of the machine falls on all models alike, and the ratios between them
stay meaningful even where the absolute numbers do not.

FLOPs are counted by ``torch.utils.flop_counter.FlopCounterMode``, which counts a multiply-add
as 2 FLOPs (convolutions, matrix products and attention; not normalisation, activations or
additions). Model cards that give MACs (timm's "GMACs", torchvision's "GFLOPS") count one per
multiply-add: divide ours by 2 to compare. torch's table has no entry for the CPU kernel of
``scaled_dot_product_attention`` (it counts the CUDA kernels only), so a ViT's attention products
would silently count as zero on the CPU: ``count_flops`` gives that kernel torch's own SDPA
formula, and the count is the same on every device.
"""
from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count

from src.engine.device_memory import DeviceMemory
from src.errors import UserError

FLOP_CONVENTION = "FLOPs as torch.utils.flop_counter counts them: a multiply-add is 2 FLOPs"


def _cpu_attention_flops(query_shape: torch.Size, key_shape: torch.Size, value_shape: torch.Size,
                         *args: object, out_shape: object = None, **kwargs: object) -> int:
    """torch's formula for its CUDA attention kernels, for the CPU kernel it leaves out."""
    return int(sdpa_flop_count(query_shape, key_shape, value_shape))


_CPU_ATTENTION = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_attention_flops}
WARMUP_CALLS = 2  # first calls pay for allocation, kernel selection and lazy initialisation
LATENCY_REPEATS = 3  # batch-1 forwards per model per round
MIN_ROUNDS, MAX_ROUNDS = 5, 30
DEFAULT_BUDGET_S = 2.0  # per device, after warm-up: "a few seconds" at the run's sizes
CPU_BATCH_FLOPS = 10e9  # CPU throughput batch: at most this many FLOPs per forward (and <= 32)
DEVICE_BATCH = 64  # CUDA throughput batch; halved while it does not fit


def count_flops(model: nn.Module, image_size: int) -> int:
    """FLOPs of one forward pass of one ``image_size`` x ``image_size`` RGB image (eval mode)."""
    device = next(model.parameters()).device
    image = torch.zeros(1, 3, image_size, image_size, device=device)
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode(), FlopCounterMode(display=False, custom_mapping=_CPU_ATTENTION) as counter:
            model(image)
    finally:
        model.train(was_training)
    return int(counter.get_total_flops())


def interleaved_order(names: Sequence[str], rounds: int) -> list[list[str]]:
    """The visiting order of each round: every model once, starting one model later each round."""
    n = len(names)
    return [[names[(r + i) % n] for i in range(n)] for r in range(rounds)]


def cpu_batch(max_flops: int) -> int:
    """A CPU throughput batch that keeps the biggest model's forward to a few tenths of a second on a CPU."""
    return int(max(1, min(32, CPU_BATCH_FLOPS // max(max_flops, 1))))


@dataclass
class Timings:
    """Seconds per forward of one model: batch-1 calls and throughput-batch calls."""

    single: list[float] = field(default_factory=list)
    batched: list[float] = field(default_factory=list)


@dataclass(frozen=True)
class Speed:
    """What the report shows for one model on one device."""

    latency_ms: float  # median batch-1 forward
    latency_p90_ms: float
    throughput: float  # images per second at ``batch`` (median forward time)
    batch: int
    samples: int  # batch-1 forwards behind the latency figures

    @classmethod
    def of(cls, timings: Timings, batch: int) -> Speed:
        single = np.asarray(timings.single) * 1e3
        return cls(latency_ms=float(np.median(single)), latency_p90_ms=float(np.percentile(single, 90)),
                   throughput=batch / float(np.median(timings.batched)), batch=batch, samples=len(single))


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _images(count: int, image_size: int, device: torch.device) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)  # the same pixels for every model and every run
    return torch.randn(count, 3, image_size, image_size, generator=generator).to(device)


def fitting_batch(models: Mapping[str, nn.Module], image_sizes: Mapping[str, int], device: torch.device,
                  batch: int) -> int:
    """The largest of ``batch``, ``batch/2``, ... that every model runs at on ``device`` (each at
    its own image size)."""
    memory = DeviceMemory(device)
    while not _runs_at(models, image_sizes, device, batch):
        if batch == 1:
            raise UserError(f"the models do not run at batch 1 on {device} within its memory "
                            "(--vram-budget); set report.benchmark=false to report without costs")
        batch //= 2
        memory.release_cached()  # the failed forward's tensors died with _runs_at's frame
    return batch


def _runs_at(models: Mapping[str, nn.Module], image_sizes: Mapping[str, int], device: torch.device,
             batch: int) -> bool:
    """Whether every model's forward at ``batch`` fits; the except clause only records the
    answer, so its traceback (holding the failed forward's tensors) is gone when this returns."""
    try:
        with torch.inference_mode():
            for name, model in models.items():
                model(_images(batch, image_sizes[name], device))
    except torch.OutOfMemoryError:
        return False
    return True


def time_models(models: Mapping[str, nn.Module], image_sizes: Mapping[str, int], device: torch.device, *,
                batch: int, budget_s: float = DEFAULT_BUDGET_S) -> dict[str, Speed]:
    """Batch-1 latency and throughput of every model (all on ``device``, in eval mode, each fed
    images of its own size), interleaved.

    The number of rounds fills ``budget_s`` (estimated from the warm-up), within
    ``MIN_ROUNDS``..``MAX_ROUNDS``.
    """
    single = {name: _images(1, image_sizes[name], device) for name in models}
    batched = {name: _images(batch, image_sizes[name], device) for name in models}

    def timed(model: nn.Module, images: torch.Tensor) -> float:
        _synchronize(device)
        start = time.perf_counter()
        model(images)
        _synchronize(device)
        return time.perf_counter() - start

    timings = {name: Timings() for name in models}
    with torch.inference_mode():
        round_cost = 0.0
        for name, model in models.items():
            for _ in range(WARMUP_CALLS):  # the last warm-up call estimates the model's share of a round
                visit = LATENCY_REPEATS * timed(model, single[name]) + timed(model, batched[name])
            round_cost += visit
        rounds = int(np.clip(budget_s // max(round_cost, 1e-9), MIN_ROUNDS, MAX_ROUNDS))
        for order in interleaved_order(list(models), rounds):
            for name in order:
                for _ in range(LATENCY_REPEATS):
                    timings[name].single.append(timed(models[name], single[name]))
                timings[name].batched.append(timed(models[name], batched[name]))
    return {name: Speed.of(timings[name], batch) for name in models}
