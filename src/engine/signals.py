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


class CommandInterrupted(KeyboardInterrupt):
    """SIGINT or SIGTERM outside training (data checks, the report, the cost measurement): the
    command ends with 128 + ``signum``; every finished stage is saved, so the same command continues."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum

    @property
    def exit_code(self) -> int:
        return 128 + self.signum


class CommandSignals(StopSignals):
    """Context manager for one command: SIGINT and SIGTERM raise :class:`CommandInterrupted`
    (SIGTERM's default would end the process without a word), and ``received`` remembers the
    signal, so one raised where Python ignores exceptions (a finalizer, a plotting callback)
    still ends the command with its exit code. Training's :class:`StopSignals` takes over while
    it runs; the previous handlers come back on exit. Outside the main thread it does nothing."""

    def _handle(self, signum: int, frame: Optional[FrameType]) -> None:
        self.received = signum
        raise CommandInterrupted(signum)
