"""Early stopping with explicit semantics, resumable from its state.

An epoch is an improvement only when its value is STRICTLY better than the best so far by
more than ``min_delta``; only epochs that are not improvements increase ``wait``, and any
improvement resets it. Training should stop once ``wait >= patience``. NaN never improves.
The state is plain numbers so it can live in a weights_only checkpoint.
"""
from __future__ import annotations

import math
from typing import Any, Literal

from src.errors import IncompatibleResumeError


class EarlyStopping:
    """Tracks the monitored validation value across epochs (in the spirit of Lightning's)."""

    def __init__(
        self,
        monitor: str = "val_loss",
        mode: Literal["min", "max"] = "min",
        patience: int | None = 10,
        min_delta: float = 0.0,
    ) -> None:
        if mode not in ("min", "max"):
            raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
        if patience is not None and patience < 1:
            raise ValueError(f"patience must be >= 1 or None, got {patience}")
        if min_delta < 0:
            raise ValueError(f"min_delta must be >= 0, got {min_delta}")
        self.monitor = monitor
        self.mode = mode
        self.patience = patience
        self.min_delta = float(min_delta)
        self._best = math.inf if mode == "min" else -math.inf
        self._best_epoch = 0  # 0: no improvement seen yet (epochs count from 1)
        self._wait = 0

    def update(self, value: float, epoch: int) -> bool:
        """Record epoch ``epoch``'s value; True when it is a new best."""
        value = float(value)
        if self.mode == "min":
            improved = value < self._best - self.min_delta
        else:
            improved = value > self._best + self.min_delta
        # NaN compares False above, so it is never an improvement and counts as a bad epoch.
        if improved:
            self._best, self._best_epoch, self._wait = value, int(epoch), 0
        else:
            self._wait += 1
        return improved

    @property
    def best(self) -> float:
        return self._best

    @property
    def best_epoch(self) -> int:
        return self._best_epoch

    @property
    def wait(self) -> int:
        return self._wait

    @property
    def should_stop(self) -> bool:
        return self.patience is not None and self._wait >= self.patience

    def state_dict(self) -> dict[str, Any]:
        return {
            "monitor": self.monitor, "mode": self.mode, "best": self._best,
            "best_epoch": self._best_epoch, "wait": self._wait,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore progress; ``patience``/``min_delta`` stay as configured now (a resume may change them)."""
        if state["monitor"] != self.monitor or state["mode"] != self.mode:
            raise IncompatibleResumeError(
                f"the checkpoint's early stopping tracks {state['mode']} {state['monitor']}, "
                f"this run asks for {self.mode} {self.monitor}"
            )
        self._best = float(state["best"])
        self._best_epoch = int(state["best_epoch"])
        self._wait = int(state["wait"])
