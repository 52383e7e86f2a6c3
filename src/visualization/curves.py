"""curves.png: a stage's training curves at a glance.

The loss panel compares like with like: the cross-entropy on the labels, train against
validation. epochs.csv's ``train_loss`` is the objective the stage minimised, which for a
distillation stage is ``alpha * T^2 * KL + (1 - alpha) * CE`` and not comparable with the
validation cross-entropy, so the train curve comes from the epoch records of metrics.jsonl
(``train_ce``, the mean of the objective's ``ce`` part). A distillation stage gets two more
panels: its KD term (``train_kd``, the T^2-scaled KL) beside the whole objective, and alpha.
Without those records (an objective that reports no ``ce``) the objective is plotted, labelled so.

Uses matplotlib's object API (``Figure``) rather than pyplot, so nothing is registered in
pyplot's global figure list: each figure is freed with its last reference, however many
stages a process plots, and no display backend is needed (PNG output renders with Agg).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from matplotlib.axes import Axes
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

from src.utils.atomic import atomic_write_with

STYLE = {"marker": "o", "markersize": 3}  # a single epoch still shows as a point


def mean_grad_norms(records: pd.DataFrame) -> pd.Series | None:
    """Mean of the finite ``grad_norm`` values per epoch, or None when the records have none."""
    if "grad_norm" not in records:
        return None
    norms = pd.to_numeric(records["grad_norm"], errors="coerce")
    finite = records[np.isfinite(norms)]
    if finite.empty:
        return None
    return finite.groupby("epoch")["grad_norm"].mean()


def epoch_parts(records: pd.DataFrame) -> pd.DataFrame:
    """The epoch records' mean loss parts (``train_ce``, ``train_kd``, ...) indexed by epoch; the
    last record of an epoch wins (a resumed epoch is recorded again)."""
    if "event" not in records:
        return pd.DataFrame()
    epochs = records[records["event"] == "epoch"]
    return epochs.drop_duplicates("epoch", keep="last").set_index("epoch")


def _loss_panel(ax: Axes, epochs: pd.DataFrame, parts: pd.DataFrame) -> None:
    if "train_ce" in parts:
        ax.plot(parts.index, parts["train_ce"], label="train", **STYLE)
        ax.set_title("cross-entropy on the labels")
    else:
        ax.plot(epochs["epoch"], epochs["train_loss"], label="train (objective)", **STYLE)
        ax.set_title("loss")
    ax.plot(epochs["epoch"], epochs["val_loss"], label="validation", **STYLE)
    ax.legend()


def _distillation_panels(kd: Axes, alpha: Axes, epochs: pd.DataFrame, parts: pd.DataFrame) -> None:
    kd.plot(parts.index, parts["train_kd"], color="tab:red", label="KD term (T^2 KL)", **STYLE)
    kd.plot(epochs["epoch"], epochs["train_loss"], color="tab:gray", label="objective", **STYLE)
    kd.set_title("distillation objective (train)")
    kd.legend()
    if "train_alpha" in parts:
        alpha.plot(parts.index, parts["train_alpha"], color="tab:brown", **STYLE)
    alpha.set_title("alpha (weight of the KD term)")
    alpha.set_ylim(-0.05, 1.05)


def plot_curves(epochs: pd.DataFrame, records: Sequence[Mapping[str, Any]], out_png: Path) -> Path:
    """Draw the panels from epochs.csv's rows and metrics.jsonl's records (none: the objective
    alone) and write ``out_png`` atomically."""
    fig = curves_figure(epochs, pd.DataFrame(list(records)))
    return atomic_write_with(out_png, lambda tmp: fig.savefig(tmp, format="png", dpi=100))


def curves_figure(epochs: pd.DataFrame, records: pd.DataFrame) -> Figure:
    """The figure of curves.png: 2x2 panels, 2x3 for a distillation stage (see the module doc)."""
    parts = epoch_parts(records)
    distilled = "train_kd" in parts
    fig = Figure(figsize=(15 if distilled else 10, 7), layout="constrained")
    axes = fig.subplots(2, 3 if distilled else 2)
    if distilled:
        (loss, kd, acc), (lr, last, alpha) = axes
        _distillation_panels(kd, alpha, epochs, parts)
    else:
        (loss, acc), (lr, last) = axes
    _loss_panel(loss, epochs, parts)
    for split, label in (("train", "train"), ("val", "validation")):
        acc.plot(epochs["epoch"], epochs[f"{split}_accuracy"], label=label, **STYLE)
    acc.set_title("accuracy")
    acc.legend()
    lr.plot(epochs["epoch"], epochs["learning_rate"], color="tab:green", **STYLE)
    lr.set_title("learning rate (end of epoch)")
    lr.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    norms = mean_grad_norms(records)
    if norms is not None:
        last.plot(norms.index, norms.to_numpy(), color="tab:red", **STYLE)
        last.set_title("gradient norm (mean per epoch)")
    else:
        last.plot(epochs["epoch"], epochs["epoch_time_sec"], color="tab:purple", **STYLE)
        last.set_title("epoch time (s)")
    for ax in fig.axes:
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
    return fig
