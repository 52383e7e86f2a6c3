"""From the stages' saved predictions to paired comparisons and a verdict in words.

Every stage of a run is tested on the same persisted test split, and every stage of one seed
starts from the same seed-derived weights and data, so two stages are compared image by image.
A TAKD run answers two questions: did distillation help over training alone (the student, and
the direct-KD student, against the labels-only baseline), and did the assistant help over
distilling directly (the student against the direct-KD student)? :data:`RULE` says how the
interval and the exact McNemar test make a verdict; the McNemar p-values of one report are also
given Holm-adjusted over all of them.
"""
from __future__ import annotations

import logging
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd

from src.errors import UserError
from src.evidence.stats import Interval, McNemar, holm, mcnemar_exact, paired_difference_interval
from src.rundirs.rundir import RunDirectory
from src.utils.atomic import atomic_write_json
from src.visualization.report_figures import IntervalPoint

LOGGER = logging.getLogger("kd_pipeline.evidence")
Outcome = Literal["helped", "hurt", "no difference"]
DISTILLATION = "Did distillation help over training alone?"
ASSISTANT = "Did the assistant help over distilling directly?"
RULE = ("Rule: a verdict says helped or hurt only when its 95% interval excludes zero; with one seed "
        "the exact McNemar test must agree (p < 0.05), as both then test that seed's difference on these "
        "images. With several seeds the interval decides: each McNemar test covers one seed alone, not "
        "the seed-to-seed variation.")
ONE_SEED_NOTE = ("One seed: each interval covers test-image sampling only (that seed's own difference); "
                 "seed-to-seed variation was not measured (--seeds 42,43,44 measures it).")
SEEDS_NOTE = ("Each interval covers seed-to-seed variation (t with seeds - 1 degrees of freedom) and the "
              "sampling of the test images all seeds share.")


@dataclass(frozen=True)
class Question:
    """One paired comparison: ``stage`` against ``reference``, and what it asks."""

    stage: str
    reference: str
    label: str  # how the report names ``stage``
    reference_label: str  # and ``reference``
    subject: str  # what helped or hurt
    asks: str

    @property
    def name(self) -> str:
        return f"{self.label} vs {self.reference_label}"


QUESTIONS = (
    Question("student", "baseline", "student (TAKD)", "baseline", "distillation", DISTILLATION),
    Question("direct", "baseline", "direct KD", "baseline", "distillation", DISTILLATION),
    Question("student", "direct", "student (TAKD)", "direct KD", "the assistant", ASSISTANT),
)


@dataclass(frozen=True)
class Comparison:
    """``question.stage`` against ``question.reference`` over the seeds both finished in."""

    question: Question
    interval: Interval
    mcnemar: dict[int | None, McNemar]
    test_images: int

    @property
    def stage(self) -> str:
        return self.question.stage

    @property
    def reference(self) -> str:
        return self.question.reference

    @property
    def name(self) -> str:
        return self.question.name

    @property
    def _interval_says(self) -> Outcome:
        if self.interval.low > 0:
            return "helped"
        if self.interval.high < 0:
            return "hurt"
        return "no difference"

    @property
    def _disagreement(self) -> str:
        """With one seed: why the exact test and the interval disagree (empty when they agree)."""
        if self.interval.seeds != 1 or len(self.mcnemar) != 1:
            return ""
        p = next(iter(self.mcnemar.values())).p_value
        rejects = p < 1.0 - self.interval.confidence
        excludes = self._interval_says != "no difference"
        if excludes and not rejects:
            return (f"; the interval excludes zero but the exact McNemar test does not (p = {p:.3g})"
                    f"{self._why_not}")
        if rejects and not excludes:
            return f"; the exact McNemar test rejects (p = {p:.3g}) but the interval includes zero"
        return ""

    @property
    def _why_not(self) -> str:
        """Why the exact test cannot agree: with n discordant images its smallest two-sided p-value
        is 2 / 2**n, at least 0.0625 below 6."""
        test = next(iter(self.mcnemar.values()))
        discordant = test.only_a + test.only_b
        smallest = min(1.0, 2.0 * 0.5 ** discordant) if discordant else 1.0
        if smallest >= 1.0 - self.interval.confidence:
            return (f": only {discordant} image{'s' if discordant != 1 else ''} got different answers, "
                    "too few for an exact test to reach p < 0.05 (6 needed), so the interval's "
                    "approximation is not trusted")
        return ": the interval's approximation is looser than the exact test on these images"

    @property
    def outcome(self) -> Outcome:
        """:data:`RULE`: the interval, and with one seed the exact test as well."""
        return "no difference" if self._disagreement else self._interval_says

    @property
    def verdict(self) -> str:
        """E.g. "distillation helped: +1.20 points (95% CI +0.40 to +2.00, 3 seeds)"."""
        i = self.interval
        seeds = f"{i.seeds} seed{'s' if i.seeds != 1 else ''}"
        ci = f"{i.confidence:.0%} CI {100 * i.low:+.2f} to {100 * i.high:+.2f}, {seeds}"
        points = f"{100 * i.estimate:+.2f} points"
        if self.outcome == "no difference":
            return f"no detectable difference at this size ({points}, {ci}{self._disagreement})"
        return f"{self.question.subject} {self.outcome}: {points} ({ci})"

    def to_dict(self) -> dict[str, Any]:
        q = self.question
        return {"stage": q.stage, "reference": q.reference, "name": q.name, "question": q.asks,
                "test_images": self.test_images, "difference": asdict(self.interval),
                "outcome": self.outcome, "verdict": self.verdict,
                "seed_variation_measured": self.interval.seeds > 1,
                "mcnemar": {str(seed): asdict(test) for seed, test in self.mcnemar.items()}}


