"""The benchmarks are sized by time and report their noise, and engine/bare compares like with
like: the bare loop trains in the engine's own precision and memory layout."""
from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType

import pytest
import timm
import torch
from fake_cuda import FakeCuda

from bench._common import spread, steps_for, warm_up
from src.engine.settings import TrainConfig
from src.engine.step import resolve_precision

REPO = Path(__file__).resolve().parents[1]


def test_rounds_are_sized_by_time_and_their_spread_is_relative_to_the_median() -> None:
    assert steps_for(5.0, 0.01) == 500 and steps_for(5.0, 10.0) == 1 and steps_for(5.0, 10.0, minimum=3) == 3
    assert spread([0.90, 1.00, 0.95]) == pytest.approx(0.10 / 0.95)
    assert spread([0.97, 0.97]) == 0.0
    calls = {"a": 0, "b": 0}
    per_call = warm_up([lambda: calls.__setitem__("a", calls["a"] + 1),
                        lambda: calls.__setitem__("b", calls["b"] + 1)], 0.0, torch.device("cpu"))
    assert calls == {"a": 2, "b": 2} and len(per_call) == 2  # each at least twice, the first not timed


@pytest.fixture
def overhead(monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """bench/overhead.py as its script runs it (bench/ first on the path)."""
    monkeypatch.syspath_prepend(str(REPO / "bench"))
    import overhead as module

    return module


@pytest.mark.parametrize(("capability", "dtype", "scaled"), [((8, 6), torch.bfloat16, False),
                                                             ((7, 5), torch.float16, True)])
def test_the_bare_loop_trains_in_the_engines_precision_and_layout_on_cuda(
        overhead: ModuleType, make_fake_cuda: Callable[..., FakeCuda], capability: tuple[int, int],
        dtype: torch.dtype, scaled: bool) -> None:
    make_fake_cuda(capability=capability)
    cuda, cfg = torch.device("cuda", 0), TrainConfig(amp="auto")
    model = timm.create_model("resnet18", num_classes=10)  # its weights stay on the CPU: the fake holds none
    step = overhead.BareStep(model, cfg, cuda)
    engine_dtype, engine_scaler = resolve_precision(cfg.amp, cuda)  # what the Trainer resolves
    assert step.dtype == engine_dtype == dtype
    assert (step.scaler is not None) == (engine_scaler is not None) == scaled
    assert step.channels_last and model.conv1.weight.is_contiguous(memory_format=torch.channels_last)


def test_the_bare_loop_on_the_cpu_is_float32_in_the_default_layout(overhead: ModuleType) -> None:
    step = overhead.BareStep(timm.create_model("resnet18", num_classes=10), TrainConfig(amp="auto"),
                             torch.device("cpu"))
    assert (step.dtype, step.scaler, step.channels_last) == (None, None, False)


@pytest.mark.slow
def test_overhead_prints_every_rounds_ratio_the_spread_and_the_headline() -> None:
    done = subprocess.run([sys.executable, "bench/overhead.py", "--seconds", "0.1", "--warmup-seconds", "0.1",
                           "--rounds", "2", "--batch-size", "4", "--image-size", "16"],
                          cwd=REPO, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    assert [line.split(":")[0] for line in lines if line.startswith("round ")] == ["round 1", "round 2"]
    assert "engine/bare" in lines[1] and "precision torch.float32, channels-last False" in lines[0]
    assert lines[-2].startswith("engine/bare round spread: ")
    assert lines[-1].startswith("engine/bare throughput ratio: ")
