"""The micro-batch search: pure logic, so it is tested on the CPU with a made-up memory model.

The measurement (a real training step on the GPU) is passed in as a function; this module only
decides which micro-batches to try and what the answer is. Candidates are the divisors of the
effective batch, so ``accumulation_steps = effective // micro_batch`` is an integer and the
effective batch the user configured is kept exactly.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Optional

from src.engine.settings import TrainConfig

GIB = 1 << 30

Measure = Callable[[int], Optional[int]]
"""``measure(micro_batch)`` -> peak bytes of a training step, or None when it ran out of memory."""


@dataclass
class MemoryPlan:
    """How a stage splits its effective batch, and the evidence for it (written to result.json)."""

    micro_batch: int
    accumulation_steps: int
    gradient_checkpointing: bool = False
    peak_bytes: Optional[int] = None  # measured peak of the chosen micro-batch; None when not measured
    budget_bytes: Optional[int] = None
    margin: float = 0.0
    tried: list[tuple[int, Optional[int]]] = field(default_factory=list)  # (micro_batch, peak or None=OOM)
    tried_without_checkpointing: list[tuple[int, Optional[int]]] = field(default_factory=list)
    reason: str = ""
    fits: bool = True  # False: not even micro-batch 1 stays under the limit

    @property
    def effective_batch(self) -> int:
        return self.micro_batch * self.accumulation_steps

    @property
    def limit_bytes(self) -> Optional[int]:
        """The most a step may use: the budget less the safety margin."""
        return None if self.budget_bytes is None else int(self.budget_bytes * (1.0 - self.margin))

    def apply(self, cfg: TrainConfig) -> TrainConfig:
        """A copy of ``cfg`` with this plan's split (the product of the two never changes)."""
        return dataclasses.replace(cfg, batch_size=self.micro_batch,
                                   accumulation_steps=self.accumulation_steps)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready; sizes also in MiB so a reader of result.json need not divide."""
        return {
            "micro_batch": self.micro_batch,
            "accumulation_steps": self.accumulation_steps,
            "effective_batch": self.effective_batch,
            "gradient_checkpointing": self.gradient_checkpointing,
            "peak_bytes": self.peak_bytes,
            "peak_mib": _mib(self.peak_bytes),
            "budget_bytes": self.budget_bytes,
            "budget_mib": _mib(self.budget_bytes),
            "margin": self.margin,
            "fits": self.fits,
            "tried": _tried_json(self.tried),
            "tried_without_checkpointing": _tried_json(self.tried_without_checkpointing),
            "reason": self.reason,
        }


def _mib(n: Optional[int]) -> Optional[float]:
    return None if n is None else round(n / (1 << 20), 1)


def _tried_json(tried: list[tuple[int, Optional[int]]]) -> list[dict[str, Any]]:
    return [{"micro_batch": b, "peak_bytes": "oom" if p is None else p} for b, p in tried]


def divisors(n: int) -> list[int]:
    """Divisors of ``n`` in ascending order."""
    if n < 1:
        raise ValueError(f"effective batch must be >= 1, got {n}")
    small = [d for d in range(1, int(n**0.5) + 1) if n % d == 0]
    return sorted(set(small + [n // d for d in small]))


def search_micro_batch(
    effective_batch: int,
    measure: Measure,
    budget_bytes: int,
    margin: float = 0.1,
    start: Optional[int] = None,
    floor: int = 1,
) -> MemoryPlan:
    """The largest divisor of ``effective_batch`` whose measured peak is <= budget * (1 - margin).

    Peak memory grows with the micro-batch, so one result settles every candidate on its side:
    a fit rules out probing anything smaller, a miss anything larger. The search tries the largest
    candidate first (usually it fits: one probe), then walks down the sorted divisors with
    doubling strides (the next divisor, i.e. about half for powers of two, then 2, 4, ... places
    down) until something fits, and bisects the divisors left between that fit and the last miss:
    at most about 2 * log2(number of divisors) + 1 probes, each micro-batch measured once.
    ``start`` caps the first candidate (the largest divisor <= start); ``floor`` is the smallest
    micro-batch the model can train on (src/engine/batch_floor.py), never tried below.
    """
    if not 0.0 <= margin < 1.0:
        raise ValueError(f"margin must be in [0, 1), got {margin}")
    limit = int(budget_bytes * (1.0 - margin))
    cands = [d for d in divisors(effective_batch) if d >= floor and (start is None or d <= start)] or [floor]
    tried: list[tuple[int, Optional[int]]] = []

    def fits(i: int) -> bool:
        peak = measure(cands[i])
        tried.append((cands[i], peak))
        return peak is not None and peak <= limit

    # Invariant: cands[lo] fits (or lo == -1: none known), cands[hi] does not (or hi == len).
    lo, hi = -1, len(cands)
    i, stride = len(cands) - 1, 1
    while True:
        if fits(i):
            lo = i
            break
        hi = i
        if i == 0:
            break
        i, stride = max(i - stride, 0), stride * 2
    while lo >= 0 and hi - lo > 1:
        mid = (lo + hi) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid

    peaks = dict(tried)
    if lo < 0:
        return MemoryPlan(
            micro_batch=1, accumulation_steps=effective_batch, peak_bytes=None, budget_bytes=budget_bytes,
            margin=margin, tried=tried, fits=False,
            reason=f"even micro-batch {cands[0]} exceeds {limit / GIB:.2f} GiB "
                   f"(budget {budget_bytes / GIB:.2f} GiB less {margin:.0%} margin)",
        )
    micro = cands[lo]
    return MemoryPlan(
        micro_batch=micro, accumulation_steps=effective_batch // micro, peak_bytes=peaks[micro],
        budget_bytes=budget_bytes, margin=margin, tried=tried,
        reason=f"largest micro-batch dividing {effective_batch} with peak "
               f"{peaks[micro] / GIB:.2f} GiB <= {limit / GIB:.2f} GiB",
    )
