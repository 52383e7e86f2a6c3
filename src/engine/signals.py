"""SIGINT/SIGTERM during training: remember the signal, let the loop stop at a step boundary.

Killing a run mid-update would lose everything since the last checkpoint; a flag lets the
engine finish the current update, save, and exit with 128 + signal number.
"""
from __future__ import annotations

import signal
import threading
from types import FrameType, TracebackType
from typing import Any, Optional


class StopSignals:
    """Context manager: while active, SIGINT/SIGTERM only set ``received``; the previous
    handlers come back on exit. Outside the main thread (where Python forbids installing
    handlers) it does nothing."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self) -> None:
        self.received: Optional[int] = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Optional[FrameType]) -> None:
        self.received = signum

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for signum in self.SIGNALS:
                self._previous[signum] = signal.signal(signum, self._handle)
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()
