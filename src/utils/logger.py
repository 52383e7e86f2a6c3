"""The per-epoch CSV every stage writes (``epochs.csv``) and the pipeline's logging setup.

The CSV schema is a contract: plots, reports and users' own notebooks read these columns by
name and position, so a row with a missing, extra or reordered column is refused instead of
silently written.
"""
from __future__ import annotations

import csv
import io
import logging
import math
import numbers
import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Union

from src.errors import UserError
from src.utils.atomic import atomic_write_text

REQUIRED_COLUMNS: tuple[str, ...] = (
    "epoch",
    "train_loss",
    "train_accuracy",
    "train_precision",
    "train_recall",
    "train_f1_score",
    "val_loss",
    "val_accuracy",
    "val_precision",
    "val_recall",
    "val_f1_score",
    "learning_rate",
    "epoch_time_sec",
    "gpu_memory_mb",
)
# The per-split numbers of epochs.csv, result.json's "test" and evaluate.py, in that order.
SPLIT_METRICS: tuple[str, ...] = ("loss", "accuracy", "precision", "recall", "f1_score")
MONITORABLE: tuple[str, ...] = tuple(f"val_{name}" for name in SPLIT_METRICS)  # early stopping's choices
assert REQUIRED_COLUMNS[1:11] == (*(f"train_{m}" for m in SPLIT_METRICS), *MONITORABLE)


def better_mode(column: str) -> str:
    """``min`` for a loss column, ``max`` for accuracy, precision, recall and F1."""
    return "min" if column.endswith("loss") else "max"


_OPTIONAL = frozenset({"gpu_memory_mb"})  # empty without a GPU: never a made-up number
# A loss can really be NaN/inf (an fp16 overflow in evaluation); the log records what happened
# and the divergence guard decides whether training stops. Any other non-finite value is a bug.
_MAY_BE_NONFINITE = frozenset({"train_loss", "val_loss"})

Value = Union[int, float, None]
_LOG = logging.getLogger("kd_pipeline.engine")


class SchemaError(UserError, ValueError):
    """An epochs.csv header or row does not match ``REQUIRED_COLUMNS`` exactly."""


def _describe_mismatch(columns: list[str]) -> str:
    expected = list(REQUIRED_COLUMNS)
    missing = [c for c in expected if c not in columns]
    extra = [c for c in columns if c not in expected]
    parts = []
    if missing:
        parts.append(f"missing {missing}")
    if extra:
        parts.append(f"extra {extra}")
    if not parts:
        parts.append(f"misordered: got {columns}")
    return "; ".join(parts) + f" (expected, in order: {', '.join(expected)})"


def _check_value(column: str, value: object) -> Value:
    if column in _OPTIONAL and (value is None or value == ""):
        return None
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise SchemaError(f"column {column!r} needs a number, got {value!r} ({type(value).__name__})")
    if column == "epoch":
        if not isinstance(value, numbers.Integral) or value < 1:
            raise SchemaError(f"column 'epoch' needs an integer >= 1 (epochs count from 1), got {value!r}")
        return int(value)
    if not math.isfinite(value) and column not in _MAY_BE_NONFINITE:
        raise SchemaError(f"column {column!r} must be finite, got {value!r}")
    return value if isinstance(value, int) else float(value)


def _rows_up_to(rows: Sequence[Mapping[str, Value]] | None, epoch: int) -> list[dict[str, Value]] | None:
    """``rows`` for epochs 1..``epoch`` exactly (checked like logged rows), or None if they are not."""
    if rows is None:
        return None
    try:
        kept = [{c: _check_value(c, row[c]) for c in REQUIRED_COLUMNS}
                for row in rows if row["epoch"] <= epoch]
    except (KeyError, SchemaError, TypeError):
        return None
    return kept if [row["epoch"] for row in kept] == list(range(1, epoch + 1)) else None


