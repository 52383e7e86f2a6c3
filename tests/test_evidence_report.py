"""From saved test predictions to the verdict and the report over seeds (constructed runs, no training)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from src.config.loader import load_config
from src.errors import UserError
from src.evidence.seeds_report import seed_table, write_seeds_report
from src.evidence.stats import Interval
from src.evidence.verdict import Comparison, compare_run, evidence_text
from src.runs.rundir import RunDirectory
from src.runs.seeds import Chain, chain_config

IMAGES = 200


def _predictions(run_dir: RunDirectory, stage: str, correct: np.ndarray) -> None:
    labels = np.arange(len(correct)) % 10
    predicted = np.where(correct, labels, (labels + 1) % 10)
    run_dir.stage_dir(stage).mkdir(parents=True, exist_ok=True)
    frame = pd.DataFrame({"y_true": labels, "y_pred": predicted})
    frame.to_csv(run_dir.predictions_path(stage), index_label="index")


def _chain(root: Path, only_student: int, only_baseline: int, both: int = 150) -> RunDirectory:
    """A seed's folder where the student alone is right on ``only_student`` images, the baseline
    alone on ``only_baseline``."""
    run_dir = RunDirectory(root)
    student = np.zeros(IMAGES, bool)
    baseline = np.zeros(IMAGES, bool)
    student[:only_student] = True
    baseline[only_student:only_student + only_baseline] = True
    start = only_student + only_baseline
    student[start:start + both] = baseline[start:start + both] = True
    _predictions(run_dir, "student", student)
    _predictions(run_dir, "baseline", baseline)
    return run_dir


def _comparison(estimate: float, low: float, high: float, seeds: int) -> Comparison:
    interval = Interval(estimate, low, high, seeds, 0.95)
    return Comparison("student", "baseline", "student (TAKD)", interval, {}, 270)


def test_verdict_words_follow_the_interval() -> None:
    assert _comparison(0.012, 0.004, 0.02, 3).verdict == \
        "distillation helped: +1.20 points (95% CI +0.40 to +2.00, 3 seeds)"
    assert _comparison(-0.02, -0.03, -0.01, 3).verdict.startswith("distillation hurt: -2.00 points")
    assert _comparison(0.003, -0.004, 0.01, 3).verdict == \
        "no detectable difference at this size (+0.30 points, 95% CI -0.40 to +1.00, 3 seeds)"
    one = evidence_text([_comparison(0.012, 0.004, 0.02, 1)])
    assert "(95% CI +0.40 to +2.00, 1 seed)" in one and "seed-to-seed variation was not measured" in one
    assert "seed-to-seed variation was not measured" not in evidence_text([_comparison(0.01, 0.0, 0.02, 3)])


def test_paired_comparison_from_saved_predictions(tmp_path: Path) -> None:
    chains = {42: _chain(tmp_path / "seed-42", only_student=20, only_baseline=4),
              43: _chain(tmp_path / "seed-43", only_student=16, only_baseline=6)}
    (comparison,) = compare_run(chains)  # no direct stage: one comparison
    assert (comparison.stage, comparison.reference, comparison.test_images) == ("student", "baseline", IMAGES)
    assert comparison.interval.estimate == pytest.approx(((20 - 4) + (16 - 6)) / 2 / IMAGES)
    discordant = {seed: (t.only_a, t.only_b) for seed, t in comparison.mcnemar.items()}
    assert discordant == {42: (20, 4), 43: (16, 6)}
    assert comparison.outcome == "helped"
    assert comparison.verdict.startswith("distillation helped: +6.50 points")


def test_stages_tested_on_different_images_are_refused(tmp_path: Path) -> None:
    run_dir = _chain(tmp_path, 10, 10)
    frame = pd.read_csv(run_dir.predictions_path("baseline"))
    frame["y_true"] = frame["y_true"][::-1].to_numpy()
    frame.to_csv(run_dir.predictions_path("baseline"), index=False)
    with pytest.raises(UserError, match="tested on different images"):
        compare_run({42: run_dir})


def _result(stage: str, accuracy: float) -> dict:
    return {"stage": stage, "model": "resnet18", "test": {"accuracy": accuracy, "f1_score": accuracy - 0.01}}


def test_report_over_seeds_gives_mean_std_and_the_verdict(tmp_path: Path) -> None:
    cfg = load_config(None, ["runtime.seeds=[42, 43, 44]"])
    top = RunDirectory(tmp_path)
    chains = [Chain(seed, chain_config(cfg, seed), _chain(tmp_path / f"seed-{seed}", 24, 2))
              for seed in (42, 43, 44)]
    results = {seed: {"student": _result("student", 0.87 + i / 100), "baseline": _result("baseline", 0.76)}
               for i, seed in enumerate((42, 43, 44))}
    table = seed_table(results).set_index("stage")
    assert table.at["student", "test accuracy mean"] == pytest.approx(0.88)
    assert table.at["student", "test accuracy std"] == pytest.approx(0.01)
    assert table.at["baseline", "test accuracy std"] == pytest.approx(0.0, abs=1e-12)
    assert table.at["student", "seeds"] == 3
    assert table.at["student", "accuracy seed 44"] == pytest.approx(0.89)
    summary = write_seeds_report(top, chains, results)
    assert [p.name for p in summary.files] == ["summary.csv", "summary.md", "evidence.json", "comparison.png"]
    markdown = (tmp_path / "summary.md").read_text()
    assert "88.00% ± 1.00" in markdown
    assert "student (TAKD) vs baseline: distillation helped: +11.00 points" in markdown
    assert "3 seeds" in markdown
    evidence = json.loads((tmp_path / "evidence.json").read_text())["comparisons"][0]
    assert evidence["outcome"] == "helped" and evidence["seed_variation_measured"] is True
    assert set(evidence["mcnemar"]) == {"42", "43", "44"}
