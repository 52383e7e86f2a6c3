"""The top-level report of a run with several seeds: spread over seeds, paired intervals, verdict.

Each seed's chain keeps its own one-seed report in ``seed-<n>/``; this one, at the top, puts
the seeds together: every stage's mean and standard deviation over seeds (summary.csv), the
paired comparisons of src/evidence/verdict.py (student and direct KD against the baseline, the
student against direct KD) with a 95% interval over seeds and test images, each seed's own
difference and an exact McNemar test per seed, Holm-adjusted over the report (summary.md,
evidence.json), and comparison.png, which shows each seed's accuracy and the intervals.
"""
from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from src.config.stages import STAGES
from src.deploy.cost_report import cost_sentences
from src.evidence.chance import at_chance, chance_note, chance_tests
from src.evidence.stats import mean_and_std
from src.evidence.verdict import (
    Comparison,
    compare_run,
    evidence_markdown,
    evidence_text,
    interval_points,
    write_evidence,
)
from src.rundirs.rundir import RunDirectory
from src.rundirs.seeds import Chain
from src.utils.atomic import atomic_write_text, atomic_write_with
from src.utils.tables import markdown_table
from src.visualization.report_figures import plot_seed_spread

if TYPE_CHECKING:
    from src.deploy.cost import CostTable

Results = Mapping[int, Mapping[str, Mapping[str, Any]]]  # seed -> stage -> result.json


@dataclass
class SeedsSummary:
    """One row per stage over the seeds it finished in, and the paired comparisons."""

    table: pd.DataFrame
    comparisons: list[Comparison]
    files: list[Path] = field(default_factory=list)
    cost_sentences: list[str] = field(default_factory=list)  # what the student buys, at mean accuracies
    notes: list[str] = field(default_factory=list)  # what limits the claims (stages at chance)


def seed_table(results: Results) -> pd.DataFrame:
    """stage, architecture, seeds, mean and std of test accuracy and macro F1, then each seed's accuracy."""
    seeds = list(results)
    rows = []
    for stage in STAGES:
        finished = {seed: results[seed][stage] for seed in seeds if stage in results[seed]}
        if not finished:
            continue
        accuracy = [res["test"]["accuracy"] for res in finished.values()]
        f1 = [res["test"]["f1_score"] for res in finished.values()]
        acc_mean, acc_std = mean_and_std(accuracy)
        f1_mean, f1_std = mean_and_std(f1)
        row: dict[str, Any] = {"stage": stage, "architecture": next(iter(finished.values())).get("model"),
                               "seeds": len(finished), "test accuracy mean": acc_mean,
                               "test accuracy std": acc_std, "macro F1 mean": f1_mean, "macro F1 std": f1_std}
        for seed in seeds:
            row[f"accuracy seed {seed}"] = finished[seed]["test"]["accuracy"] if seed in finished else None
        rows.append(row)
    return pd.DataFrame(rows)


def _percent(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{100 * value:.2f}%"


def _mean_std(table: pd.DataFrame, metric: str) -> list[str]:
    """"96.30% ± 0.45" (the std in points; n/a with one seed)."""
    pairs = zip(table[f"{metric} mean"], table[f"{metric} std"], strict=True)
    return [f"{_percent(mean)} ± {'n/a' if math.isnan(std) else f'{100 * std:.2f}'}" for mean, std in pairs]


def _shown(table: pd.DataFrame) -> pd.DataFrame:
    shown = pd.DataFrame({
        "stage": table["stage"], "architecture": table["architecture"], "seeds": table["seeds"],
        "test accuracy (mean ± std)": _mean_std(table, "test accuracy"),
        "macro F1 (mean ± std)": _mean_std(table, "macro F1"),
    })
    for column in (c for c in table.columns if c.startswith("accuracy seed ")):
        shown[column.replace("accuracy ", "")] = table[column].map(_percent)
    return shown


def render_text(summary: SeedsSummary) -> str:
    text = _shown(summary.table).to_string(index=False)
    if summary.notes:
        text += "\n\n" + "\n".join(f"Note: {note}" for note in summary.notes)
    if summary.comparisons:
        text += "\n\n" + evidence_text(summary.comparisons)
    return text + ("\n\n" + "\n".join(summary.cost_sentences) if summary.cost_sentences else "")


def render_markdown(summary: SeedsSummary) -> str:
    seeds = int(summary.table["seeds"].max()) if not summary.table.empty else 0
    text = f"# Run summary over {seeds} seeds\n\n" + markdown_table(_shown(summary.table)) + "\n"
    text += "\nStandard deviations are over seeds (sample std); each seed's own report is in `seed-<n>/`.\n"
    if summary.notes:
        text += "\n" + "\n".join(f"> **Note:** {note}\n" for note in summary.notes)
    if summary.comparisons:
        text += "\n" + evidence_markdown(summary.comparisons)
    return text + ("\n" + "\n".join(summary.cost_sentences) + "\n" if summary.cost_sentences else "")


def write_seeds_report(top: RunDirectory, chains: list[Chain], results: Results,
                       costs: CostTable | None = None) -> SeedsSummary:
    """summary.csv, summary.md, evidence.json and comparison.png at the top of the run; with
    ``costs`` also the sentences on what the student buys (at the mean accuracies)."""
    table = seed_table(results)
    runs = {chain.seed: chain.run_dir for chain in chains}
    summary = SeedsSummary(table, compare_run(runs))
    classes = next((res["num_classes"] for stages in results.values() for res in stages.values()
                    if "num_classes" in res), 0)
    tests = chance_tests(runs, STAGES, classes)
    summary.notes = [note for note in [chance_note(tests)] if note]
    if not table.empty:
        summary.cost_sentences = cost_sentences(table.rename(columns={"test accuracy mean": "test accuracy"}),
                                                costs, at_chance(tests))
    csv, md = top.root / "summary.csv", top.root / "summary.md"
    atomic_write_with(csv, lambda tmp: table.round(6).to_csv(tmp, index=False))
    atomic_write_text(md, render_markdown(summary))
    summary.files = [csv, md, write_evidence(top.root / "evidence.json", summary.comparisons)]
    if not table.empty:
        plot_seed_spread(table, interval_points(summary.comparisons), top.root / "comparison.png")
        summary.files.append(top.root / "comparison.png")
    return summary


def print_seeds_summary(summary: SeedsSummary) -> None:
    """The table over seeds and the verdict on stdout, followed by where the report files are."""
    print("\n" + render_text(summary) + "\n")
    print("report: " + ", ".join(str(path) for path in summary.files) + "\n")
