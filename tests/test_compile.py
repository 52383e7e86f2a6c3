"""runtime.compile, fused optimizers and host reads per update (src/engine/compiling.py,
src/engine/optim.py, src/engine/step.py).

Compiling on this CPU is slow (inductor runs a C++ compiler per kernel), so the two tests that
really compile use the smallest model that exercises the path and are marked slow; the rest
check the engine's handling with torch's own cheap backends.
"""
from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch
from engine_fixtures import (
    CrossEntropyAt,
    KeyedTrain,
    PlainEval,
    engine_config,
    fingerprint,
    tiny_cnn,
    tiny_vit,
)
from torch import nn

from src.data.build import build_datasets
from src.data.settings import DataConfig
from src.distillation.distiller import DistillationObjective
from src.engine.compiling import AUTO_MIN_UPDATES, EAGER, CompiledModule, CompileSettings, should_compile
from src.engine.objective import CrossEntropyObjective, Objective, StepOutput
from src.engine.optim import build_optimizer
from src.engine.trainer import Trainer
from src.errors import TrainingInterrupted

CPU = torch.device("cpu")
CUDA = torch.device("cuda", 0)
ROOT = Path(__file__).resolve().parents[1]


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def make_trainer(stage_dir: Path, model: nn.Module, objective: Objective | None = None, train: int = 40,
                 settings: CompileSettings = EAGER, **cfg: Any) -> Trainer:
    return Trainer(model, objective or CrossEntropyObjective(), KeyedTrain(train), PlainEval(16),
                   engine_config(**cfg), stage_dir, device=CPU, seed=0, run_fingerprint=fingerprint(),
                   compilation=settings)


