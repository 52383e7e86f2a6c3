"""``runtime.compile``: torch.compile for the student's training forward/backward and the frozen
teacher's forward, with an eager fallback that never costs a run.

On a fast GPU a small model's step is bound by Python and kernel launches, not by the GPU:
compiling fuses the kernels, and on CUDA the teacher's forward (static shapes, no gradients)
is also captured as a CUDA graph (``mode="reduce-overhead"``), so one launch replays it. Each
batch shape gets its own graph (``dynamic=False``): a stage sees two (the full batch and the
epoch's short last one), more only after an out-of-memory fallback halves the micro-batch.

Compiling costs tens of seconds per graph, so ``auto`` compiles only CUDA stages long enough
to repay it, and never the CPU, where the fused kernels buy little; ``on`` compiles anywhere.
A failure to compile (no C++ compiler, a model dynamo cannot trace) makes that module eager for
the rest of the stage after one warning line: compiling is an optimisation, never a reason
for a run to stop. Nothing here calls torch.compile when compiling is off, so no inductor
worker pool is started.
"""
from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Literal, Optional, TypeVar, Union

import torch
from torch import nn

from src.errors import error_detail

CompileMode = Literal["auto", "on", "off"]
COMPILE_MODES: tuple[CompileMode, ...] = ("auto", "on", "off")
# A ResNet-18 KD step at 32 px, batch 128, takes some 10-15 ms on an H-class GPU, and compiling
# the student and teacher costs of the order of a minute: halving 5,000 such steps saves about
# that much. Shorter stages are not worth the wait (an estimate, to be re-measured on a GPU).
AUTO_MIN_UPDATES = 5000

LOGGER = logging.getLogger("kd_pipeline.engine")
T = TypeVar("T")


@dataclass(frozen=True)
class CompileSettings:
    """``mode`` is ``runtime.compile``; ``backend`` is torch.compile's (``inductor`` in a run;
    a benchmark or a test of the engine's handling may pick another, a name or a callable)."""

    mode: CompileMode = "off"
    backend: Union[str, Callable[..., Any]] = "inductor"


EAGER = CompileSettings()  # the engine's default: a caller that says nothing trains eager


def should_compile(mode: CompileMode, device: torch.device, total_updates: int) -> bool:
    """Whether a stage of ``total_updates`` optimizer updates on ``device`` is compiled."""
    if mode not in COMPILE_MODES:
        raise ValueError(f"runtime.compile must be one of {', '.join(COMPILE_MODES)}, got {mode!r}")
    if mode == "auto":
        return device.type == "cuda" and total_updates >= AUTO_MIN_UPDATES
    return mode == "on"


class CompiledModule:
    """``module``'s compiled forward until it first fails, then its eager forward for good.

    ``run(work)`` calls ``work`` with the forward to use; when the compiled one raises anything
    but an out-of-memory error (which the engine's fallback handles), ``work`` is run again
    with the eager module, after one warning line. A compile error happens before the graph
    runs, so nothing of the failed attempt (gradients included) is left behind."""

    def __init__(self, module: nn.Module, what: str, settings: CompileSettings,
                 device: torch.device, *, cuda_graphs: bool = False,
                 logger: Optional[logging.Logger] = None) -> None:
        self.eager = module
        self.what = what
        self.logger = logger or LOGGER
        self.cuda_graphs = cuda_graphs and device.type == "cuda"
        mode = "reduce-overhead" if self.cuda_graphs else None
        self.compiled: Optional[Callable[..., torch.Tensor]]
        try:
            self.compiled = torch.compile(module, backend=settings.backend, mode=mode, dynamic=False)
        except Exception as exc:  # noqa: BLE001 (a backend may raise anything while setting up)
            self.compiled = None
            self._warn(exc)

    @property
    def active(self) -> bool:
        """Whether calls still go through the compiled forward."""
        return self.compiled is not None

    def run(self, work: Callable[[Callable[..., torch.Tensor]], T]) -> T:
        """``work(forward)`` with the compiled forward, or with the eager one once it failed."""
        if self.compiled is not None:
            if self.cuda_graphs:  # a new step: outputs of the previous replay may be overwritten
                torch.compiler.cudagraph_mark_step_begin()
            try:
                return work(self.compiled)
            except torch.OutOfMemoryError:
                raise
            except Exception as exc:  # noqa: BLE001 (dynamo and inductor raise many kinds)
                self.compiled = None
                self._warn(exc)
        return work(self.eager)

    def __call__(self, *args: torch.Tensor) -> torch.Tensor:
        return self.run(lambda forward: forward(*args))

    def _warn(self, exc: BaseException) -> None:
        self.logger.warning("runtime.compile: could not compile the %s (%s: %s); it runs eager",
                            self.what, type(exc).__name__, error_detail(exc))
