"""Trainer behaviour on tiny real timm models: what the user gets from fit() and evaluate()."""
from __future__ import annotations

import json
import logging
import math
import signal
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import torch
import torch.nn.functional as F
from engine_fixtures import (
    CrossEntropyAt,
    KeyedTrain,
    PlainEval,
    ScriptedLoss,
    engine_config,
    fingerprint,
    tiny_cnn,
    tiny_vit,
)

from src.engine.objective import CrossEntropyObjective, Objective, StepOutput
from src.engine.progress import Progress
from src.engine.trainer import Trainer
from src.errors import IncompatibleResumeError, TrainingInterrupted, UserError
from src.utils.logger import REQUIRED_COLUMNS
from src.utils.training_guards import NonFiniteLossError

CPU = torch.device("cpu")


pytestmark = pytest.mark.usefixtures("one_torch_thread")


def make_trainer(stage_dir: Path, model: torch.nn.Module | None = None, objective: Objective | None = None,
                 train: int = 64, val: int = 24, run: dict[str, Any] | None = None, **cfg: Any) -> Trainer:
    extra = cfg.pop("trainer_kwargs", {})
    return Trainer(model if model is not None else tiny_vit(), objective or CrossEntropyObjective(),
                   KeyedTrain(train), PlainEval(val), engine_config(**cfg), stage_dir, device=CPU, seed=0,
                   run_fingerprint=run or fingerprint(), **extra)


def records(stage_dir: Path) -> list[dict[str, Any]]:
    """metrics.jsonl's interval and resume records (the per-epoch loss parts left out)."""
    lines = (stage_dir / "metrics.jsonl").read_text().splitlines()
    return [record for record in map(json.loads, lines) if record.get("event") != "epoch"]


