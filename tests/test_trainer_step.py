"""UpdateStep's fp16 path (GradScaler) on the CPU: torch's CPU GradScaler runs the same
scale -> backward -> unscale_ -> clip -> step -> update sequence as on CUDA, so its ordering,
its skip-and-back-off behaviour and its host reads can be checked without a GPU."""
from __future__ import annotations

import gc
import re
import sys
import warnings
import weakref
from pathlib import Path
from typing import Any, Optional

import pytest
import torch
from engine_fixtures import KeyedTrain, PlainEval, digits_tensors, engine_config, fingerprint, tiny_vit

from src.distillation.distiller import DistillationObjective
from src.engine.objective import CrossEntropyObjective
from src.engine.optim import build_optimizer
from src.engine.progress import Progress
from src.engine.step import UpdateStep, resolve_precision
from src.engine.trainer import Trainer

CPU = torch.device("cpu")
ENGINE_CODE = re.compile(r"[/\\]src[/\\](engine|distillation|utils)[/\\]")


def stepper(model: torch.nn.Module, scaler: Optional[torch.amp.GradScaler], **cfg: Any) -> UpdateStep:
    config = engine_config(**cfg)
    return UpdateStep(model, CrossEntropyObjective(), build_optimizer(model, config), config, CPU,
                      None, scaler, channels_last=False)


def one_update(step: UpdateStep, images: torch.Tensor, labels: torch.Tensor) -> Any:
    """Two micro-batches of 8 in one window, as the trainer runs them."""
    flags = [step.forward_backward(images[i : i + 8], labels[i : i + 8], 0.5)[1]
             for i in (0, 8)]
    return step.apply(torch.stack(flags).all())


@pytest.mark.parametrize("grad_clip", [None, 0.05])
def test_scaled_update_equals_the_unscaled_one_clipped_after_unscaling(grad_clip: Optional[float]) -> None:
    images, labels = digits_tensors(16)
    plain, scaled = tiny_vit(seed=3), tiny_vit(seed=3)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**12)
    outcomes = [one_update(stepper(plain, None, grad_clip=grad_clip), images, labels),
                one_update(stepper(scaled, scaler, grad_clip=grad_clip), images, labels)]
    assert all(o.applied for o in outcomes)
    # clip_grad_norm_ saw unscaled gradients: the norms agree, not 4096x apart.
    torch.testing.assert_close(outcomes[1].grad_norm, outcomes[0].grad_norm, rtol=1e-4, atol=1e-6)
    for (name, value), other in zip(plain.state_dict().items(), scaled.state_dict().values(), strict=True):
        torch.testing.assert_close(other, value, rtol=1e-4, atol=1e-6, msg=name)
    assert scaler.get_scale() == 2.0**12  # no overflow: the scale stays


def test_overflowing_scaled_gradients_skip_the_update_and_back_off_the_scale() -> None:
    images, labels = digits_tensors(16)
    model = tiny_vit(seed=3)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    scaler = torch.amp.GradScaler("cpu", init_scale=1e38)  # scaled fp32 gradients overflow to inf
    outcome = one_update(stepper(model, scaler), images, labels)
    assert not outcome.applied and not outcome.loss_nonfinite
    assert scaler.get_scale() == pytest.approx(0.5e38)
    for name, value in model.state_dict().items():
        assert torch.equal(value, before[name]), name


def test_an_update_reads_the_device_once_even_with_a_grad_scaler(monkeypatch: pytest.MonkeyPatch) -> None:
    """The design allows one host read per update; GradScaler.step would add a second (it
    re-reads found_inf with .item()), which on a GPU is a second stall per update."""
    images, labels = digits_tensors(16)
    step = stepper(tiny_vit(seed=3), torch.amp.GradScaler("cpu", init_scale=2.0**12), grad_clip=1.0)
    reads: list[str] = []
    for name in ("item", "tolist", "__bool__", "__float__"):
        real = getattr(torch.Tensor, name)

        def counted(self: torch.Tensor, *args: Any, _real: Any = real, _name: str = name) -> Any:
            reads.append(_name)
            return _real(self, *args)

        monkeypatch.setattr(torch.Tensor, name, counted)
    outcome = one_update(step, images, labels)
    monkeypatch.undo()
    assert outcome.applied
    assert len(reads) == 1, reads


