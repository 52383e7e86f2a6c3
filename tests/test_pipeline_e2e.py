"""End to end through the real entry points: tiny runs of both presets on digits.

Checks the run-directory contract (docs/CONTRACTS.md), the CSV schema and result keys, pipeline
resume after a kill between stages, evaluate.py, and the one-line errors with exit code 2.
"""
from __future__ import annotations

import csv
import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from src.cli.train import main
from src.utils.logger import REQUIRED_COLUMNS

REPO = Path(__file__).resolve().parents[1]
TINY = ["--epochs", "1", "--subset", "40", "--image-size", "8", "--device", "cpu"]
RUN_FILES = ("config.yaml", "split.json", "pipeline.log", "summary.csv", "summary.md", "comparison.png")
STAGE_FILES = ("epochs.csv", "metrics.jsonl", "checkpoint_latest.pt", "model.safetensors", "result.json",
               "curves.png")
RESULT_KEYS = {"stage", "model", "params", "best_epoch", "epochs_run", "test", "peak_gpu_memory_mb",
               "train_time_sec", "teacher", "weights_sha256", "memory_plan", "lr"}

pytestmark = pytest.mark.slow


def command(preset: str, out: Path, *extra: str) -> list[str]:
    script = REPO / f"{preset}_distillation" / "train.py"
    return [sys.executable, str(script), "--output-dir", str(out), *TINY, *extra]


def run(cmd: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600)


def snapshot(folder: Path) -> dict[str, int]:
    """Every file under ``folder`` with its modification time (ns): what 'untouched' means."""
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in files}


def check_stage(stage_dir: Path, stage: str, teacher: str | None) -> dict:
    for name in STAGE_FILES:
        assert (stage_dir / name).is_file(), f"{stage}/{name} missing"
    with open(stage_dir / "epochs.csv", newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == list(REQUIRED_COLUMNS)
    assert [r[0] for r in rows[1:]] == ["1"]
    result = json.loads((stage_dir / "result.json").read_text())
    assert RESULT_KEYS <= set(result)
    assert set(result["test"]) == {"loss", "accuracy", "precision", "recall", "f1_score"}
    assert result["stage"] == stage and result["teacher"] == teacher
    assert result["peak_gpu_memory_mb"] is None  # CPU run: no made-up number
    return result


@pytest.fixture(scope="module")
def cnn_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, int], str]:
    """`--stages teacher`, then the default chain in the same run directory."""
    out = tmp_path_factory.mktemp("cnn") / "run"
    first = run(command("cnn", out, "--stages", "teacher"))
    assert first.returncode == 0, first.stderr
    teacher_files = snapshot(out / "teacher")
    second = run(command("cnn", out))
    assert second.returncode == 0, second.stderr
    return out, teacher_files, second.stdout


def test_cnn_chain_leaves_the_run_directory_contract(cnn_run: tuple[Path, dict[str, int], str]) -> None:
    out, teacher_files, stdout = cnn_run
    for name in RUN_FILES + ("student_confusion_matrix.png", "student_per_class.csv"):
        assert (out / name).is_file(), name
    teachers = {"teacher": None, "assistant": "teacher", "student": "assistant", "baseline": None,
                "direct": "teacher"}
    results = {stage: check_stage(out / stage, stage, teacher) for stage, teacher in teachers.items()}
    assert results["student"]["model"] == results["baseline"]["model"] == "resnet18"
    assert results["student"]["lr"] < results["teacher"]["lr"]  # size-scaled learning rates
    with open(out / "summary.csv", newline="") as handle:
        assert [row["stage"] for row in csv.DictReader(handle)] == list(teachers)
    assert "student vs baseline" in stdout and "resnet50" in stdout
    # the cost table (src/deploy): measured side by side after the stages, the sentence printed
    # (a share of the teacher's accuracy, or why none is claimed: this tiny run may be at chance)
    assert re.search(r"The student (keeps [\d.]+% of the \w+'s accuracy with|\(no share of the \w+'s "
                     r"accuracy is claimed: [^)]+\) has) ", stdout), stdout
    assert "fewer FLOPs" in stdout and (out / "cost.json").is_file()
    # the second command skipped the finished teacher: its files were not touched
    assert snapshot(out / "teacher") == teacher_files
    assert "stage teacher: finished earlier" in (out / "pipeline.log").read_text()


def test_evaluate_scores_saved_weights_like_the_run_did(cnn_run: tuple[Path, dict[str, int], str]) -> None:
    out = cnn_run[0]
    weights = out / "student" / "model.safetensors"
    done = run([sys.executable, str(REPO / "evaluate.py"), "--checkpoint", str(weights),
                "--split", "test", "--device", "cpu"])
    assert done.returncode == 0, done.stderr
    scored = json.loads(done.stdout)
    expected = json.loads((out / "student" / "result.json").read_text())["test"]
    assert scored["accuracy"] == pytest.approx(expected["accuracy"])
    assert scored["f1_score"] == pytest.approx(expected["f1_score"])
    missing = run([sys.executable, str(REPO / "evaluate.py"), "--checkpoint", str(out / "nope.pt")])
    assert missing.returncode == 2 and missing.stderr.startswith("error: checkpoint")


def test_user_errors_leave_the_run_untouched(cnn_run: tuple[Path, dict[str, int], str],
                                             capsys: pytest.CaptureFixture[str]) -> None:
    out = cnn_run[0]
    before = snapshot(out)
    assert main("cnn", ["--output-dir", str(out), *TINY, "--set", "train.lrr=1"]) == 2
    assert capsys.readouterr().err == "error: unknown config key 'train.lrr' (did you mean 'train.lr'?)\n"
    assert main("cnn", ["--output-dir", str(out), *TINY[:-4], "--image-size", "16"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cannot continue the run") and "data.image_size: 8 -> 16" in err
    assert snapshot(out) == before


def test_missing_dataset_is_one_line_exit_2(tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    done = run(command("cnn", tmp_path / "run", "--dataset", "cifar10", "--data-dir", str(empty),
                       "--set", "train.warmup_epochs=0"))
    assert done.returncode == 2
    assert done.stderr.startswith("error: ") and done.stderr.count("\n") == 1, done.stderr
    assert not (tmp_path / "run").exists()  # nothing half-made to trip the corrected command
    assert str(empty) in done.stderr and "--download" in done.stderr
    assert "Traceback" not in done.stderr


def test_vit_resumes_after_a_kill_between_stages(tmp_path: Path) -> None:
    out = tmp_path / "run"
    cmd = command("vit", out, "--stages", "teacher,direct", "--set", "runtime.attention_every=1")
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 300
        while not (out / "teacher" / "result.json").exists():
            assert proc.poll() is None, "the run ended before the teacher finished"
            assert time.monotonic() < deadline
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)  # a crash, not a polite stop: no cleanup runs
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not (out / "direct" / "result.json").exists()
    teacher_files = snapshot(out / "teacher")
    teacher_files.pop("checkpoint_best.pt", None)  # there if killed before the prune the re-run does
    done = run(cmd)
    assert done.returncode == 0, done.stderr
    assert snapshot(out / "teacher") == teacher_files  # the finished teacher's files untouched
    assert not (out / "teacher" / "checkpoint_best.pt").exists()  # its best weights: model.safetensors
    result = check_stage(out / "direct", "direct", "teacher")
    assert result["model"] == "vit_tiny"
    for stage in ("teacher", "direct"):
        assert (out / stage / "attention" / "attention_epoch001.png").is_file()
    for name in RUN_FILES:
        assert (out / name).is_file(), name
