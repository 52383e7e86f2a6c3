"""The report's figures: accuracy per stage, the confusion matrix, accuracy against latency and
the spread over seeds, the two comparison.png figures with each comparison's interval.

Each takes plain numbers (DataFrames, arrays, a small ``IntervalPoint``), so drawing depends on
nothing but matplotlib and the layers that compute the numbers stay free of plotting.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
from sklearn.metrics import ConfusionMatrixDisplay  # noqa: E402

from src.utils.atomic import atomic_write_with  # noqa: E402


@dataclass(frozen=True)
class IntervalPoint:
    """One comparison, e.g. "student (TAKD) vs baseline": an accuracy difference (fraction) with
    its interval."""

    name: str
    estimate: float
    low: float
    high: float
    outcome: str  # "helped", "hurt" or "no difference": the colour
    per_seed: tuple[float, ...] = ()  # each seed's own difference, drawn as ticks (several seeds)


def _save(fig: Any, path: Path) -> None:
    fig.tight_layout()
    atomic_write_with(path, lambda tmp: fig.savefig(tmp, format="png", dpi=120))
    plt.close(fig)


def _intervals(ax: Any, comparisons: Sequence[IntervalPoint]) -> None:
    """Each comparison's difference with its 95% interval against zero, one row each, the first
    (the TAKD student against the baseline) on top."""
    colors = {"helped": "tab:green", "hurt": "tab:red", "no difference": "tab:gray"}
    for y, point in enumerate(comparisons):
        whiskers = [[100 * (point.estimate - point.low)], [100 * (point.high - point.estimate)]]
        ax.errorbar(100 * point.estimate, y, xerr=whiskers, fmt="o", capsize=5, color=colors[point.outcome])
        if len(point.per_seed) > 1:
            ax.scatter([100 * d for d in point.per_seed], [y] * len(point.per_seed), marker="|", s=120,
                       color="black", zorder=3, label="each seed's own" if y == 0 else None)
    ax.axvline(0, color="black", linewidth=0.8)
    ax.set_yticks(range(len(comparisons)), [p.name.replace(" vs ", "\nvs ") for p in comparisons], fontsize=8)
    ax.set_ylim(-0.7, max(len(comparisons), 1) - 0.3)
    ax.invert_yaxis()
    ax.set_xlabel("accuracy difference, points (95% CI)")
    if any(len(point.per_seed) > 1 for point in comparisons):
        ax.legend(loc="lower right", fontsize=8, frameon=False)
    ax.set_title("Paired differences (green: helped, red: hurt)")


def plot_stage_bars(table: pd.DataFrame, comparisons: Sequence[IntervalPoint], path: Path) -> None:
    """Grouped bars: test accuracy and macro F1 per stage; beside them, when the run has any,
    the paired comparisons with their intervals."""
    width_in = max(5.0, 1.4 * len(table) + 2)
    if comparisons:
        fig, (ax, right) = plt.subplots(1, 2, figsize=(width_in + 4.5, 4),
                                        gridspec_kw={"width_ratios": [3, 2]})
        _intervals(right, comparisons)
    else:
        fig, ax = plt.subplots(figsize=(width_in, 4))
    x = np.arange(len(table))
    width = 0.38
    for offset, col in ((-width / 2, "test accuracy"), (width / 2, "macro F1")):
        bars = ax.bar(x + offset, table[col] * 100, width, label=col)
        ax.bar_label(bars, fmt="%.1f", fontsize=8)
    labels = [f"{s}\n{a}" for s, a in zip(table["stage"], table["architecture"], strict=True)]
    ax.set_xticks(x, labels, fontsize=8)
    ax.set_ylabel("% on the test split")
    ax.set_ylim(0, 122)  # headroom so the legend never covers a bar
    ax.set_yticks(range(0, 101, 20))
    ax.set_title("Test accuracy and macro F1 per stage")
    ax.legend(loc="upper center", ncols=2, frameon=False)
    _save(fig, path)


def plot_confusion(matrix: np.ndarray, class_names: Sequence[str], title: str, path: Path) -> Path:
    """A confusion matrix (counts in each cell up to 20 classes) written atomically to ``path``."""
    size = max(5.0, 0.45 * len(class_names))
    fig, ax = plt.subplots(figsize=(size, size))
    ConfusionMatrixDisplay(matrix, display_labels=list(class_names)).plot(
        ax=ax, colorbar=False, include_values=len(class_names) <= 20, xticks_rotation="vertical")
    ax.set_title(title)
    _save(fig, path)
    return path


def plot_accuracy_vs_latency(table: pd.DataFrame, device: str, path: Path) -> Path:
    """Test accuracy against median batch-1 latency per stage; the bar reaches the p90 latency."""
    fig, ax = plt.subplots(figsize=(6, 4))
    records: list[dict[str, Any]] = table.dropna(subset=["latency ms"]).to_dict("records")
    for i, row in enumerate(records):
        latency, accuracy = row["latency ms"], 100 * row["test accuracy"]
        tail = row["latency p90 ms"] - latency
        ax.errorbar([latency], [accuracy], xerr=[[0.0], [tail]], fmt="o", capsize=3)
        ax.annotate(f"{row['stage']}\n{row['architecture']}", (latency, accuracy), fontsize=8,
                    textcoords="offset points", xytext=(6, 4 if i % 2 == 0 else -18))  # neighbours alternate
    ax.set_xscale("log")
    ax.set_xlabel(f"batch-1 latency, ms (median; bar to p90), log scale\n{device}")
    ax.set_ylabel("test accuracy, %")
    ax.set_title("Accuracy against inference latency per stage")
    ax.margins(x=0.25, y=0.15)
    _save(fig, path)
    return path


def plot_seed_spread(table: pd.DataFrame, comparisons: Sequence[IntervalPoint], path: Path) -> None:
    """Left: each seed's test accuracy per stage (dots) with the mean; right: each comparison's
    difference with its 95% interval, against zero (as in :func:`plot_stage_bars`)."""
    fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4), gridspec_kw={"width_ratios": [3, 2]})
    seed_columns = [c for c in table.columns if c.startswith("accuracy seed ")]
    for x, (_, row) in enumerate(table.iterrows()):
        values = [100 * row[c] for c in seed_columns if not math.isnan(row[c])]
        left.scatter([x] * len(values), values, color="tab:blue", alpha=0.7, zorder=3)
        left.hlines(100 * row["test accuracy mean"], x - 0.3, x + 0.3, color="black", zorder=4)
    left.set_xticks(range(len(table)), [f"{s}\n{a}" for s, a in zip(table["stage"], table["architecture"],
                                                                     strict=True)], fontsize=8)
    left.set_ylabel("test accuracy (%)")
    left.set_title("Test accuracy per seed (dots) and mean (bar)")
    _intervals(right, comparisons)
    _save(fig, path)
