"""The cost table in the run report: its columns and the "what the student buys" sentences.

Everything here reads one ``CostTable`` (one interleaved measurement), so every ratio in a
sentence compares numbers taken side by side in the same process.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import pandas as pd

if TYPE_CHECKING:
    from src.deploy.cost import CostTable

COST_COLUMNS = ["GFLOPs", "weights MB", "latency ms", "latency p90 ms", "throughput img/s",
                "CPU throughput img/s"]
# (smaller stage, reference): a sentence each when both finished
COST_COMPARISONS = (("student", "teacher"), ("direct", "teacher"))
PLOT_NAME = "accuracy_vs_latency.png"


def add_cost_columns(table: pd.DataFrame, costs: CostTable | None) -> pd.DataFrame:
    """``table`` with the cost columns appended (NaN for a stage the measurement did not cover)."""
    if costs is None:
        return table
    rows = {stage: {"GFLOPs": cost.flops / 1e9, "weights MB": cost.weights_bytes / 1e6,
                    "latency ms": cost.device.latency_ms, "latency p90 ms": cost.device.latency_p90_ms,
                    "throughput img/s": cost.device.throughput, "CPU throughput img/s": cost.cpu.throughput}
            for stage, cost in costs.stages.items()}
    extra = pd.DataFrame([rows.get(stage, {}) for stage in table["stage"]], columns=COST_COLUMNS,
                         index=table.index, dtype=float)
    return pd.concat([table, extra], axis=1)


def format_cost_columns(shown: pd.DataFrame) -> pd.DataFrame:
    """Human formatting of the cost columns that are present (n/a where unknown)."""
    formats = {"GFLOPs": "{:.3g}", "weights MB": "{:.1f}", "latency ms": "{:.2f}", "latency p90 ms": "{:.2f}",
               "throughput img/s": "{:,.0f}", "CPU throughput img/s": "{:,.0f}"}

    def cell(value: Any, pattern: str) -> str:
        unknown = value is None or (isinstance(value, float) and math.isnan(value))
        return "n/a" if unknown else pattern.format(value)

    for column, pattern in formats.items():
        if column in shown:
            shown[column] = shown[column].map(lambda v, p=pattern: cell(v, p))
    return shown


def _times(reference: float, value: float, fewer: str, more: str) -> str:
    """``2.1x fewer`` when ``value`` is smaller than ``reference``, ``1.3x more`` otherwise."""
    if value <= reference:
        return f"{reference / value:.1f}x {fewer}"
    return f"{value / reference:.1f}x {more}"


def _kept(stage: str, reference: str, accuracy: pd.Series, unsupported: Mapping[str, str]) -> str:
    """"keeps 98.6% of the teacher's accuracy", or why no such share is claimed: a stage in
    ``unsupported`` (e.g. at chance), a reference scoring 0, or an unknown accuracy."""
    mine, theirs = float(accuracy[stage]), float(accuracy[reference])
    why = next((f"the {s} is {unsupported[s]}" for s in (stage, reference) if s in unsupported), "")
    if not why and (math.isnan(mine) or math.isnan(theirs)):
        why = "an accuracy is unknown"
    if not why and theirs <= 0:
        why = f"the {reference} scores 0"
    if why:
        return f"The {stage} (no share of the {reference}'s accuracy is claimed: {why}) has"
    return f"The {stage} keeps {100 * mine / theirs:.1f}% of the {reference}'s accuracy with"


def cost_sentences(table: pd.DataFrame, costs: CostTable | None,
                   unsupported: Mapping[str, str] | None = None) -> list[str]:
    """E.g. "the student keeps 98.6% of the teacher's accuracy with 2.1x fewer parameters, ...",
    then what the cost columns mean. A stage in ``unsupported`` (stage -> why, e.g. "at chance")
    gets no accuracy share."""
    if costs is None:
        return []
    accuracy = table.set_index("stage")["test accuracy"]
    sentences = []
    for stage, reference in COST_COMPARISONS:
        if stage not in costs.stages or reference not in costs.stages or reference not in accuracy.index:
            continue
        small, big = costs.stages[stage], costs.stages[reference]
        sentences.append(
            f"{_kept(stage, reference, accuracy, unsupported or {})} "
            f"{_times(big.parameters, small.parameters, 'fewer', 'more')} parameters, "
            f"{_times(big.flops, small.flops, 'fewer', 'more')} FLOPs, and runs "
            f"{_times(big.device.latency_ms, small.device.latency_ms, 'faster', 'slower')} at batch 1 "
            f"on this machine ({big.device.latency_ms:.2f} -> {small.device.latency_ms:.2f} ms; "
            f"{costs.device})."
        )
    any_stage = next(iter(costs.stages.values()))
    sentences.append(f"Costs measured side by side on {costs.device} (fp32, cost.json): FLOPs per image as "
                     "torch counts them (a multiply-add is 2 FLOPs), latency at batch 1, throughput at batch "
                     f"{any_stage.device.batch} (CPU: {any_stage.cpu.batch}).")
    return sentences
