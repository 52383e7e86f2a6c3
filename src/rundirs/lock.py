"""One process at a time per run directory.

Two runs in one folder would overwrite each other's files, and one run's clean-up of stale
temporary files would delete the checkpoint the other is writing. The lock is an advisory
``flock`` on the run directory itself: the kernel releases it when the process ends however it
ends (a crash, SIGKILL), so a stale lock never blocks anyone. Who holds it is written to
``.kd-pipeline.lock`` (pid, host, start time, command) so a refused run can name them. Under
torchrun only rank 0 takes it, as only rank 0 writes. ``flock`` is POSIX: where it does not
exist (Windows) the run goes on unlocked, with a warning.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import sys
from datetime import datetime, timezone
from pathlib import Path
from types import TracebackType

from src.errors import UserError
from src.utils.atomic import atomic_write_json

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None  # type: ignore[assignment]

LOCK_FILE = ".kd-pipeline.lock"
LOGGER = logging.getLogger("kd_pipeline.lock")


class RunLock:
    """``with RunLock(root):`` holds the run directory ``root`` (created if needed) or raises
    a UserError naming the process that holds it."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.info_path = self.root / LOCK_FILE
        self._fd: int | None = None
        self._created_root = False

    def __enter__(self) -> RunLock:
        self._created_root = not self.root.exists()
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:  # a name too long, a read-only file system, no permission
            raise UserError(f"cannot create --output-dir {self.root}: {exc.strerror}") from None
        if fcntl is None:
            LOGGER.warning("no file locking on this platform: nothing stops a second run in %s; "
                           "start one run per --output-dir at a time", self.root)
            return self
        fd = os.open(self.root, os.O_RDONLY)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise UserError(f"{self._holder()} is using {self.root}; wait for it to finish (or stop it), "
                            "then re-run this command") from None
        self._fd = fd
        atomic_write_json(self.info_path, {
            "pid": os.getpid(), "host": socket.gethostname(), "command": " ".join(sys.argv),
            "started": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
        })
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.release()

    def release(self) -> None:
        if self._fd is None:
            return
        self.info_path.unlink(missing_ok=True)
        fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None
        if self._created_root and not any(self.root.iterdir()):
            self.root.rmdir()  # a run refused before writing anything leaves no folder behind

    def _holder(self) -> str:
        """Who holds the lock, from the info file (which the holder may not have written yet)."""
        try:
            info = json.loads(self.info_path.read_text(encoding="utf-8"))
            return (f"another kd-pipeline run (pid {info['pid']} on {info['host']}, "
                    f"started {info['started']}: {info['command']})")
        except (OSError, ValueError, KeyError, TypeError):
            return "another kd-pipeline run"
