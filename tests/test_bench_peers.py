"""bench/peers.py and bench/compiled.py: their real command lines run at a tiny size and end with
the figures gpu-check and docs/PERFORMANCE.md read."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def bench(*argv: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TORCHINDUCTOR_COMPILE_THREADS": "1"}
    return subprocess.run([sys.executable, *argv], cwd=REPO, env=env, capture_output=True, text=True)


@pytest.mark.slow
def test_peers_alternates_both_sides_and_ends_with_the_ratio() -> None:
    done = bench("bench/peers.py", "--images", "8", "--batch", "4", "--rounds", "2", "--workers", "1")
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    rounds = [line for line in lines if line.startswith("round ")]
    sides = [line.split(":")[0].split()[2] for line in rounds]
    assert sides == ["kd-pipeline", "hand-written", "hand-written", "kd-pipeline"]  # alternating
    assert any(line.startswith("kd-pipeline ") and "spread" in line for line in lines)
    assert re.fullmatch(r"kd-pipeline/peer throughput ratio: \d+\.\d\d", lines[-1])


@pytest.mark.slow
def test_compiled_prints_one_line_per_stage_with_both_rates() -> None:
    done = bench("bench/compiled.py", "--preset", "cnn", "--stages", "baseline", "--image-size", "16",
                 "--batch", "4", "--steps", "1", "--rounds", "1", "--warmup", "1", "--backend", "eager",
                 "--device", "cpu")
    assert done.returncode == 0, done.stderr[-2000:]
    assert re.fullmatch(r"cnn baseline resnet18: eager [\d.]+ images/s, compiled [\d.]+ images/s, "
                        r"compiled/eager \d+\.\d\d", done.stdout.splitlines()[-1])
    assert "could not compile" not in done.stdout + done.stderr
