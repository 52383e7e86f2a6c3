"""The run report from result.json files: columns, deltas, n/a for unknown GPU memory, files."""
from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from src.pipeline.report import COLUMNS, print_summary, write_report
from src.rundirs.rundir import RunDirectory

CLASSES = ["zero", "one", "two"]


def fake_result(stage: str, model: str, accuracy: float, f1: float, gpu_mb: float | None) -> dict:
    return {
        "stage": stage, "model": model, "params": 1_234_567, "best_epoch": 3, "epochs_run": 4,
        "test": {"loss": 0.5, "accuracy": accuracy, "precision": f1, "recall": f1, "f1_score": f1},
        "peak_gpu_memory_mb": gpu_mb, "train_time_sec": 12.5, "teacher": None, "weights_sha256": "x",
    }


@pytest.fixture
def run_dir(tmp_path: Path) -> RunDirectory:
    run = RunDirectory(tmp_path / "run")
    results = {
        "teacher": fake_result("teacher", "resnet50", 0.90, 0.89, None),
        "student": fake_result("student", "resnet18", 0.85, 0.84, None),
        "baseline": fake_result("baseline", "resnet18", 0.80, 0.78, None),
    }
    for stage, res in results.items():
        run.stage_dir(stage).mkdir(parents=True)
        run.result_path(stage).write_text(json.dumps(res))
    pd.DataFrame({"y_true": [0, 1, 2, 2, 1], "y_pred": [0, 1, 2, 1, 1]}).to_csv(
        run.predictions_path("student"), index_label="index")
    return run


def test_report_files_table_and_deltas(run_dir: RunDirectory, capsys: pytest.CaptureFixture[str]) -> None:
    results = {s: run_dir.read_result(s) for s in run_dir.finished_stages()}
    summary = write_report(run_dir, results, CLASSES)
    root = run_dir.root
    for name in ("summary.csv", "summary.md", "comparison.png", "student_confusion_matrix.png",
                 "student_per_class.csv"):
        assert (root / name).is_file(), name
    csv = pd.read_csv(root / "summary.csv")
    assert list(csv.columns) == COLUMNS + ["accuracy vs baseline", "accuracy vs teacher"]
    assert list(csv["stage"]) == ["teacher", "student", "baseline"]
    student = csv.set_index("stage").loc["student"]
    assert student["accuracy vs baseline"] == pytest.approx(0.05)
    assert student["accuracy vs teacher"] == pytest.approx(-0.05)
    assert csv["peak GPU MB"].isna().all()  # CPU run: empty, never a made-up number
    deltas = summary.deltas.set_index("comparison")
    assert deltas.loc["student vs baseline", "accuracy delta"] == pytest.approx(0.05)
    assert deltas.loc["student vs teacher", "macro F1 delta"] == pytest.approx(-0.05)
    assert "direct vs baseline" not in deltas.index  # no direct stage in this run
    markdown = (root / "summary.md").read_text()
    assert "| student | resnet18 | 1,234,567 | 3 | 85.00% |" in markdown
    assert "| student vs baseline | +5.00 pts | +6.00 pts |" in markdown
    assert "n/a" in markdown
    per_class = pd.read_csv(root / "student_per_class.csv", index_col=0)
    assert per_class.loc["two", "recall"] == pytest.approx(0.5)
    print_summary(summary)
    printed = capsys.readouterr().out
    assert "student vs baseline" in printed and "85.00%" in printed


def test_gpu_memory_is_shown_when_measured(tmp_path: Path) -> None:
    run = RunDirectory(tmp_path)
    summary = write_report(run, {"teacher": fake_result("teacher", "vit_base", 0.9, 0.9, 812.4)}, CLASSES)
    assert summary.table.loc[0, "peak GPU MB"] == pytest.approx(812.4)
    assert "| 812 |" in (tmp_path / "summary.md").read_text()
    assert summary.deltas.empty
    assert not (tmp_path / "student_confusion_matrix.png").exists()