def stage_outcomes(run_dir: RunDirectory, stage: str, split: str = "test") -> tuple[np.ndarray, np.ndarray]:
    """(labels, correct) per image of ``split``, in split order, from ``<stage>/<split>_predictions.csv``."""
    path = run_dir.predictions_path(stage, split)
    try:
        frame = pd.read_csv(path)
        labels, predictions = frame["y_true"].to_numpy(), frame["y_pred"].to_numpy()
    except (OSError, ValueError, KeyError) as exc:
        raise UserError(f"cannot read {path} ({exc}); delete {run_dir.stage_dir(stage)} to test that "
                        "stage again") from None
    return labels, labels == predictions


def compare_stages(chains: Mapping[int | None, RunDirectory], question: Question,
                   split: str = "test") -> Comparison | None:
    """The paired comparison on ``split`` over the seeds in which both stages finished (None: no
    such seed, or fewer than two images)."""
    stage, reference = question.stage, question.reference
    pairs, tests, images = [], {}, 0
    for seed, run_dir in chains.items():
        if not all(run_dir.predictions_path(s, split).is_file() for s in (stage, reference)):
            continue
        labels, correct = stage_outcomes(run_dir, stage, split)
        reference_labels, reference_correct = stage_outcomes(run_dir, reference, split)
        if not np.array_equal(labels, reference_labels) or (images and len(labels) != images):
            raise UserError(f"{stage} and {reference} in {run_dir.root} were tested on different images; "
                            f"delete {run_dir.stage_dir(stage)} to train and test it again")
        pairs.append((correct, reference_correct))
        tests[seed] = mcnemar_exact(correct, reference_correct)
        images = len(labels)
    if not pairs:
        return None
    if images < 2:
        LOGGER.warning("%s: %d %s image(s) are too few for an interval; no verdict", question.name, images,
                       split)
        return None
    return Comparison(question, paired_difference_interval(pairs), tests, images)


def with_holm(comparisons: Sequence[Comparison]) -> list[Comparison]:
    """The comparisons with every McNemar p-value Holm-adjusted over all of them."""
    raw = [test.p_value for c in comparisons for test in c.mcnemar.values()]
    adjusted = iter(holm(raw))
    return [replace(c, mcnemar={seed: replace(test, p_holm=next(adjusted))
                                for seed, test in c.mcnemar.items()}) for c in comparisons]


def compare_run(chains: Mapping[int | None, RunDirectory], split: str = "test") -> list[Comparison]:
    """Every comparison of :data:`QUESTIONS` whose stages finished in at least one seed, with the
    McNemar p-values Holm-adjusted over the report."""
    found = (compare_stages(chains, question, split) for question in QUESTIONS)
    return with_holm([comparison for comparison in found if comparison is not None])


def _mcnemar_cell(comparison: Comparison, adjusted: bool) -> str:
    cells = []
    for seed, test in comparison.mcnemar.items():
        cell = f"{test.only_a} vs {test.only_b}, p = {test.p_value:.3g}"
        if adjusted and test.p_holm is not None:
            cell += f" (Holm {test.p_holm:.3g})"
        cells.append(cell if seed is None else f"seed {seed}: {cell}")
    return "; ".join(cells)