def weights(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


class MemoryLimit(CrossEntropyObjective):
    """Stands in for a GPU that cannot hold more than ``limit`` images per micro-batch (CUDA
    cannot exist here): raises the real torch.OutOfMemoryError above it."""

    def __init__(self, limit: int) -> None:
        super().__init__()
        self.limit = limit
        self.sizes: list[int] = []

    def training_step(self, model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor) -> StepOutput:
        self.sizes.append(images.shape[0])
        if images.shape[0] > self.limit:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return super().training_step(model, images, labels)


class SignalAt(CrossEntropyAt):
    """Sends SIGTERM to this process during its ``call``-th training step (what ``kill`` or a
    cluster's scheduler does); the same objective as cross-entropy for a resume."""

    def training_step(self, model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor) -> StepOutput:
        if self.due():
            signal.raise_signal(signal.SIGTERM)
        return super().training_step(model, images, labels)


def test_fit_writes_epochs_csv_metrics_checkpoints_and_curves(tmp_path: Path) -> None:
    trainer = make_trainer(tmp_path, train=40, val=20, batch_size=16, epochs=2)  # short last micro-batch
    result = trainer.fit()
    table = pd.read_csv(tmp_path / "epochs.csv")
    assert tuple(table.columns) == REQUIRED_COLUMNS
    assert table["epoch"].tolist() == [1, 2]
    assert table["gpu_memory_mb"].isna().all()  # no GPU: empty, never a made-up number
    for name in ("checkpoint_latest.pt", "checkpoint_best.pt", "curves.png"):
        assert (tmp_path / name).is_file()
    logged = records(tmp_path)
    assert [r["step"] for r in logged] == [2, 4, 6]  # 3 updates per epoch, a record every 2
    assert {"loss", "ce", "lr", "grad_norm", "images_per_sec", "skipped_updates"} <= logged[0].keys()
    assert result.epochs_run == 2 and result.resumed_from is None
    assert result.peak_gpu_memory_mb is None and result.train_time_sec > 0
    # the reported best epoch's validation loss is the one in the table, and its weights are restored
    assert result.best_metric == pytest.approx(table["val_loss"].min())
    assert trainer.evaluate(PlainEval(20)).loss == pytest.approx(result.best_metric)


def test_a_batch_norm_model_trains_when_the_epoch_leaves_one_sample_over(tmp_path: Path) -> None:
    # 33 samples at batch 32: without merging, the last batch of one sample would hit batch
    # norm on a 1x1 feature map ("Expected more than 1 value per channel when training")
    result = make_trainer(tmp_path, model=tiny_cnn(), train=33, batch_size=32, epochs=2).fit()
    assert result.epochs_run == 2
    assert [r["step"] for r in records(tmp_path) if "step" in r][-1] == 2  # one update per epoch


def test_evaluate_weights_the_loss_by_samples(tmp_path: Path) -> None:
    trainer = make_trainer(tmp_path, batch_size=16)
    data = PlainEval(21)  # batches of 16 and 5: a per-batch mean would be biased
    result = trainer.evaluate(data)
    model = trainer.model.eval()
    with torch.no_grad():
        logits = model(torch.stack([data[i][0] for i in range(21)]))
    labels = torch.tensor(data.targets)
    assert result.loss == pytest.approx(F.cross_entropy(logits, labels).item(), rel=1e-5)
    assert result.y_true.tolist() == data.targets
    assert result.y_pred.tolist() == logits.argmax(1).tolist()


def test_accumulating_two_micro_batches_of_8_equals_one_batch_of_16(tmp_path: Path) -> None:
    one = make_trainer(tmp_path / "a", model=tiny_vit(seed=3), batch_size=16, accumulation_steps=1, epochs=1)
    two = make_trainer(tmp_path / "b", model=tiny_vit(seed=3), batch_size=8, accumulation_steps=2, epochs=1)
    one.fit()
    two.fit()
    assert two.micro_batch == 8
    for name, value in weights(one.model).items():
        torch.testing.assert_close(weights(two.model)[name], value, rtol=1e-5, atol=1e-6)


def test_short_final_window_is_weighted_by_its_samples(tmp_path: Path) -> None:
    # 40 samples in windows of 16: the last window holds 8 samples in 2 micro-batches of 4
    one = make_trainer(tmp_path / "a", model=tiny_vit(seed=4), train=40, batch_size=16, epochs=1)
    split = make_trainer(tmp_path / "b", model=tiny_vit(seed=4), train=40, batch_size=4, accumulation_steps=4,
                         epochs=1)
    one.fit()
    split.fit()
    for name, value in weights(one.model).items():
        torch.testing.assert_close(weights(split.model)[name], value, rtol=1e-5, atol=1e-6)


def test_early_stopping_stops_at_the_exact_epoch(tmp_path: Path) -> None:
    # lr 0 on a model without batch norm: the val loss never strictly improves after epoch 1,
    # so with patience 2 the run ends after epoch 3 (epochs 2 and 3 without improvement).
    trainer = make_trainer(tmp_path, lr=0.0, epochs=10, patience=2, scheduler="constant")
    result = trainer.fit()
    assert (result.epochs_run, result.stopped_early, result.best_epoch) == (3, True, 1)
    assert pd.read_csv(tmp_path / "epochs.csv")["epoch"].tolist() == [1, 2, 3]
    state = torch.load(tmp_path / "checkpoint_latest.pt", weights_only=True)
    assert state["early_stopping"]["wait"] == 2


def test_best_weights_are_restored_when_later_epochs_are_worse(tmp_path: Path) -> None:
    # no later epoch beats the first by a min_delta this large: epoch 1 is the best by construction,
    # whatever the floats of this CPU, while the weights keep changing at a rate that never diverges
    trainer = make_trainer(tmp_path, lr=0.05, epochs=4, scheduler="constant", min_delta=1e9)
    result = trainer.fit()
    table = pd.read_csv(tmp_path / "epochs.csv")
    assert result.best_epoch == 1 and len(table) == 4
    assert trainer.evaluate(PlainEval(24)).loss == pytest.approx(table["val_loss"][0], rel=1e-5)
    assert table["val_loss"][3] != table["val_loss"][0]  # the last epoch's weights were other ones


def test_learning_rate_follows_linear_warmup(tmp_path: Path) -> None:
    # 64 samples / 16 = 4 updates per epoch; warmup 1 epoch: lr after k updates is base*(k+1)/5
    trainer = make_trainer(tmp_path, lr=0.1, epochs=2, warmup_epochs=1.0, scheduler="constant",
                           log_interval=1)
    trainer.fit()
    lrs = [r["lr"] for r in records(tmp_path)]
    assert lrs == pytest.approx([0.04, 0.06, 0.08, 0.1, 0.1, 0.1, 0.1, 0.1])
    assert pd.read_csv(tmp_path / "epochs.csv")["learning_rate"].tolist() == pytest.approx([0.1, 0.1])


@pytest.mark.parametrize("kind", ["nan", "inf"])
def test_nonfinite_loss_raises_and_never_reaches_the_weights(tmp_path: Path, kind: str) -> None:
    trainer = make_trainer(tmp_path, objective=ScriptedLoss({6}, kind), epochs=2, checkpoint_every_steps=1)
    with pytest.raises(NonFiniteLossError) as caught:
        trainer.fit()
    assert caught.value.exit_code == 3 and caught.value.step == 6
    assert all(torch.isfinite(v).all() for v in trainer.model.state_dict().values())
    state = torch.load(tmp_path / "checkpoint_latest.pt", weights_only=True)
    assert state["global_step"] == 5  # the last good update; nothing saved after the bad one
    assert all(torch.isfinite(v).all() for v in state["model"].values() if v.is_floating_point())


def test_skip_policy_skips_and_counts_nonfinite_updates(tmp_path: Path) -> None:
    trainer = make_trainer(tmp_path, objective=ScriptedLoss({2, 7}), epochs=2, nonfinite_policy="skip",
                           log_interval=1, lr=0.1, scheduler="constant")
    before = weights(trainer.model)
    result = trainer.fit()
    logged = records(tmp_path)
    assert [r["step"] for r in logged if r["skipped_updates"]] == [2, 7]
    assert result.epochs_run == 2
    assert all(torch.isfinite(v).all() for v in trainer.model.state_dict().values())
    assert any(not torch.equal(before[k], v) for k, v in weights(trainer.model).items())
    assert trainer.schedule.num_updates == 6  # skipped updates never advance the schedule


@pytest.mark.slow
def test_out_of_memory_halves_the_micro_batch_and_keeps_the_effective_batch(tmp_path: Path) -> None:
    limited = MemoryLimit(limit=4)
    trainer = make_trainer(tmp_path / "oom", model=tiny_vit(seed=5), objective=limited, batch_size=16,
                           epochs=1)
    result = trainer.fit()
    assert (result.micro_batch, result.accumulation_steps) == (4, 4)
    assert limited.sizes[:3] == [16, 8, 4]
    reference = make_trainer(tmp_path / "ref", model=tiny_vit(seed=5), batch_size=4, accumulation_steps=4,
                             epochs=1)
    reference.fit()
    for name, value in weights(reference.model).items():
        torch.testing.assert_close(weights(trainer.model)[name], value, rtol=1e-5, atol=1e-6)


def test_out_of_memory_in_the_optimizer_step_redoes_the_window(tmp_path: Path) -> None:
    trainer = make_trainer(tmp_path, batch_size=16, epochs=1)
    real_step, calls = trainer.optimizer.step, []

    def first_step_runs_out_of_memory(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) == 1:  # where a GPU allocates the momentum buffers
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 44.00 MiB")
        return real_step(*args, **kwargs)

    trainer.optimizer.step = first_step_runs_out_of_memory
    result = trainer.fit()
    assert (result.micro_batch, result.accumulation_steps) == (8, 2)
    assert trainer.global_step == trainer.schedule.num_updates == 4  # 64 / 16: no window lost or doubled


def test_out_of_memory_gives_up_with_what_was_tried(tmp_path: Path) -> None:
    trainer = make_trainer(tmp_path, objective=MemoryLimit(limit=0), batch_size=8, max_oom_retries=2)
    with pytest.raises(UserError, match="micro-batch 8, micro-batch 4, micro-batch 2"):
        trainer.fit()


@pytest.mark.slow
def test_out_of_memory_never_halves_a_batch_norm_model_below_two_samples(tmp_path: Path) -> None:
    """BatchNorm cannot train on one sample: the fallback stops at micro-batch 2 with one line
    instead of crashing in the forward (a ViT, without BatchNorm, may go down to 1)."""
    limited = MemoryLimit(limit=1)
    trainer = make_trainer(tmp_path / "cnn", model=tiny_cnn(), objective=limited, batch_size=8)
    with pytest.raises(UserError, match="micro-batch 8, micro-batch 4, micro-batch 2\\)"):
        trainer.fit()
    assert min(limited.sizes) == 2
    vit = make_trainer(tmp_path / "vit", model=tiny_vit(), objective=MemoryLimit(limit=1), batch_size=8,
                       epochs=1)
    assert vit.fit().micro_batch == 1


def test_sigterm_saves_and_raises_then_the_same_command_resumes_exactly(tmp_path: Path) -> None:
    previous = signal.getsignal(signal.SIGTERM)
    interrupted = make_trainer(tmp_path / "run", model=tiny_cnn(seed=1), objective=SignalAt(6), epochs=2)
    torch.manual_seed(7)
    with pytest.raises(TrainingInterrupted) as caught:
        interrupted.fit()
    assert caught.value.exit_code == 143 and "re-run the same command to resume" in str(caught.value)
    assert signal.getsignal(signal.SIGTERM) is previous
    state = torch.load(tmp_path / "run" / "checkpoint_latest.pt", weights_only=True)
    assert (state["epoch"], state["samples_done"]) == (2, 32)  # saved at the boundary of the 6th update

    resumed = make_trainer(tmp_path / "run", model=tiny_cnn(seed=2), epochs=2)
    assert resumed.fit().resumed_from == tmp_path / "run" / "checkpoint_latest.pt"
    reference = make_trainer(tmp_path / "ref", model=tiny_cnn(seed=1), epochs=2)
    torch.manual_seed(7)
    reference.fit()
    for name, value in weights(reference.model).items():
        assert torch.equal(weights(resumed.model)[name], value), name


def test_resume_refuses_a_different_run_and_records_harmless_changes(tmp_path: Path) -> None:
    make_trainer(tmp_path, epochs=1).fit()
    with pytest.raises(IncompatibleResumeError, match=r"run\.model"):
        make_trainer(tmp_path, epochs=1, run=fingerprint(model="other")).fit()
    with pytest.raises(IncompatibleResumeError, match=r"engine\.lr"):
        make_trainer(tmp_path, epochs=1, lr=0.5).fit()
    result = make_trainer(tmp_path, epochs=2, log_interval=1).fit()
    assert result.epochs_run == 2
    events = [r for r in records(tmp_path) if r.get("event") == "resume"]
    assert events[-1]["changed"] == {"epochs": [1, 2], "log_interval": [2, 1]}


def test_damaged_latest_checkpoint_falls_back_to_the_previous_one(tmp_path: Path) -> None:
    make_trainer(tmp_path, epochs=2).fit()
    (tmp_path / "checkpoint_latest.pt").write_bytes(b"not a checkpoint")
    result = make_trainer(tmp_path, epochs=3).fit()
    assert result.resumed_from == tmp_path / "checkpoint_previous.pt"
    assert pd.read_csv(tmp_path / "epochs.csv")["epoch"].tolist() == [1, 2, 3]


def test_resume_never_starts_again(tmp_path: Path) -> None:
    make_trainer(tmp_path, epochs=1).fit()
    result = make_trainer(tmp_path, epochs=1, trainer_kwargs={"resume": "never"}).fit()
    assert result.resumed_from is None
    assert pd.read_csv(tmp_path / "epochs.csv")["epoch"].tolist() == [1]


def test_unknown_monitor_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="val_accuracy"):
        make_trainer(tmp_path, monitor="train_loss")


