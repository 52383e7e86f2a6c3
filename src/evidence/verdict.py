"""From the stages' saved test predictions to paired comparisons and a verdict in words.

Every stage of a run is tested on the same persisted test split, and every stage of one seed
starts from the same seed-derived weights and data, so a KD stage and the baseline are compared
image by image. The verdict reads only the interval: it says "helped" or "hurt" when the 95%
interval excludes zero, and "no detectable difference at this size" otherwise.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from src.errors import UserError
from src.evidence.stats import Interval, McNemar, mcnemar_exact, paired_difference_interval
from src.runs.rundir import RunDirectory
from src.utils.atomic import atomic_write_json

# (distilled stage, labels-only reference, how the report names the distilled stage)
COMPARISONS = (("student", "baseline", "student (TAKD)"), ("direct", "baseline", "direct KD"))
ONE_SEED_NOTE = ("One seed: the interval covers test-image sampling only; seed-to-seed variation was not "
                 "measured (--seeds 42,43,44 measures it).")
SEEDS_NOTE = "The interval covers test-image sampling and seed-to-seed variation."
Outcome = Literal["helped", "hurt", "no difference"]


@dataclass(frozen=True)
class Comparison:
    """``stage`` against ``reference`` over the seeds both finished in."""

    stage: str
    reference: str
    label: str
    interval: Interval
    mcnemar: dict[int | None, McNemar]
    test_images: int

    @property
    def outcome(self) -> Outcome:
        if self.interval.low > 0:
            return "helped"
        if self.interval.high < 0:
            return "hurt"
        return "no difference"

    @property
    def verdict(self) -> str:
        """E.g. "distillation helped: +1.20 points (95% CI +0.40 to +2.00, 3 seeds)"."""
        i = self.interval
        seeds = f"{i.seeds} seed{'s' if i.seeds != 1 else ''}"
        ci = f"{i.confidence:.0%} CI {100 * i.low:+.2f} to {100 * i.high:+.2f}, {seeds}"
        points = f"{100 * i.estimate:+.2f} points"
        words = {"helped": f"distillation helped: {points} ({ci})",
                 "hurt": f"distillation hurt: {points} ({ci})",
                 "no difference": f"no detectable difference at this size ({points}, {ci})"}
        return words[self.outcome]

    def to_dict(self) -> dict[str, Any]:
        return {"stage": self.stage, "reference": self.reference, "test_images": self.test_images,
                "difference": asdict(self.interval), "outcome": self.outcome, "verdict": self.verdict,
                "seed_variation_measured": self.interval.seeds > 1,
                "mcnemar": {str(seed): asdict(test) for seed, test in self.mcnemar.items()}}


def stage_outcomes(run_dir: RunDirectory, stage: str) -> tuple[np.ndarray, np.ndarray]:
    """(labels, correct) per test image, in split order, from ``<stage>/test_predictions.csv``."""
    path = run_dir.predictions_path(stage)
    try:
        frame = pd.read_csv(path)
        labels, predictions = frame["y_true"].to_numpy(), frame["y_pred"].to_numpy()
    except (OSError, ValueError, KeyError) as exc:
        raise UserError(f"cannot read {path} ({exc}); delete {run_dir.stage_dir(stage)} to test that "
                        "stage again") from None
    return labels, labels == predictions


def compare_stages(chains: Mapping[int | None, RunDirectory], stage: str, reference: str,
                   label: str) -> Comparison | None:
    """The paired comparison over the seeds in which both stages finished (None: no such seed)."""
    pairs, tests, images = [], {}, 0
    for seed, run_dir in chains.items():
        if not all(run_dir.predictions_path(s).is_file() for s in (stage, reference)):
            continue
        labels, correct = stage_outcomes(run_dir, stage)
        reference_labels, reference_correct = stage_outcomes(run_dir, reference)
        if not np.array_equal(labels, reference_labels):
            raise UserError(f"{stage} and {reference} in {run_dir.root} were tested on different images; "
                            f"delete {run_dir.stage_dir(stage)} to train and test it again")
        pairs.append((correct, reference_correct))
        tests[seed] = mcnemar_exact(correct, reference_correct)
        images = len(labels)
    if not pairs:
        return None
    return Comparison(stage, reference, label, paired_difference_interval(pairs), tests, images)


def compare_run(chains: Mapping[int | None, RunDirectory]) -> list[Comparison]:
    """Every comparison of ``COMPARISONS`` whose stages finished in at least one seed."""
    found = (compare_stages(chains, stage, reference, label) for stage, reference, label in COMPARISONS)
    return [comparison for comparison in found if comparison is not None]


def _mcnemar_cell(tests: Mapping[int | None, McNemar]) -> str:
    cells = []
    for seed, test in tests.items():
        cell = f"{test.only_a} vs {test.only_b}, p = {test.p_value:.3g}"
        cells.append(cell if seed is None else f"seed {seed}: {cell}")
    return "; ".join(cells)


def evidence_text(comparisons: list[Comparison]) -> str:
    """The verdict block printed at the end of a run."""
    if not comparisons:
        return ""
    images = comparisons[0].test_images
    lines = [f"Did distillation help? (paired on the same {images} test images, 95% interval)"]
    lines += [f"  {c.label} vs {c.reference}: {c.verdict}" for c in comparisons]
    lines += [f"  exact McNemar, {c.label} vs {c.reference} (images only one of them got right): "
              f"{_mcnemar_cell(c.mcnemar)}" for c in comparisons]
    return "\n".join([*lines, "  " + _scope(comparisons)])


def evidence_markdown(comparisons: list[Comparison]) -> str:
    """The "Did distillation help?" section of summary.md."""
    if not comparisons:
        return ""
    rows = ["| comparison | difference | 95% CI | seeds | exact McNemar per seed (A only vs B only) |",
            "|---|---|---|---|---|"]
    for c in comparisons:
        i = c.interval
        rows.append(f"| {c.label} vs {c.reference} | {100 * i.estimate:+.2f} pts | "
                    f"{100 * i.low:+.2f} to {100 * i.high:+.2f} | {i.seeds} | {_mcnemar_cell(c.mcnemar)} |")
    verdicts = "\n".join(f"- **{c.label} vs {c.reference}: {c.verdict}**" for c in comparisons)
    return ("## Verdict\n\n" + verdicts + "\n\n" + "\n".join(rows) + "\n\n"
            f"Paired on the same {comparisons[0].test_images} test images. {_scope(comparisons)} The "
            "interval is a hierarchical bootstrap (seeds, then test images within each seed); the verdict "
            "says *helped* or *hurt* only when it excludes zero. README.md, \"How to read the verdict\", "
            "explains the numbers.\n")


def _scope(comparisons: list[Comparison]) -> str:
    """What the interval covers: with one seed, only the test images."""
    return ONE_SEED_NOTE if max(c.interval.seeds for c in comparisons) == 1 else SEEDS_NOTE


def write_evidence(path: Path, comparisons: list[Comparison]) -> Path:
    """``evidence.json``: the comparisons in machine-readable form (the study reads it)."""
    atomic_write_json(path, {"comparisons": [c.to_dict() for c in comparisons]})
    return path