def _parse_cell(column: str, text: str) -> Value:
    if column in _OPTIONAL and text == "":
        return None
    number = float(text)
    if column == "epoch" or (number.is_integer() and "." not in text and "e" not in text.lower()):
        return int(number)
    return number


class EpochLogger:
    """Writes ``epochs.csv``: exactly ``REQUIRED_COLUMNS``, one row per finished epoch.

    Opening an existing file checks its header and keeps only the rows with
    ``epoch <= resume_from_epoch``, so a crash between writing a row and saving the checkpoint
    never leaves a duplicated epoch after the resume. Every ``log`` rewrites the whole (small)
    file atomically: each state on disk is a complete CSV.

    ``saved_rows``: the rows the checkpoint being resumed carries. When the file is missing,
    damaged or short of them, it is rebuilt from them (a damaged file is kept beside it as
    ``epochs.csv.damaged``), so a bad CSV never blocks a stage whose checkpoint is sound.
    """

    def __init__(self, path: str | os.PathLike[str], resume_from_epoch: int = 0,
                 saved_rows: Sequence[Mapping[str, Value]] | None = None) -> None:
        valid = isinstance(resume_from_epoch, int) and not isinstance(resume_from_epoch, bool)
        if not valid or resume_from_epoch < 0:
            raise ValueError(f"resume_from_epoch must be an integer >= 0, got {resume_from_epoch!r}")
        self.path = Path(path)
        self._rows: list[dict[str, Value]] = []
        fallback = _rows_up_to(saved_rows, resume_from_epoch)
        problem: UserError | None = None
        if self.path.exists():
            try:
                self._rows = self._read_existing(resume_from_epoch)
            except UserError as exc:
                problem = exc
                if fallback is not None:
                    os.replace(self.path, self.path.with_name(self.path.name + ".damaged"))
        elif resume_from_epoch > 0:
            problem = UserError(f"cannot resume {self.path}: the file is missing but the checkpoint is at "
                                f"epoch {resume_from_epoch}")
        if problem is not None:
            if fallback is None:
                advice = f"; restore it, or delete {self.path.parent} to train the stage again"
                raise type(problem)(f"{problem}{advice}") from None
            _LOG.warning("%s; rebuilt it from the checkpoint's %d rows", problem, len(fallback))
            self._rows = fallback
        self._write()

    def _read_existing(self, resume_from_epoch: int) -> list[dict[str, Value]]:
        with open(self.path, newline="", encoding="utf-8") as handle:
            reader = csv.reader(handle)
            header = next(reader, None)
            if header is None:
                raise SchemaError(f"{self.path} is empty: expected the header {', '.join(REQUIRED_COLUMNS)}")
            if tuple(header) != REQUIRED_COLUMNS:
                raise SchemaError(f"{self.path} has the wrong columns: {_describe_mismatch(header)}")
            rows = []
            for line_no, cells in enumerate(reader, start=2):
                if len(cells) != len(REQUIRED_COLUMNS):
                    raise SchemaError(
                        f"{self.path} line {line_no} has {len(cells)} cells, expected {len(REQUIRED_COLUMNS)}"
                    )
                try:
                    row = {c: _parse_cell(c, v) for c, v in zip(REQUIRED_COLUMNS, cells, strict=True)}
                except ValueError as exc:
                    raise SchemaError(f"{self.path} line {line_no} is not numeric: {exc}") from None
                if row["epoch"] <= resume_from_epoch:
                    rows.append(row)
        epochs = [row["epoch"] for row in rows]
        if epochs != list(range(1, resume_from_epoch + 1)):
            raise UserError(
                f"cannot resume {self.path} at epoch {resume_from_epoch}: it holds epochs {epochs}, "
                f"expected 1..{resume_from_epoch}"
            )
        return rows

    @property
    def rows(self) -> list[dict[str, Value]]:
        """The logged rows, oldest first (copies: editing them changes nothing on disk)."""
        return [dict(row) for row in self._rows]

    @property
    def last_epoch(self) -> int:
        """The last logged epoch (0 before the first)."""
        return int(self._rows[-1]["epoch"]) if self._rows else 0

    def log(self, row: Mapping[str, object]) -> None:
        """Append one epoch's row; keys must be ``REQUIRED_COLUMNS`` in order and the epoch
        the one after the last (no gaps, no repeats)."""
        columns = list(row.keys())
        if tuple(columns) != REQUIRED_COLUMNS:
            raise SchemaError(f"epoch row has the wrong columns: {_describe_mismatch(columns)}")
        checked = {column: _check_value(column, row[column]) for column in REQUIRED_COLUMNS}
        expected = self.last_epoch + 1
        if checked["epoch"] != expected:
            raise ValueError(f"epoch {checked['epoch']} logged out of order: expected epoch {expected}")
        self._rows.append(checked)
        try:
            self._write()
        except BaseException:
            self._rows.pop()
            raise

    def _write(self) -> None:
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(REQUIRED_COLUMNS)
        for row in self._rows:
            writer.writerow(["" if row[c] is None else row[c] for c in REQUIRED_COLUMNS])
        atomic_write_text(self.path, buffer.getvalue())


