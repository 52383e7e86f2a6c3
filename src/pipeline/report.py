"""The run's answer to "did distillation help, did the assistant, and what did it cost?".

Built only from the stages' result.json files and saved test predictions (the verdict, the
student's confusion matrix), so the report of a resumed or partly re-run pipeline is the same as
an uninterrupted one's.
Missing numbers (GPU memory on a CPU run) stay empty in the CSV and show as "n/a": never a
made-up number.
"""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from src.data.coverage import missing_class_notes
from src.deploy.cost_report import (
    PLOT_NAME,
    add_cost_columns,
    cost_sentences,
    format_cost_columns,
)
from src.evidence import verdict
from src.evidence.chance import at_chance, chance_note, chance_tests
from src.rundirs.rundir import RunDirectory
from src.utils.atomic import atomic_write_text, atomic_write_with
from src.utils.metrics import confusion, per_class_report
from src.utils.names import readable_name
from src.utils.tables import markdown_table
from src.visualization.report_figures import plot_accuracy_vs_latency, plot_confusion, plot_stage_bars

if TYPE_CHECKING:
    from src.deploy.cost import CostTable

COLUMNS = ["stage", "architecture", "parameters", "best epoch", "test accuracy", "macro precision",
           "macro recall", "macro F1", "train time s", "peak GPU MB"]
# (compared stage, reference stage): the questions a TAKD run answers
COMPARISONS = (("student", "baseline"), ("student", "teacher"), ("direct", "baseline"), ("student", "direct"))
CONFUSION_STAGE = "student"


@dataclass
class Summary:
    """The table (one row per finished stage) and the accuracy/F1 deltas between stages."""

    table: pd.DataFrame
    deltas: pd.DataFrame
    files: list[Path] = field(default_factory=list)
    cost_sentences: list[str] = field(default_factory=list)  # what the student buys (src/deploy)
    evidence: list[verdict.Comparison] = field(default_factory=list)  # paired tests and the verdict
    notes: list[str] = field(default_factory=list)  # what limits the claims, shown above the verdict


def _number(value: Any) -> float:
    return float("nan") if value is None else float(value)


def summary_table(results: Mapping[str, Mapping[str, Any]]) -> pd.DataFrame:
    """One row per stage with the columns of ``COLUMNS`` (NaN where a number is unknown)."""
    rows = []
    for stage, res in results.items():
        test = res.get("test", {})
        rows.append({
            "stage": stage,
            "architecture": res.get("model"),
            "parameters": res.get("params"),
            "best epoch": res.get("best_epoch"),
            "test accuracy": _number(test.get("accuracy")),
            "macro precision": _number(test.get("precision")),
            "macro recall": _number(test.get("recall")),
            "macro F1": _number(test.get("f1_score")),
            "train time s": _number(res.get("train_time_sec")),
            "peak GPU MB": _number(res.get("peak_gpu_memory_mb")),
        })
    return pd.DataFrame(rows, columns=COLUMNS)


def delta_table(table: pd.DataFrame) -> pd.DataFrame:
    """Accuracy and macro-F1 differences for the comparisons whose two stages both finished."""
    by_stage = table.set_index("stage")
    rows = []
    for stage, reference in COMPARISONS:
        if stage in by_stage.index and reference in by_stage.index:
            rows.append({
                "comparison": f"{stage} vs {reference}",
                "accuracy delta": (by_stage.at[stage, "test accuracy"]
                                   - by_stage.at[reference, "test accuracy"]),
                "macro F1 delta": by_stage.at[stage, "macro F1"] - by_stage.at[reference, "macro F1"],
            })
    return pd.DataFrame(rows, columns=["comparison", "accuracy delta", "macro F1 delta"])


def with_reference_deltas(table: pd.DataFrame) -> pd.DataFrame:
    """The CSV form: each stage's accuracy minus the baseline's and the teacher's (empty where n/a)."""
    out = table.copy()
    by_stage = table.set_index("stage")["test accuracy"]
    for reference in ("baseline", "teacher"):
        column = f"accuracy vs {reference}"
        if reference in by_stage.index:
            out[column] = [acc - by_stage[reference] if stage != reference else float("nan")
                           for stage, acc in zip(table["stage"], table["test accuracy"], strict=True)]
        else:
            out[column] = float("nan")
    return out


