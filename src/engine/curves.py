"""curves.png: a stage's training curves at a glance (loss, accuracy, learning rate, grad norm).

Uses matplotlib's object API (``Figure``) rather than pyplot, so nothing is registered in
pyplot's global figure list: each figure is freed with its last reference, however many
stages a process plots, and no display backend is needed (PNG output renders with Agg).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from src.engine.run_log import read_records
from src.utils.atomic import atomic_write_with


def grad_norm_per_epoch(metrics_jsonl: Path | None) -> pd.Series | None:
    """Mean of the finite ``grad_norm`` values per epoch, or None when the log has none."""
    if metrics_jsonl is None or not Path(metrics_jsonl).exists():
        return None
    records = pd.DataFrame(read_records(Path(metrics_jsonl)))
    if "grad_norm" not in records:
        return None
    norms = pd.to_numeric(records["grad_norm"], errors="coerce")
    finite = records[np.isfinite(norms)]
    if finite.empty:
        return None
    return finite.groupby("epoch")["grad_norm"].mean()


def plot_curves(epochs_csv: Path, metrics_jsonl: Path | None, out_png: Path) -> Path:
    """Draw the four panels from epochs.csv (and metrics.jsonl) and write ``out_png`` atomically."""
    epochs = pd.read_csv(epochs_csv)
    fig = Figure(figsize=(10, 7), layout="constrained")
    (loss, acc), (lr, last) = fig.subplots(2, 2)
    style = {"marker": "o", "markersize": 3}  # a single epoch still shows as a point
    for split in ("train", "val"):
        loss.plot(epochs["epoch"], epochs[f"{split}_loss"], label=split, **style)
        acc.plot(epochs["epoch"], epochs[f"{split}_accuracy"], label=split, **style)
    lr.plot(epochs["epoch"], epochs["learning_rate"], color="tab:green", **style)
    norms = grad_norm_per_epoch(metrics_jsonl)
    if norms is not None:
        last.plot(norms.index, norms.to_numpy(), color="tab:red", **style)
        last.set_title("gradient norm (mean per epoch)")
    else:
        last.plot(epochs["epoch"], epochs["epoch_time_sec"], color="tab:purple", **style)
        last.set_title("epoch time (s)")
    loss.set_title("loss")
    acc.set_title("accuracy")
    lr.set_title("learning rate (end of epoch)")
    lr.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    for ax in (loss, acc):
        ax.legend()
    for ax in (loss, acc, lr, last):
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    return atomic_write_with(out_png, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