LOG_FORMAT = "%(asctime)s %(levelname)-7s %(name)s: %(message)s"
PIPELINE_LOGGER = "kd_pipeline"  # every module logs under this name, so pipeline.log gets it all
_HANDLER_TAG = "_kd_pipeline_handler"


class _LogFileHandler(logging.FileHandler):
    """pipeline.log. A line that cannot be written (a full disk) must not print logging's
    traceback block: the file is closed with one warning on stderr and the run goes on; the
    error that matters surfaces at the next file the run writes (src.utils.atomic)."""

    def handleError(self, record: logging.LogRecord) -> None:  # noqa: N802 (logging's name)
        reason = sys.exc_info()[1]
        self.close()
        logging.getLogger(PIPELINE_LOGGER).removeHandler(self)
        print(f"warning: cannot write {self.baseFilename} ({reason}); log lines go to stderr only",
              file=sys.stderr)


def setup_logging(
    log_file: str | os.PathLike[str] | None = None, level: int = logging.INFO
) -> logging.Logger:
    """Configure the ``kd_pipeline`` logger: one format to stderr and, optionally, to ``log_file``.

    Idempotent: calling it again replaces this function's own handlers instead of adding
    duplicates (a second call with another ``log_file`` moves the file output there). Messages
    do not propagate to the root logger, so they appear once even if the user configured it.
    ``pipeline.log`` is appended line by line, the one file not written atomically: it is a
    stream, and its value is what reached the disk before a crash.
    """
    logger = logging.getLogger(PIPELINE_LOGGER)
    for handler in [h for h in logger.handlers if getattr(h, _HANDLER_TAG, False)]:
        logger.removeHandler(handler)
        handler.close()
    formatter = logging.Formatter(LOG_FORMAT)
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    if log_file is not None:
        Path(log_file).parent.mkdir(parents=True, exist_ok=True)
        handlers.append(_LogFileHandler(log_file, encoding="utf-8", errors="backslashreplace"))
    for handler in handlers:
        handler.setFormatter(formatter)
        setattr(handler, _HANDLER_TAG, True)
        logger.addHandler(handler)
    logger.setLevel(level)
    logger.propagate = False
    return logger


def announce(message: str) -> None:
    """A verbose summary of the training guards (``freeze_teacher(verbose=True)``, ...): logged to
    ``kd_pipeline`` (so it lands in pipeline.log) once ``setup_logging`` configured it,
    printed otherwise, so a user calling the guards from their own script still sees it."""
    if logging.getLogger(PIPELINE_LOGGER).handlers:
        logging.getLogger(f"{PIPELINE_LOGGER}.guards").info(message)
    else:
        print(message)
