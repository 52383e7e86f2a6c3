"""The benchmarks measure the presets as they ship: their configs through the product's loader,
no private defaults; and (slow) their command lines still run."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from bench._common import chosen_presets, preset_config
from src.config.loader import load_config
from src.config.presets import PRESETS

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("preset", PRESETS.names())
def test_a_benchmark_config_is_the_shipped_gpu_config(preset: str) -> None:
    shipped = load_config(PRESETS[preset].config_path("cifar10"), ["runtime.device=auto"])
    assert preset_config(preset) == shipped  # batch, lr, image size, models: the YAML's
    digits = preset_config(preset, "digits", image_size=16, batch=4, optimizer="sgd")
    assert (digits.data.name, digits.data.image_size, digits.train.batch_size) == ("digits", 16, 4)
    assert digits.train.optimizer == "sgd"
    assert chosen_presets("all") == PRESETS.names() and chosen_presets(preset) == (preset,)


def bench(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *argv], cwd=REPO, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_the_cost_and_activation_benchmarks_run_from_the_presets() -> None:
    cost = bench("bench/cost.py", "--preset", "cnn", "--config", "digits")
    assert cost.returncode == 0, cost.stderr[-2000:]
    assert "cnn preset at 8 px" in cost.stdout and "cnn student/teacher:" in cost.stdout
    saved = bench("bench/activation_memory.py", "--image-size", "16", "--only", "resnet18")
    assert saved.returncode == 0, saved.stderr[-2000:]
    lines = saved.stdout.splitlines()
    measured = [line.split()[0] for line in lines[2:4]]
    assert measured == ["vit_base", "resnet18"]  # the model a preset always checkpoints comes first
    assert lines[-1].startswith("vit_base saved-activation ratio (ckpt/no-ckpt): 0.")
