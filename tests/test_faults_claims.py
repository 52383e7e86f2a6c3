"""No report claims what its own numbers do not support: no share of the teacher's accuracy for a
stage at chance, for a teacher scoring 0 or for an unknown accuracy (never "nan%" or "keeps 100%"
of a guess), and no "distillation helped" beside an exact McNemar test that does not agree."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_deploy_cost import result_of, table_of

from src.config.loader import load_config
from src.deploy.cost_report import cost_sentences
from src.evidence.chance import ChanceTest
from src.evidence.seeds_report import write_seeds_report
from src.pipeline.report import write_report
from src.pipeline.train_stage import write_predictions
from src.rundirs.rundir import RunDirectory
from src.rundirs.seeds import Chain

CLASSES = [str(i) for i in range(10)]
COSTS = dict(teacher=(2_000, 2_000, 2.0), student=(1_000, 1_000, 1.0), baseline=(1_000, 1_000, 1.0))


def _stage(run: RunDirectory, stage: str, right: np.ndarray) -> dict:
    """A finished stage whose test answers are right exactly where ``right`` says."""
    labels = np.arange(len(right)) % len(CLASSES)
    wrong = (labels + 1) % len(CLASSES)
    write_predictions(run.predictions_path(stage), labels, np.where(right, labels, wrong))
    return result_of(stage, float(right.mean()))


def test_stages_at_chance_are_named_and_get_no_share_of_the_teachers_accuracy(tmp_path: Path) -> None:
    run = RunDirectory(tmp_path)
    right = np.zeros(20, dtype=bool)
    right[:2] = True  # 2 of 20 among 10 classes: exactly chance
    results = {stage: _stage(run, stage, right) for stage in ("teacher", "student", "baseline")}
    summary = write_report(run, results, CLASSES, table_of(**COSTS))
    text = (tmp_path / "summary.md").read_text()
    assert "keeps" not in text and "nan%" not in text
    assert "At chance: teacher (2 of 20 right, 10.00%" in text and "not above 1/10" in text
    assert ("no share of the teacher's accuracy is claimed: the student is at chance"
            in summary.cost_sentences[0])


@pytest.mark.parametrize(("teacher", "why"), [(0.0, "the teacher scores 0"),
                                              (float("nan"), "an accuracy is unknown")])
def test_no_share_of_a_teacher_scoring_zero_or_unknown(teacher: float, why: str) -> None:
    table = pd.DataFrame({"stage": ["teacher", "student"], "test accuracy": [teacher, 0.5]})
    sentence = cost_sentences(table, table_of(**COSTS))[0]
    assert "keeps" not in sentence and "nan" not in sentence and why in sentence


def test_a_stage_above_chance_by_the_exact_test_is_not_at_chance() -> None:
    assert not ChanceTest("student", correct=7, images=20, classes=10).at_chance  # p = 0.0016
    assert ChanceTest("student", correct=4, images=20, classes=10).at_chance  # p = 0.13


def test_a_verdict_does_not_claim_help_its_exact_mcnemar_test_rejects(tmp_path: Path) -> None:
    run = RunDirectory(tmp_path)
    student, baseline = np.ones(20, dtype=bool), np.ones(20, dtype=bool)
    baseline[:4] = False  # 4 images only the student got right, 0 the other way: p = 0.125
    results = {"student": _stage(run, "student", student), "baseline": _stage(run, "baseline", baseline)}
    summary = write_report(run, results, CLASSES)
    (comparison,) = summary.evidence
    assert comparison.interval.low > 0  # the interval alone would say helped
    assert comparison.outcome == "no difference"
    assert "distillation helped" not in (tmp_path / "summary.md").read_text()
    assert "p = 0.125" in comparison.verdict and "only 4 images got different answers" in comparison.verdict


def test_the_seeds_report_names_a_stage_at_chance_over_its_seeds(tmp_path: Path) -> None:
    chains, results = [], {}
    for seed in (1, 2):
        run = RunDirectory(tmp_path / f"seed-{seed}")
        guess, learnt = np.zeros(20, dtype=bool), np.ones(20, dtype=bool)
        guess[:seed] = True  # 1 and 2 of 20 among 10 classes
        results[seed] = {"teacher": {**_stage(run, "teacher", learnt), "seed": seed},
                         "student": {**_stage(run, "student", guess), "seed": seed}}
        chains.append(Chain(seed, load_config(None), run))
    summary = write_seeds_report(RunDirectory(tmp_path), chains, results, table_of(**COSTS))
    text = (tmp_path / "summary.md").read_text()
    assert "At chance: student (3 of 40 right" in text and "teacher (" not in text
    assert "keeps" not in text and "keeps" not in " ".join(summary.cost_sentences)