def weights(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_auto_compiles_only_long_cuda_stages_and_on_compiles_anywhere() -> None:
    assert should_compile("auto", CUDA, AUTO_MIN_UPDATES)
    assert not should_compile("auto", CUDA, AUTO_MIN_UPDATES - 1)  # the compile time is not won back
    assert not should_compile("auto", CPU, 10 * AUTO_MIN_UPDATES)  # never the CPU unless asked
    assert should_compile("on", CPU, 1) and not should_compile("off", CUDA, 10 * AUTO_MIN_UPDATES)


def test_nothing_is_compiled_when_compiling_does_not_apply(tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*args: Any, **kwargs: Any) -> None:
        raise AssertionError("torch.compile called")

    monkeypatch.setattr(torch, "compile", refuse)
    for mode in ("off", "auto"):  # auto: a CPU stage
        trainer = make_trainer(tmp_path / mode, tiny_vit(), settings=CompileSettings(mode), epochs=1)
        trainer.fit()
        assert trainer.stepper.compiled is None


def failing_backend(graph: torch.fx.GraphModule, example_inputs: list[torch.Tensor]) -> Any:
    """A torch.compile backend that fails as a missing C++ compiler or an untraceable op does."""
    raise RuntimeError("no working C++ compiler found\nsecond line of the backend's report")


def test_a_compile_failure_trains_eager_after_one_warning_line(tmp_path: Path,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    eager = make_trainer(tmp_path / "eager", tiny_vit(seed=3), epochs=1)
    eager.fit()
    failing = make_trainer(tmp_path / "failing", tiny_vit(seed=3), epochs=1,
                           settings=CompileSettings("on", failing_backend))
    with caplog.at_level("WARNING", logger="kd_pipeline.engine"):
        failing.fit()
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert len(warnings) == 1 and "could not compile the training step" in warnings[0]
    assert "\n" not in warnings[0] and "it runs eager" in warnings[0]
    assert not failing.stepper.compiled.active
    for name, value in weights(eager.model).items():  # the failed attempt left nothing behind
        assert torch.equal(weights(failing.model)[name], value), name


def test_compiled_module_passes_out_of_memory_on_to_the_engine() -> None:
    calls: list[str] = []

    def work(forward: Any) -> None:
        calls.append("compiled" if forward is not module.eager else "eager")
        raise torch.OutOfMemoryError("CUDA out of memory")

    module = CompiledModule(nn.Linear(2, 2), "training step", CompileSettings("on", "eager"), CPU)
    with pytest.raises(torch.OutOfMemoryError):
        module.run(work)
    assert calls == ["compiled"] and module.active  # the engine halves the batch; compiling stays


@pytest.mark.parametrize("opt", ["sgd", "adamw"])
def test_a_fused_optimizer_stays_fused_when_resuming_an_unfused_checkpoint(opt: str) -> None:
    torch.manual_seed(0)
    model = nn.Linear(4, 3)
    cfg = engine_config(optimizer=opt)
    unfused = build_optimizer(model, cfg)
    model(torch.randn(2, 4)).sum().backward()
    unfused.step()
    fused = build_optimizer(model, cfg, fused=True)
    assert fused.defaults["fused"] is True
    fused.load_state_dict(unfused.state_dict())  # torch alone would restore fused=None here
    assert all(group["fused"] is True for group in fused.param_groups)
    fused.step()  # AdamW's step counters were moved where the fused kernel reads them
    assert not build_optimizer(model, cfg).defaults.get("fused")  # eager where not asked (the CPU)


def test_the_cpu_engine_reads_the_host_at_most_once_per_update(tmp_path: Path) -> None:
    # the product's datasets (their augmentation runs batched): what is counted is the engine's
    data = build_datasets(DataConfig(image_size=8, subset=192), None, seed=0)
    trainer = Trainer(tiny_cnn(in_chans=3), CrossEntropyObjective(), data.train, data.val,
                      engine_config(batch_size=16, epochs=2, log_interval=20), tmp_path, device=CPU, seed=0,
                      run_fingerprint=fingerprint())
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        trainer.fit()
    reads = sum(event.count for event in prof.key_averages()
                if event.key in ("aten::item", "aten::_local_scalar_dense"))
    updates = trainer.global_step
    assert updates >= 20
    assert reads / updates <= 1.0, f"{reads} host reads in {updates} updates"


class SignalAt(CrossEntropyAt):
    """SIGTERM during its ``call``-th training step (cross-entropy's fingerprint, for the resume)."""

    def training_step(self, model: nn.Module, images: torch.Tensor, labels: torch.Tensor) -> StepOutput:
        if self.due():
            signal.raise_signal(signal.SIGTERM)
        return super().training_step(model, images, labels)


def tiny_mlp(seed: int) -> nn.Module:
    """The smallest model with the paths that matter (dropout's RNG, a matmul, a bias): each
    kernel inductor generates costs a C++ compile on this CPU."""
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Dropout(0.2), nn.Linear(64, 10))


@pytest.mark.slow
def test_a_compiled_mid_epoch_resume_is_bit_identical_to_an_uninterrupted_compiled_run(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import torch._inductor.config as inductor_config

    monkeypatch.setattr(inductor_config, "compile_threads", 1)  # no worker pool beside the test session
    inductor = CompileSettings("on", "inductor")
    # 40 samples at batch 16: updates of 16, 16 and a short last batch of 8 in every epoch
    interrupted = make_trainer(tmp_path / "run", tiny_mlp(1), SignalAt(5), settings=inductor, epochs=2)
    torch.manual_seed(7)
    with pytest.raises(TrainingInterrupted):
        interrupted.fit()
    assert interrupted.stepper.compiled.active  # really compiled, not fallen back
    state = torch.load(tmp_path / "run" / "checkpoint_latest.pt", weights_only=True)
    assert (state["epoch"], state["samples_done"]) == (2, 32)  # mid-epoch, before the short batch

    resumed = make_trainer(tmp_path / "run", tiny_mlp(2), settings=inductor, epochs=2)
    assert resumed.fit().resumed_from is not None
    reference = make_trainer(tmp_path / "ref", tiny_mlp(1), settings=inductor, epochs=2)
    torch.manual_seed(7)
    reference.fit()
    assert resumed.stepper.compiled.active and reference.stepper.compiled.active
    for name, value in weights(reference.model).items():
        assert torch.equal(weights(resumed.model)[name], value), name


@pytest.mark.slow
def test_without_a_cpp_compiler_the_real_command_line_trains_eager_after_one_line(tmp_path: Path) -> None:
    env = {**os.environ, "CXX": str(tmp_path / "no-such-g++"), "TORCHINDUCTOR_COMPILE_THREADS": "1",
           "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "cache")}  # a cached kernel would need no compiler
    command = [sys.executable, str(ROOT / "cnn_distillation" / "train.py"), "--stages", "baseline",
               "--subset", "40", "--epochs", "1", "--device", "cpu", "--image-size", "16",
               "--output-dir", str(tmp_path / "run"), "--set", "models.student=test_resnet",
               "--set", "report.benchmark=false", "--set", "runtime.compile=on"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=None)
    assert done.returncode == 0, done.stderr[-2000:]
    output = done.stdout + done.stderr
    assert "Traceback" not in output
    warnings = [line for line in output.splitlines() if "runtime.compile: could not compile" in line]
    assert len(warnings) == 1, output[-2000:]
    assert "training step" in warnings[0] and "C++ compiler" in warnings[0]
    assert (tmp_path / "run" / "baseline" / "result.json").is_file()


@pytest.mark.gpu
@pytest.mark.slow
def test_a_compiled_kd_stage_trains_on_cuda_with_a_fused_optimizer_and_a_cuda_graph_teacher(
        tmp_path: Path) -> None:
    objective = DistillationObjective(tiny_cnn(seed=5))
    trainer = Trainer(tiny_cnn(seed=6), objective, KeyedTrain(40), PlainEval(16), engine_config(epochs=2),
                      tmp_path, device=torch.device("cuda", torch.cuda.current_device()), seed=0,
                      run_fingerprint=fingerprint(), compilation=CompileSettings("on"))
    result = trainer.fit()
    assert result.epochs_run == 2 and math.isfinite(result.best_metric)
    assert trainer.optimizer.defaults["fused"] is True
    assert trainer.stepper.compiled.active  # the student's forward and backward stayed compiled
    assert objective.teacher_forward.active and objective.teacher_forward.cuda_graphs