def test_plain_progress_lines_when_not_a_terminal(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level("INFO", logger="kd_pipeline.engine")
    make_trainer(tmp_path, epochs=1, progress="auto").fit()
    lines = [r.getMessage() for r in caplog.records]
    assert any(line.startswith("epoch 1/1 step 2: loss") for line in lines)
    assert any("val loss" in line for line in lines)
    assert math.isfinite(pd.read_csv(tmp_path / "epochs.csv")["train_loss"].iloc[0])


def test_sigint_during_the_last_epoch_end_still_stops_with_130(tmp_path: Path) -> None:
    send = lambda epoch, model: signal.raise_signal(signal.SIGINT)  # noqa: E731
    trainer = make_trainer(tmp_path, epochs=1, trainer_kwargs={"epoch_callbacks": [send]})
    with pytest.raises(TrainingInterrupted) as caught:
        trainer.fit()
    assert caught.value.exit_code == 130 and "SIGINT" in str(caught.value)
    state = torch.load(tmp_path / "checkpoint_latest.pt", weights_only=True)
    assert (state["epoch"], state["samples_done"]) == (2, 0)  # the finished epoch is saved


def test_time_based_checkpoints_are_saved_mid_epoch(tmp_path: Path) -> None:
    trainer = make_trainer(tmp_path, epochs=1, checkpoint_every_minutes=1e-9)  # due at every update
    saved, real_save = [], trainer.store.save_latest

    def recording_save(state: dict[str, Any]) -> Path:
        saved.append((state["epoch"], state["samples_done"]))
        return real_save(state)

    trainer.store.save_latest = recording_save
    trainer.fit()
    assert saved == [(1, 16), (1, 32), (1, 48), (1, 64), (2, 0)]


def test_progress_bar_shows_loss_accuracy_and_throughput(capsys: pytest.CaptureFixture[str]) -> None:
    progress = Progress("bar", logging.getLogger("test"))
    progress.start_epoch(1, 3, micro_batches=4)
    progress.advance()
    progress.interval({"step": 1, "loss": 0.5, "accuracy": 0.75, "lr": 0.1, "images_per_sec": 1234.0})
    progress.advance()
    progress.close()
    err = capsys.readouterr().err
    assert "epoch 1/3" in err and "loss=0.5000" in err and "acc=0.750" in err and "img_s=1234" in err
    assert Progress("auto", logging.getLogger("test")).mode == "plain"  # pytest's stderr is no terminal
    assert Progress("bar", logging.getLogger("test"), is_main=False).mode == "off"


def test_tensorboard_without_the_package_is_a_clear_user_error(tmp_path: Path) -> None:
    try:
        import tensorboard  # noqa: F401
    except ImportError:
        with pytest.raises(UserError, match="tensorboard"):
            make_trainer(tmp_path, epochs=1, tensorboard=True).fit()
    else:
        make_trainer(tmp_path, epochs=1, tensorboard=True).fit()
        assert any((tmp_path / "tensorboard").iterdir())


def test_resuming_from_a_weights_only_file_is_a_user_error(tmp_path: Path) -> None:
    weights_only = tmp_path / "weights.pt"
    torch.save({"model": tiny_vit().state_dict()}, weights_only)
    with pytest.raises(UserError, match="missing keys"):
        make_trainer(tmp_path / "stage", trainer_kwargs={"resume": weights_only}).fit()
