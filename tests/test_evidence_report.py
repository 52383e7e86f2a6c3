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
from src.evidence.stats import Interval, McNemar, holm
from src.evidence.verdict import QUESTIONS, RULE, Comparison, compare_run, evidence_text
from src.pipeline.report import print_summary, write_report
from src.rundirs.rundir import RunDirectory
from src.rundirs.seeds import Chain, chain_config

IMAGES = 200


def _predictions(run_dir: RunDirectory, stage: str, correct: np.ndarray, split: str = "test") -> None:
    labels = np.arange(len(correct)) % 10
    predicted = np.where(correct, labels, (labels + 1) % 10)
    run_dir.stage_dir(stage).mkdir(parents=True, exist_ok=True)
    frame = pd.DataFrame({"y_true": labels, "y_pred": predicted})
    frame.to_csv(run_dir.predictions_path(stage, split), index_label="index")


def _chain(root: Path, only_student: int, only_baseline: int, both: int = 150, *,
           direct: int | None = None, images: int = IMAGES, split: str = "test") -> RunDirectory:
    """A seed's folder where the student alone is right on ``only_student`` images, the baseline
    alone on ``only_baseline``; with ``direct``, a direct-KD student right on the images both
    are right on and on the first ``direct`` of the student's own."""
    run_dir = RunDirectory(root)
    student = np.zeros(images, bool)
    baseline = np.zeros(images, bool)
    student[:only_student] = True
    baseline[only_student:only_student + only_baseline] = True
    start = only_student + only_baseline
    student[start:start + both] = baseline[start:start + both] = True
    _predictions(run_dir, "student", student, split)
    _predictions(run_dir, "baseline", baseline, split)
    if direct is not None:
        direct_correct = student & baseline
        direct_correct[:direct] = True
        _predictions(run_dir, "direct", direct_correct, split)
    return run_dir


def _flat(text: str) -> str:
    """``text`` with every run of white space one space: the printed notes are wrapped."""
    return " ".join(text.split())


def _comparison(estimate: float, low: float, high: float, seeds: int, question: int = 0,
                mcnemar: dict | None = None) -> Comparison:
    interval = Interval(estimate, low, high, seeds, 0.95)
    return Comparison(QUESTIONS[question], interval, mcnemar or {}, 270)


def test_verdict_words_follow_the_interval() -> None:
    assert _comparison(0.012, 0.004, 0.02, 3).verdict == \
        "distillation helped: +1.20 points (95% CI +0.40 to +2.00, 3 seeds)"
    assert _comparison(-0.02, -0.03, -0.01, 3).verdict.startswith("distillation hurt: -2.00 points")
    assert _comparison(0.003, -0.004, 0.01, 3).verdict == \
        "no detectable difference at this size (+0.30 points, 95% CI -0.40 to +1.00, 3 seeds)"
    assert _comparison(0.005, 0.001, 0.009, 3, question=2).verdict == \
        "the assistant helped: +0.50 points (95% CI +0.10 to +0.90, 3 seeds)"
    assert _comparison(-0.05, -0.07, -0.03, 3, question=2).verdict.startswith("the assistant hurt: -5.00")
    one = _flat(evidence_text([_comparison(0.012, 0.004, 0.02, 1)]))
    assert "(95% CI +0.40 to +2.00, 1 seed)" in one and "seed-to-seed variation was not measured" in one
    several = _flat(evidence_text([_comparison(0.01, 0.0, 0.02, 3)]))
    assert "seed-to-seed variation was not measured" not in several
    assert RULE in one


def test_one_seed_says_helped_only_when_the_exact_test_agrees_and_says_why_not() -> None:
    """20 images, the student alone right on 5: the t-interval excludes zero, but 5 vs 0 is
    p = 0.0625 for the exact test, so the verdict is no detectable difference, with the reason."""
    disagree = _comparison(0.25, 0.042, 0.458, 1, mcnemar={None: McNemar(5, 0, 0.0625)})
    assert disagree.outcome == "no difference"
    assert disagree.verdict == ("no detectable difference at this size (+25.00 points, 95% CI +4.20 to "
                                "+45.80, 1 seed; the interval excludes zero but the exact McNemar test "
                                "does not (p = 0.0625): only 5 images got different answers, too few for an "
                                "exact test to reach p < 0.05 (6 needed), so the interval's approximation is "
                                "not trusted)")
    agree = _comparison(0.25, 0.042, 0.458, 1, mcnemar={None: McNemar(9, 0, 0.0039)})
    assert agree.outcome == "helped"
    several = _comparison(0.25, 0.042, 0.458, 3, mcnemar={s: McNemar(5, 0, 0.0625) for s in (1, 2, 3)})
    assert several.outcome == "helped"  # several seeds: the interval decides


