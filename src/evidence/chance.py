"""Is a stage's test accuracy above guessing? A stage that is not says nothing about distillation.

A stage "at chance" gets no more test images right than picking one of C classes at random
would, by a one-sided exact binomial test at 5% (scipy's ``binomtest``). Ratios built on such a
stage ("keeps 100% of the teacher's accuracy" when both guess) are claims its numbers do not
support, so the reports name it instead. Over several seeds the seeds' test outcomes are pooled:
every seed answers on the same images, so this asks whether the stage beats chance on average.
"""
from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from scipy.stats import binomtest

from src.evidence.verdict import stage_outcomes
from src.rundirs.rundir import RunDirectory

LEVEL = 0.05


@dataclass(frozen=True)
class ChanceTest:
    """``correct`` of ``images`` test answers right among ``classes`` classes; ``p_value`` of
    "no better than 1/classes" (one-sided exact binomial)."""

    stage: str
    correct: int
    images: int
    classes: int

    @property
    def p_value(self) -> float:
        return float(binomtest(self.correct, self.images, 1.0 / self.classes, alternative="greater").pvalue)

    @property
    def at_chance(self) -> bool:
        return self.p_value >= LEVEL

    def describe(self) -> str:
        return (f"{self.stage} ({self.correct} of {self.images} right, "
                f"{100 * self.correct / self.images:.2f}%, p = {self.p_value:.3g})")


def chance_tests(chains: Mapping[int | None, RunDirectory], stages: Iterable[str],
                 classes: int) -> dict[str, ChanceTest]:
    """Every stage of ``stages`` with saved test predictions in some chain, pooled over chains."""
    tests = {}
    for stage in stages:
        correct = images = 0
        for run_dir in chains.values():
            if run_dir.predictions_path(stage).is_file():
                _, right = stage_outcomes(run_dir, stage)
                correct, images = correct + int(right.sum()), images + len(right)
        if images and classes > 1:
            tests[stage] = ChanceTest(stage, correct, images, classes)
    return tests


def at_chance(tests: Mapping[str, ChanceTest]) -> dict[str, str]:
    """stage -> why no ratio of its accuracy is claimed, for the stages at chance."""
    return {stage: "at chance" for stage, test in tests.items() if test.at_chance}


def chance_note(tests: Mapping[str, ChanceTest]) -> str:
    """One sentence naming the stages at chance ('' when none is)."""
    found = [test for test in tests.values() if test.at_chance]
    if not found:
        return ""
    classes = found[0].classes
    return (f"At chance: {', '.join(test.describe() for test in found)}: not above 1/{classes} of the test "
            "images by a one-sided exact binomial test at 5%, so no share of another stage's accuracy is "
            "claimed for them, and a verdict involving them compares guesses (train longer, or check the "
            "data and the learning rate).")