def _display(table: pd.DataFrame, deltas: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Human formatting: percentages, thousands separators, n/a for unknown numbers."""
    def fmt(fn: Any) -> Any:
        return lambda v: "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else fn(v)

    shown = table.copy().astype(object)
    shown["parameters"] = shown["parameters"].map(fmt(lambda v: f"{int(v):,}"))
    shown["best epoch"] = shown["best epoch"].map(fmt(lambda v: f"{int(v)}"))
    for col in ("test accuracy", "macro precision", "macro recall", "macro F1"):
        shown[col] = shown[col].map(fmt(lambda v: f"{100 * v:.2f}%"))
    shown["train time s"] = shown["train time s"].map(fmt(lambda v: f"{v:.1f}"))
    shown["peak GPU MB"] = shown["peak GPU MB"].map(fmt(lambda v: f"{v:.0f}"))
    shown_deltas = deltas.copy().astype(object)
    for col in ("accuracy delta", "macro F1 delta"):
        shown_deltas[col] = shown_deltas[col].map(fmt(lambda v: f"{100 * v:+.2f} pts"))
    return format_cost_columns(shown), shown_deltas


def render_text(summary: Summary) -> str:
    """The table printed at the end of a run."""
    shown, shown_deltas = _display(summary.table, summary.deltas)
    text = shown.to_string(index=False)
    if not shown_deltas.empty:
        text += "\n\n" + shown_deltas.to_string(index=False)
    if summary.notes:
        text += "\n\n" + "\n".join(f"Note: {note}" for note in summary.notes)
    if summary.evidence:
        text += "\n\n" + verdict.evidence_text(summary.evidence)
    if summary.cost_sentences:
        text += "\n\n" + "\n".join(summary.cost_sentences)
    return text


def render_markdown(summary: Summary) -> str:
    shown, shown_deltas = _display(summary.table, summary.deltas)
    text = "# Run summary\n\n" + markdown_table(shown) + "\n"
    if not shown_deltas.empty:
        text += "\n## Differences between stages\n\n" + markdown_table(shown_deltas) + "\n"
    if summary.notes:
        text += "\n" + "\n".join(f"> **Note:** {note}\n" for note in summary.notes)
    if summary.evidence:
        text += "\n" + verdict.evidence_markdown(summary.evidence)
    if summary.cost_sentences:
        text += "\n" + "\n".join(summary.cost_sentences) + "\n"
    return text


def write_confusion(run_dir: RunDirectory, stage: str, class_names: Sequence[str]) -> list[Path]:
    """``<stage>_confusion_matrix.png`` and ``<stage>_per_class.csv`` from the stage's test predictions."""
    source = run_dir.predictions_path(stage)
    if not source.is_file():
        return []
    frame = pd.read_csv(source)
    matrix = confusion(frame["y_true"], frame["y_pred"], len(class_names))
    names = [readable_name(name) for name in class_names]
    png = plot_confusion(matrix, names, f"{stage}: confusion matrix on the test split",
                         run_dir.root / f"{stage}_confusion_matrix.png")
    per_class = per_class_report(frame["y_true"], frame["y_pred"], names).rename_axis("class")
    csv = run_dir.root / f"{stage}_per_class.csv"
    atomic_write_with(csv, lambda tmp: per_class.to_csv(tmp))
    return [png, csv]


def missing_test_classes(run_dir: RunDirectory, results: Mapping[str, Any],
                         class_names: Sequence[str]) -> list[str]:
    """The classes the saved test split lacks (from any finished stage's test predictions)."""
    stage = next((s for s in results if run_dir.predictions_path(s).is_file()), None)
    if stage is None:
        return []
    labels, _ = verdict.stage_outcomes(run_dir, stage)
    return missing_class_notes({"test": labels.tolist()}, class_names)


def write_report(run_dir: RunDirectory, results: Mapping[str, Mapping[str, Any]],
                 class_names: Sequence[str], costs: CostTable | None = None) -> Summary:
    """summary.csv, summary.md, comparison.png and the student's confusion matrix in ``run_dir``;
    with ``costs`` also the cost columns, sentences and accuracy_vs_latency.png."""
    table = add_cost_columns(summary_table(results), costs)
    seed = next((res["seed"] for res in results.values() if "seed" in res), None)
    tests = chance_tests({seed: run_dir}, results, len(class_names))
    summary = Summary(table=table, deltas=delta_table(table),
                      cost_sentences=cost_sentences(table, costs, at_chance(tests)))
    summary.notes = [*missing_test_classes(run_dir, results, class_names),
                     *filter(None, [chance_note(tests)])]
    summary.evidence = verdict.compare_run({seed: run_dir})
    csv_frame = with_reference_deltas(table)
    atomic_write_with(run_dir.root / "summary.csv", lambda tmp: csv_frame.round(6).to_csv(tmp, index=False))
    atomic_write_text(run_dir.root / "summary.md", render_markdown(summary))
    summary.files = [run_dir.root / "summary.csv", run_dir.root / "summary.md"]
    if summary.evidence:
        summary.files.append(verdict.write_evidence(run_dir.root / "evidence.json", summary.evidence))
    if not table.empty:
        plot_stage_bars(table, verdict.interval_points(summary.evidence), run_dir.root / "comparison.png")
        summary.files.append(run_dir.root / "comparison.png")
    if CONFUSION_STAGE in results:
        summary.files += write_confusion(run_dir, CONFUSION_STAGE, class_names)
    if costs is not None:
        summary.files.append(plot_accuracy_vs_latency(table, costs.device, run_dir.root / PLOT_NAME))
    return summary


def print_summary(summary: Summary) -> None:
    """The table on stdout, followed by where the report files are."""
    print("\n" + render_text(summary) + "\n")
    if summary.files:
        print("report: " + ", ".join(str(path) for path in summary.files) + "\n")
