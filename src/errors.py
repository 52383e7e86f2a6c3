"""Exceptions that carry the process exit code the command-line contract promises.

The entry points catch these (see ``src.cli.train``) and turn them into one line on stderr
and the documented exit code, so no user ever sees a traceback for a mistake they can fix.
"""
from __future__ import annotations


def error_detail(exc: BaseException, limit: int = 200) -> str:
    """One informative line of an exception from a library (torch, an exporter, ONNX Runtime) for a
    one-line error: its first non-blank line, or the second when the first is a bare header ending
    in ":" (torch's "Error(s) in loading state_dict for ...:"), cut to ``limit`` characters."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    if not lines:
        return type(exc).__name__
    detail = lines[1] if len(lines) > 1 and lines[0].endswith(":") else lines[0]
    return detail if len(detail) <= limit else detail[: limit - 3] + "..."


class KDPipelineError(Exception):
    """Base class: an error the command line reports without a traceback."""

    exit_code: int = 1


class UserError(KDPipelineError):
    """Bad input: a flag, a config value, missing data, an unreadable file (exit code 2)."""

    exit_code = 2


class IncompatibleResumeError(UserError):
    """A resume whose saved run cannot be continued with the requested settings (exit code 2)."""


class DiskFullError(UserError):
    """A write failed for lack of space (or a file-size limit); the file it would have replaced is
    intact, so the same command continues once there is room (exit code 2)."""


class TrainingInterrupted(KDPipelineError):
    """SIGINT/SIGTERM arrived; a checkpoint was saved first. Exit code is 128 + signal number."""

    def __init__(self, signum: int, message: str) -> None:
        super().__init__(message)
        self.signum = signum
        self.exit_code = 128 + int(signum)
