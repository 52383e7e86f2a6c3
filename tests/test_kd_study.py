"""bench/kd_study.py through its real command line, shrunk by its own flags (2 losses, 2 seeds,
1 epoch, 40 images per split): the loss is chosen on the validation split, the report answers
both questions with the corrected intervals and Holm-adjusted p-values over the whole study."""
from __future__ import annotations

import importlib
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy.stats import t

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
LOSSES = ["kd", "dist"]


@pytest.fixture(scope="module")
def study(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("study")
    results = out / "RESULTS.md"
    command = [sys.executable, "bench/kd_study.py", "--epochs", "1", "--teacher-epochs", "1",
               "--subset", "40", "--seeds", "42,43", "--losses", ",".join(LOSSES), "--out", str(out / "runs"),
               "--results", str(results)]
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return out / "runs", results.read_text()


def test_the_report_answers_both_questions_for_the_loss_chosen_on_validation(study: tuple[Path, str]) -> None:
    _, text = study
    assert "## The answers" in text and "The loss was chosen on the validation split" in text
    assert "- **Did distillation help over training alone?** student (TAKD) vs baseline: " in text
    assert "; direct KD vs baseline: " in text
    assert "- **Did the assistant help over distilling directly?** student (TAKD) vs direct KD: " in text
    assert "## Choosing the loss on the validation split" in text and text.count(" (chosen) |") == 1
    for loss in LOSSES:
        assert f"| {loss} | student (TAKD) vs direct KD | " in text
    # 2 losses x 3 comparisons x 2 seeds: 12 McNemar tests, 6 intervals
    assert "Holm over the study's 12 tests" in text and "6 intervals and 12 McNemar tests" in text
    assert "python bench/kd_study.py --epochs 1" in text and "machine: CPU" in text
    assert "## Where `make run`'s default comes from" in text


def test_the_choice_reads_no_test_prediction(study: tuple[Path, str],
                                             monkeypatch: pytest.MonkeyPatch) -> None:
    out, text = study
    monkeypatch.syspath_prepend(str(REPO / "bench"))
    kd_study = importlib.import_module("kd_study")
    choice = kd_study.choose_on_validation(out, LOSSES)
    assert f"| {choice.loss} (chosen) |" in text
    for path in out.rglob("test_predictions.csv"):
        path.unlink()
    assert kd_study.choose_on_validation(out, LOSSES) == choice


def test_every_interval_is_at_least_a_t_interval_over_its_seeds(study: tuple[Path, str]) -> None:
    out, _ = study
    for loss in LOSSES:
        for comparison in json.loads((out / loss / "evidence.json").read_text())["comparisons"]:
            difference = comparison["difference"]
            per_seed = np.array(difference["per_seed"])
            half = t.ppf(0.975, len(per_seed) - 1) * per_seed.std(ddof=1) / math.sqrt(len(per_seed))
            assert difference["high"] - difference["low"] >= 2 * half - 1e-12, comparison["name"]