def test_training_reads_the_device_once_per_update_and_not_per_micro_batch(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Over a whole epoch of a KD stage (2 micro-batches per update, no log interval due), the
    loop's only host reads are the one per update: losses, parts, accuracy and predictions stay
    on the device until the epoch end. Reads made by the data loading (CPU tensors in a
    worker on a real run) are not counted: only those made by the engine's own code."""
    teacher = tiny_vit(seed=9)
    objective = DistillationObjective(teacher)
    config = engine_config(epochs=1, batch_size=8, accumulation_steps=2, log_interval=1000)
    trainer = Trainer(tiny_vit(seed=3), objective, KeyedTrain(64), PlainEval(8), config, tmp_path,
                      device=CPU, seed=0, run_fingerprint=fingerprint())
    reads: list[str] = []
    counting = [False]
    for name in ("item", "tolist", "__bool__", "__float__", "__int__", "__index__", "cpu", "numpy"):
        real = getattr(torch.Tensor, name)

        def counted(self: torch.Tensor, *args: Any, _real: Any = real, _name: str = name, **kw: Any) -> Any:
            if counting[0] and ENGINE_CODE.search(sys._getframe(1).f_code.co_filename):
                reads.append(_name)
            return _real(self, *args, **kw)

        monkeypatch.setattr(torch.Tensor, name, counted)
    real_run_plan = trainer._run_plan

    def run_plan_counted(*args: Any) -> None:
        counting[0] = True
        try:
            real_run_plan(*args)
        finally:
            counting[0] = False

    monkeypatch.setattr(trainer, "_run_plan", run_plan_counted)
    trainer.fit()
    monkeypatch.undo()
    assert trainer.global_step == 4
    assert reads == ["tolist"] * 4


class ActivationsThenOutOfMemory(CrossEntropyObjective):
    """Builds a real forward graph, then runs out of memory above ``limit`` images (as a GPU
    does mid-forward); remembers weak references to what the failed attempt allocated."""

    def __init__(self, limit: int, from_call: int = 1) -> None:
        super().__init__()
        self.limit, self.from_call, self.calls = limit, from_call, 0
        self.failed: list[weakref.ref[torch.Tensor]] = []
        self.alive_at_retry: list[bool] = []

    def training_step(self, model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor) -> Any:
        self.calls += 1
        if self.failed and not self.alive_at_retry:
            self.alive_at_retry.append(any(ref() is not None for ref in self.failed))
        out = super().training_step(model, images, labels)
        if images.shape[0] > self.limit and self.calls >= self.from_call:
            self.failed += [weakref.ref(images), weakref.ref(out.logits), weakref.ref(out.loss)]
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return out


def test_out_of_memory_frees_the_failed_window_before_the_retry(tmp_path: Path) -> None:
    """emptying the CUDA cache returns nothing while the failed attempt's tensors live on in the
    exception's traceback frames; they must be gone (by reference counting alone, no gc pass)
    before the smaller micro-batch starts."""
    objective = ActivationsThenOutOfMemory(limit=8)
    trainer = Trainer(tiny_vit(seed=3), objective, KeyedTrain(32), PlainEval(8),
                      engine_config(epochs=1, batch_size=16), tmp_path, device=CPU, seed=0,
                      run_fingerprint=fingerprint())
    gc.disable()
    try:
        result = trainer.fit()
    finally:
        gc.enable()
    assert result.micro_batch == 8 and objective.failed
    assert objective.alive_at_retry == [False]


def test_progress_after_an_out_of_memory_replan_continues_from_the_updates_done(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The bar restarted at 0 of the remaining micro-batches after a re-plan; it now counts
    the windows already done in the new micro-batch size, so the total stays the epoch's."""
    calls: list[tuple[int, int]] = []

    def start_epoch(self: Progress, epoch: int, epochs: int, micro_batches: int, done: int = 0) -> None:
        calls.append((micro_batches, done))

    monkeypatch.setattr(Progress, "start_epoch", start_epoch)
    objective = ActivationsThenOutOfMemory(limit=8, from_call=3)  # windows of 16: the third fails
    trainer = Trainer(tiny_vit(seed=3), objective, KeyedTrain(64), PlainEval(8),
                      engine_config(epochs=1, batch_size=16), tmp_path, device=CPU, seed=0,
                      run_fingerprint=fingerprint())
    trainer.fit()
    assert calls == [(4, 0), (4, 4)]  # 4 windows x 1 micro-batch; then 2 windows x 2 left, 2 x 2 done


def test_out_of_memory_after_the_update_never_applies_it_twice(tmp_path: Path) -> None:
    """An allocation in the bookkeeping after optimizer.step (here the prediction store) can
    run out of memory too; the fallback must then go on after the window, not redo it."""
    trainer = Trainer(tiny_vit(seed=3), CrossEntropyObjective(), KeyedTrain(64), PlainEval(8),
                      engine_config(epochs=1, batch_size=16), tmp_path, device=CPU, seed=0,
                      run_fingerprint=fingerprint())
    real_step, real_update, steps, updates = trainer.optimizer.step, trainer.accumulator.update, [], []

    def counted_step(*args: Any, **kwargs: Any) -> Any:
        steps.append(1)
        return real_step(*args, **kwargs)

    def first_update_runs_out_of_memory(*args: Any) -> None:
        updates.append(1)
        if len(updates) == 1:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 MiB")
        real_update(*args)

    trainer.optimizer.step = counted_step
    trainer.accumulator.update = first_update_runs_out_of_memory
    result = trainer.fit()
    assert result.micro_batch == 8
    assert len(steps) == trainer.global_step == trainer.schedule.num_updates == 4  # 64 / 16, each once


@pytest.mark.parametrize("native,expected", [(True, torch.bfloat16), (False, torch.float16)])
def test_auto_precision_picks_bf16_only_where_the_gpu_has_it_natively(
        monkeypatch: pytest.MonkeyPatch, native: bool, expected: torch.dtype) -> None:
    """A Turing/Pascal 6 GB card emulates bf16 (torch's default check says yes): auto must
    take fp16 with a GradScaler there. No GPU here: the capability query is replaced."""
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: native
                        or including_emulation)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # GradScaler("cuda") without CUDA warns and disables itself
        dtype, scaler = resolve_precision("auto", torch.device("cuda"))
    assert dtype == expected and (scaler is not None) == (expected == torch.float16)
