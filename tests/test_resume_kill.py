"""A run killed with SIGKILL at arbitrary points (mid-epoch included) and resumed each time
ends with exactly the weights and epochs.csv of a run that was never interrupted."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
CONFIG = {"epochs": 3, "checkpoint_every_steps": 2, "log_interval": 1, "accumulation_steps": 2,
          "batch_size": 8}
TIMING_COLUMNS = ["epoch_time_sec", "gpu_memory_mb"]


def _command(stage_dir: Path) -> list[str]:
    """The product's own digits datasets (augmented, batched on the device path), 192 per split."""
    return [sys.executable, "-m", "engine_fixtures", str(stage_dir), "--data", "digits", "--train", "192",
            "--config", json.dumps(CONFIG)]


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": f"{REPO}{os.pathsep}{REPO / 'tests'}", "OMP_NUM_THREADS": "1"}


def _lines(path: Path) -> int:
    try:
        return len(path.read_text().splitlines())
    except FileNotFoundError:
        return 0


def _run_and_kill(stage_dir: Path, after_records: int) -> int:
    """Start the training process and SIGKILL it once metrics.jsonl holds ``after_records``
    lines (it is rewritten with every checkpoint); returns the process's exit status."""
    proc = subprocess.Popen(_command(stage_dir), cwd=REPO, env=_env())
    try:
        while proc.poll() is None and _lines(stage_dir / "metrics.jsonl") < after_records:
            time.sleep(0.002)
        proc.send_signal(signal.SIGKILL)
        return proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()


@pytest.mark.slow
def test_sigkill_at_several_points_then_resume_matches_uninterrupted_run(tmp_path: Path) -> None:
    reference, interrupted = tmp_path / "reference", tmp_path / "interrupted"
    uninterrupted = subprocess.Popen(_command(reference), cwd=REPO, env=_env())  # runs beside the kills

    resumed_mid_epoch = False
    # 12 updates per epoch, one record per update plus one per resume: kills land in epochs 1, 2 and 3
    kill_points = (5, 15, 28)
    for after_records in kill_points:
        status = _run_and_kill(interrupted, after_records)
        assert status == -signal.SIGKILL, "the process finished before it could be killed"
        state = torch.load(interrupted / "checkpoint_latest.pt", weights_only=True)
        resumed_mid_epoch |= state["samples_done"] > 0
    assert resumed_mid_epoch
    subprocess.run(_command(interrupted), cwd=REPO, env=_env(), check=True, timeout=120)
    assert uninterrupted.wait(timeout=120) == 0

    expected = torch.load(reference / "final.pt", weights_only=True)
    actual = torch.load(interrupted / "final.pt", weights_only=True)
    assert expected.keys() == actual.keys()
    different = [name for name in expected if not torch.equal(expected[name], actual[name])]
    assert different == []
    csv_expected = pd.read_csv(reference / "epochs.csv").drop(columns=TIMING_COLUMNS)
    csv_actual = pd.read_csv(interrupted / "epochs.csv").drop(columns=TIMING_COLUMNS)
    pd.testing.assert_frame_equal(csv_actual, csv_expected, check_exact=True)
    records = _records(interrupted)
    assert sum(1 for r in records if r.get("event") == "resume") == len(kill_points)
    # every interval logged exactly once, with the same values (throughput aside)
    assert _intervals(records) == _intervals(_records(reference))


def _records(stage_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (stage_dir / "metrics.jsonl").read_text().splitlines()]


def _intervals(records: list[dict]) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "images_per_sec"} for r in records if "event" not in r]
