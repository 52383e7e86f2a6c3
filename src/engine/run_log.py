"""metrics.jsonl: the per-interval records of a stage (loss parts, lr, grad norm, images/s).

Records are kept in memory and the whole file is rewritten atomically on ``flush()``. The
trainer flushes when it saves a checkpoint, so the file on disk never holds records from
beyond the checkpoint a resume continues from; a resume also drops any record with a step
after the checkpoint's, so no interval is ever logged twice. One JSON object per line; each
has at least ``step`` (global optimizer update count) and ``epoch``. Non-finite floats are
written as Python's json writes them (``NaN``, ``Infinity``), which pandas and Python read.

TensorBoard is optional: ``open_tensorboard`` mirrors the numeric values of every record.
"""
from __future__ import annotations

import json
import numbers
from pathlib import Path
from typing import Any

from src.errors import UserError
from src.utils.atomic import atomic_write_text


class TensorBoardLog:
    """Mirrors metrics.jsonl records to a TensorBoard ``SummaryWriter``, one scalar per numeric key."""

    def __init__(self, writer: Any) -> None:
        self.writer = writer

    def log(self, record: dict[str, Any]) -> None:
        for key, value in record.items():
            numeric = isinstance(value, numbers.Real) and not isinstance(value, bool)
            if numeric and key not in ("step", "epoch"):
                self.writer.add_scalar(key, value, record["step"])

    def flush(self) -> None:
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


def open_tensorboard(log_dir: Path, purge_step: int | None = None) -> TensorBoardLog:
    """A TensorBoard log in ``log_dir``; ``purge_step`` (resume) hides events from that step on."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise UserError(
            "tensorboard: true needs the tensorboard package (pip install tensorboard); "
            "or set tensorboard: false (metrics.jsonl and curves.png are always written)"
        ) from None
    return TensorBoardLog(SummaryWriter(log_dir=str(log_dir), purge_step=purge_step))


class MetricsLog:
    """The stage's metrics.jsonl. ``resume_after_step``: keep the file's records up to that step."""

    def __init__(
        self, path: Path, resume_after_step: int | None = None, tensorboard: TensorBoardLog | None = None
    ) -> None:
        self.path = Path(path)
        self.tensorboard = tensorboard
        self._lines: list[str] = []
        if resume_after_step is not None and self.path.exists():
            for record in read_records(self.path):
                if record["step"] <= resume_after_step:
                    self._lines.append(json.dumps(record))

    def append(self, record: dict[str, Any]) -> None:
        """Buffer one record (encoded now, so a bad value fails here, not at flush time)."""
        missing = [key for key in ("step", "epoch") if key not in record]
        if missing:
            raise ValueError(f"metrics record needs {missing}: {record!r}")
        self._lines.append(json.dumps(record))
        if self.tensorboard is not None:
            self.tensorboard.log(record)

    def flush(self) -> None:
        """Rewrite the file with every record so far (atomically)."""
        atomic_write_text(self.path, "".join(line + "\n" for line in self._lines))
        if self.tensorboard is not None:
            self.tensorboard.flush()

    @property
    def records(self) -> list[dict[str, Any]]:
        return [json.loads(line) for line in self._lines]


def read_records(path: Path) -> list[dict[str, Any]]:
    """All records of a metrics.jsonl file; a damaged line is a UserError naming it."""
    records = []
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise UserError(f"{path} is not UTF-8 text (byte {err.start}); delete the file to start it over"
                        ) from None
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as err:
            raise UserError(
                f"{path} line {number} is not JSON ({err.msg}); delete the file to start it over"
            ) from None
        if not isinstance(record, dict) or not isinstance(record.get("step"), int):
            raise UserError(f"{path} line {number} has no integer 'step'; delete the file to start it over")
        records.append(record)
    return records