def _tests(comparisons: Sequence[Comparison]) -> int:
    return sum(len(c.mcnemar) for c in comparisons)


def multiplicity(comparisons: Sequence[Comparison]) -> str:
    """How many comparisons and tests the report holds, and what is adjusted for their number."""
    count, tests = len(comparisons), _tests(comparisons)
    if count == 1 and tests == 1:
        return "One comparison, one test: nothing to adjust for."
    return (f"{count} comparison{'s' if count != 1 else ''}, {tests} McNemar tests: each 95% interval and "
            "raw p-value holds for its own comparison, not adjusted for their number; the Holm-adjusted "
            f"p-values keep the chance of any false rejection among all {tests} tests at 5%.")


def _groups(comparisons: Sequence[Comparison]) -> list[tuple[str, list[Comparison], str]]:
    """(question, its comparisons, what it needs when none finished) in :data:`QUESTIONS` order."""
    groups: dict[str, tuple[list[Comparison], str]] = {}
    for q in QUESTIONS:
        missing = f"not measured: needs the {q.stage} and {q.reference} stages (--stages)"
        groups.setdefault(q.asks, ([], missing))
    for c in comparisons:
        groups[c.question.asks][0].append(c)
    return [(asks, found, missing) for asks, (found, missing) in groups.items()]


def evidence_text(comparisons: Sequence[Comparison]) -> str:
    """The verdict block printed at the end of a run."""
    if not comparisons:
        return ""
    lines = [f"Verdict (paired on the same {comparisons[0].test_images} test images, 95% intervals)"]
    for asks, found, missing in _groups(comparisons):
        lines.append(f"  {asks}")
        lines += [f"    {c.name}: {c.verdict}" for c in found] or [f"    {missing}"]
    adjusted = _tests(comparisons) > 1
    lines.append("  exact McNemar (images only one of the two got right):")
    lines += [f"    {c.name}: {_mcnemar_cell(c, adjusted)}" for c in comparisons]
    notes = (multiplicity(comparisons), RULE, _scope(comparisons))
    return "\n".join([*lines, *(textwrap.fill(note, 108, initial_indent="  ", subsequent_indent="    ")
                                for note in notes)])


def evidence_markdown(comparisons: Sequence[Comparison]) -> str:
    """The "Verdict" section of summary.md."""
    if not comparisons:
        return ""
    sections = []
    for asks, found, missing in _groups(comparisons):
        bullets = [f"- **{c.name}: {c.verdict}**" for c in found] or [f"- {missing}"]
        sections.append(f"### {asks}\n\n" + "\n".join(bullets))
    adjusted = _tests(comparisons) > 1
    rows = ["| comparison | difference | 95% CI | seeds | per-seed differences | exact McNemar per seed "
            f"(A only vs B only, p{', Holm p' if adjusted else ''}) |", "|---|---|---|---|---|---|"]
    for c in comparisons:
        i = c.interval
        per_seed = ", ".join(f"{100 * d:+.2f}" for d in i.per_seed)
        rows.append(f"| {c.name} | {100 * i.estimate:+.2f} pts | {100 * i.low:+.2f} to {100 * i.high:+.2f} | "
                    f"{i.seeds} | {per_seed} | {_mcnemar_cell(c, adjusted)} |")
    return ("## Verdict\n\n" + "\n\n".join(sections) + "\n\n" + "\n".join(rows) + "\n\n"
            f"Paired on the same {comparisons[0].test_images} test images. {_scope(comparisons)} "
            f"{multiplicity(comparisons)} {RULE} README.md, \"How to read the verdict\", explains the "
            "method.\n")


def _scope(comparisons: Sequence[Comparison]) -> str:
    """What the intervals cover: with one seed, only the test images."""
    return ONE_SEED_NOTE if max(c.interval.seeds for c in comparisons) == 1 else SEEDS_NOTE


def interval_points(comparisons: Sequence[Comparison]) -> list[IntervalPoint]:
    """The comparisons as comparison.png draws them."""
    return [IntervalPoint(c.name, c.interval.estimate, c.interval.low, c.interval.high, c.outcome,
                          c.interval.per_seed) for c in comparisons]


def write_evidence(path: Path, comparisons: Sequence[Comparison]) -> Path:
    """``evidence.json``: the comparisons in machine-readable form (the study reads it)."""
    atomic_write_json(path, {"comparisons": [c.to_dict() for c in comparisons], "rule": RULE,
                             "multiplicity": multiplicity(comparisons)})
    return path