def test_a_real_one_seed_disagreement_from_saved_predictions(tmp_path: Path) -> None:
    (comparison,) = compare_run({None: _chain(tmp_path, only_student=5, only_baseline=0, both=10, images=20)})
    assert comparison.interval.low > 0 and comparison.mcnemar[None].p_value == pytest.approx(0.0625)
    assert comparison.outcome == "no difference" and "exact McNemar test does not" in comparison.verdict


def test_paired_comparison_from_saved_predictions(tmp_path: Path) -> None:
    chains = {42: _chain(tmp_path / "seed-42", only_student=20, only_baseline=4),
              43: _chain(tmp_path / "seed-43", only_student=16, only_baseline=6)}
    (comparison,) = compare_run(chains)  # no direct stage: one comparison
    assert (comparison.stage, comparison.reference, comparison.test_images) == ("student", "baseline", IMAGES)
    assert comparison.interval.per_seed == pytest.approx(((20 - 4) / IMAGES, (16 - 6) / IMAGES))
    assert comparison.interval.estimate == pytest.approx(((20 - 4) + (16 - 6)) / 2 / IMAGES)
    discordant = {seed: (t.only_a, t.only_b) for seed, t in comparison.mcnemar.items()}
    assert discordant == {42: (20, 4), 43: (16, 6)}
    # both seeds favour the student, but two seeds are a t with 1 degree of freedom (12.71) times
    # the per-seed differences' standard error (8 and 5 points: 1.5), so no detectable difference
    assert comparison.interval.high - comparison.interval.estimate >= 12.7 * 0.015
    assert comparison.outcome == "no difference"
    assert comparison.verdict.startswith("no detectable difference at this size (+6.50 points")


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
    assert evidence["difference"]["per_seed"] == pytest.approx([0.11] * 3)
    assert evidence["mcnemar"]["42"]["p_holm"] >= evidence["mcnemar"]["42"]["p_value"]


def test_takd_against_direct_kd_with_holm_adjusted_p_values(tmp_path: Path) -> None:
    chains = {seed: _chain(tmp_path / f"seed-{seed}", 20, 4, direct=direct)
              for seed, direct in ((42, 8), (43, 12))}
    comparisons = compare_run(chains)
    assert [c.name for c in comparisons] == ["student (TAKD) vs baseline", "direct KD vs baseline",
                                             "student (TAKD) vs direct KD"]
    takd_vs_direct = comparisons[2]
    assert takd_vs_direct.interval.per_seed == pytest.approx(((20 - 8) / IMAGES, (20 - 12) / IMAGES))
    discordant = {seed: (t.only_a, t.only_b) for seed, t in takd_vs_direct.mcnemar.items()}
    assert discordant == {42: (12, 0), 43: (8, 0)}
    raw = [t.p_value for c in comparisons for t in c.mcnemar.values()]
    assert [t.p_holm for c in comparisons for t in c.mcnemar.values()] == pytest.approx(holm(raw))
    text = evidence_text(comparisons)
    assert "  Did the assistant help over distilling directly?\n    student (TAKD) vs direct KD: " in text
    assert "3 comparisons, 6 McNemar tests" in _flat(text) and "not adjusted for their number" in _flat(text)
    assert "(Holm " in text


def test_comparisons_on_the_validation_split(tmp_path: Path) -> None:
    """The study chooses on val_predictions.csv; the test split is not read."""
    run_dir = _chain(tmp_path, 30, 2, split="val")
    (comparison,) = compare_run({None: run_dir}, split="val")
    assert comparison.interval.estimate == pytest.approx(28 / IMAGES)
    assert compare_run({None: run_dir}) == []  # no test predictions: no test verdict


def test_one_seed_report_answers_both_questions(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run_dir = _chain(tmp_path, 24, 6, direct=10)
    results = {stage: _result(stage, 0.8) for stage in ("student", "baseline", "direct")}
    summary = write_report(run_dir, results, [str(c) for c in range(10)])
    print_summary(summary)
    printed = capsys.readouterr().out
    for text in (_flat(printed), _flat((tmp_path / "summary.md").read_text())):
        assert "Did distillation help over training alone?" in text
        assert "student (TAKD) vs baseline: distillation helped: +9.00 points" in text
        assert "Did the assistant help over distilling directly?" in text
        assert "student (TAKD) vs direct KD: the assistant helped: +7.00 points" in text
    evidence = json.loads((tmp_path / "evidence.json").read_text())
    assert [c["name"] for c in evidence["comparisons"]][-1] == "student (TAKD) vs direct KD"
    assert evidence["rule"] == RULE and "3 comparisons, 3 McNemar tests" in evidence["multiplicity"]
    assert (tmp_path / "comparison.png").stat().st_size > 0


def test_a_run_without_the_direct_stage_says_the_assistant_was_not_measured(tmp_path: Path) -> None:
    (comparison,) = compare_run({None: _chain(tmp_path, 24, 6)})
    text = evidence_text([comparison])
    assert ("Did the assistant help over distilling directly?\n"
            "    not measured: needs the student and direct stages") in text
    assert "One comparison, one test: nothing to adjust for." in _flat(text)
