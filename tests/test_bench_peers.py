"""bench/peers.py and bench/compiled.py: their real command lines run at a tiny size and end with
the figures gpu-check and docs/PERFORMANCE.md read."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from bench import gpu_check

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
    stage_line, headline = done.stdout.splitlines()[-2:]
    assert re.fullmatch(r"cnn baseline resnet18: eager [\d.]+ images/s, compiled [\d.]+ images/s, "
                        r"compiled/eager (\d+\.\d\d)", stage_line)
    assert headline == f"compiled/eager throughput ratio: {stage_line.rsplit(' ', 1)[1]}"
    assert "could not compile" not in done.stdout + done.stderr


def test_gpu_check_runs_both_benchmarks_on_cuda_against_the_issue_targets() -> None:
    benches = {bench.name: bench for bench in gpu_check.benchmark_commands("python")}
    peers = benches["peers"]
    assert (peers.label, peers.target) == ("kd-pipeline/peer throughput ratio", 1.5)
    assert peers.command[1] == "bench/peers.py" and "cuda" in peers.command
    assert benches["compiled cnn"].target == 2.0  # the ResNet-18 32 px KD stage, on an H-class GPU
    assert benches["compiled vit"].target is None  # reported per stage, no target
