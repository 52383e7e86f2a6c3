"""What the user sees while a stage trains: a tqdm bar on a terminal, plain log lines in
CI and files, nothing with ``progress=off``. Values shown are those already read at a log
interval, so progress reporting never adds a device sync."""
from __future__ import annotations

import logging
import sys
from typing import Any, Optional

from tqdm import tqdm


def resolve_mode(mode: str, is_main: bool) -> str:
    """``auto`` means a bar when stderr is a terminal and plain lines otherwise; only rank 0 reports."""
    if not is_main:
        return "off"
    if mode == "auto":
        return "bar" if sys.stderr.isatty() else "plain"
    return mode


class Progress:
    """One stage's progress reporting."""

    def __init__(self, mode: str, logger: logging.Logger, is_main: bool = True) -> None:
        self.mode = resolve_mode(mode, is_main)
        self.logger = logger
        self._bar: Optional[tqdm] = None
        self._epoch = 0
        self._epochs = 0

    def start_epoch(self, epoch: int, epochs: int, micro_batches: int, done: int = 0) -> None:
        self._epoch, self._epochs = epoch, epochs
        if self.mode == "bar":
            self._bar = tqdm(total=micro_batches + done, initial=done, desc=f"epoch {epoch}/{epochs}",
                             leave=False, dynamic_ncols=True, file=sys.stderr)

    def advance(self) -> None:
        if self._bar is not None:
            self._bar.update(1)

    def interval(self, record: dict[str, Any]) -> None:
        """Show a metrics.jsonl record (loss, accuracy, images/s)."""
        if self._bar is not None:
            self._bar.set_postfix(loss=f"{record['loss']:.4f}", acc=f"{record['accuracy']:.3f}",
                                  img_s=f"{record['images_per_sec']:.0f}")
        elif self.mode == "plain":
            self.logger.info("epoch %d/%d step %d: loss %.4f acc %.3f lr %.3g %.0f img/s", self._epoch,
                             self._epochs, record["step"], record["loss"], record["accuracy"], record["lr"],
                             record["images_per_sec"])

    def end_epoch(self, row: dict[str, Any]) -> None:
        self.close()
        if self.mode != "off":
            self.logger.info(
                "epoch %d/%d: train loss %.4f acc %.4f | val loss %.4f acc %.4f f1 %.4f | lr %.3g | %.1fs",
                row["epoch"], self._epochs, row["train_loss"], row["train_accuracy"], row["val_loss"],
                row["val_accuracy"], row["val_f1_score"], row["learning_rate"], row["epoch_time_sec"])

    def message(self, text: str) -> None:
        """Something the user must notice (OOM fallback, resume), even with progress off."""
        self.logger.warning("%s", text)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
