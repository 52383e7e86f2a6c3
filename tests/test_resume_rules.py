"""One source of truth for what a resume may change: the run directory and the engine's
checkpoint check judge every training setting alike; a key of one stage breaks only that stage
(and the stages distilled from it); after a divergence the recovery settings may change."""
from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
import torch
from engine_fixtures import CrossEntropyAt, KeyedTrain, PlainEval, engine_config, fingerprint, tiny_vit

from src.config.change_rules import compare_configs, key_rule
from src.config.loader import load_config, schema_keys
from src.engine.divergence import DIVERGED_FILE, NonFiniteLossError
from src.engine.objective import CrossEntropyObjective, StepOutput
from src.engine.resume_rules import ENGINE_RULES, check_resume
from src.engine.settings import TrainConfig
from src.engine.trainer import Trainer
from src.errors import IncompatibleResumeError

CPU = torch.device("cpu")
# a legal new value for every TrainConfig field (the default config's values are the old ones)
NEW_VALUES: dict[str, Any] = {
    "epochs": 20, "batch_size": 32, "accumulation_steps": 2, "lr": 0.01, "optimizer": "adamw",
    "momentum": 0.8, "nesterov": False, "weight_decay": 0.01, "scheduler": "step", "warmup_epochs": 1.0,
    "min_lr": 0.001, "step_size": 5, "gamma": 0.5, "grad_clip": 1.0, "amp": "off", "channels_last": False,
    "monitor": "val_accuracy", "mode": "max", "patience": 3, "min_delta": 0.1, "label_smoothing": 0.1,
    "log_interval": 5, "checkpoint_every_steps": 10, "checkpoint_every_minutes": 5.0, "keep_checkpoints": 2,
    "nonfinite_policy": "skip", "max_oom_retries": 2, "num_workers": 2, "tensorboard": True,
    "progress": "off", "grad_checkpointing": "on",
}  # fmt: skip


def test_every_config_key_has_exactly_one_rule() -> None:
    assert set(NEW_VALUES) == {f.name for f in dataclasses.fields(TrainConfig)}
    for key in schema_keys():
        rule = key_rule(key)
        assert rule.stages, key
        if key.startswith("train."):
            assert rule.kind == ENGINE_RULES[key.removeprefix("train.")], key


@pytest.mark.parametrize("field", sorted(NEW_VALUES))
@pytest.mark.parametrize("diverged", [False, True])
def test_run_directory_and_engine_agree_on_every_training_setting(field: str, diverged: bool) -> None:
    """train.min_delta was logged "allowed" by the run directory, then refused by the engine."""
    old = load_config(None, [])
    changes = [f"train.{field}={json.dumps(NEW_VALUES[field])}"]
    if field in ("mode", "monitor"):  # one without the other would keep the worst epoch
        changes += ["train.monitor=val_accuracy", "train.mode=max"]
    if field == "batch_size":
        changes.append("train.accumulation_steps=1")
    new = load_config(None, changes)
    status = "diverged" if diverged else "trained"
    breaking, _ = compare_configs(old, new, {"teacher": status}, split_exists=True)
    run_dir_accepts = not any(line.startswith(f"train.{field}:") for line in breaking)
    facts = {"run": {}, "objective": {}, "world_size": 1}
    saved = {**facts, "engine": dataclasses.asdict(old.train)}
    current = {**facts, "engine": dataclasses.asdict(new.train)}
    try:
        check_resume(saved, current, "checkpoint_latest.pt", diverged=diverged)
        engine_accepts = True
    except IncompatibleResumeError as exc:
        engine_accepts = f"engine.{field} " not in str(exc)
    assert run_dir_accepts == engine_accepts, (field, breaking)


def test_the_effective_batch_decides_a_batch_split_change() -> None:
    old = load_config(None, [])
    same = load_config(None, ["train.batch_size=32", "train.accumulation_steps=2"])
    other = load_config(None, ["train.batch_size=32"])
    assert compare_configs(old, same, {"teacher": "trained"}, split_exists=True)[0] == []
    assert compare_configs(old, other, {"teacher": "trained"}, split_exists=True)[0]


def test_a_stage_override_of_the_batch_is_judged_by_the_batch_that_stage_trains_with() -> None:
    old = load_config(None, [])  # train.batch_size 64, accumulation 1
    bigger = load_config(None, ["stage_overrides.teacher.batch_size=256"])
    assert compare_configs(old, bigger, {"teacher": "trained"}, split_exists=True)[0]
    split = load_config(None, ["stage_overrides.teacher.batch_size=32",
                               "stage_overrides.teacher.accumulation_steps=2"])
    assert compare_configs(old, split, {"teacher": "trained"}, split_exists=True)[0] == []


def test_a_key_of_one_stage_breaks_only_that_stage_and_the_stages_distilled_from_it() -> None:
    assert key_rule("stage_overrides.student.lr").stages == ("student",)
    assert key_rule("stage_overrides.student.weight_decay").kind == "training"
    assert key_rule("stage_overrides.assistant.weight_decay").stages == ("assistant", "student")
    assert key_rule("models.student").stages == ("student", "baseline", "direct")
    assert key_rule("models.teacher").stages == ("teacher", "assistant", "student", "direct")
    assert key_rule("distillation.temperature").stages == ("assistant", "student", "direct")
    # another student architecture once only the teacher has trained: allowed
    old, new = load_config(None, []), load_config(None, ["models.student=resnet34"])
    assert compare_configs(old, new, {"teacher": "finished"}, split_exists=True)[0] == []
    assert compare_configs(old, new, {"baseline": "trained"}, split_exists=True)[0]


def test_a_stage_without_a_checkpoint_takes_any_change_and_a_trained_one_refuses_it() -> None:
    old, new = load_config(None, []), load_config(None, ["train.lr=0.01", "data.image_size=12"])
    assert compare_configs(old, new, {"teacher": "fresh"}, split_exists=True)[0] == []
    breaking, _ = compare_configs(old, new, {"teacher": "trained"}, split_exists=True)
    assert [line.split(":")[0] for line in breaking] == ["data.image_size", "train.lr"]


def test_after_a_divergence_the_recovery_settings_may_change_even_with_finished_stages() -> None:
    old = load_config(None, [])
    new = load_config(None, ["train.lr=0.01", "train.grad_clip=1.0", "train.amp=off"])
    status = {"teacher": "finished", "assistant": "diverged"}
    breaking, allowed = compare_configs(old, new, status, split_exists=True)
    assert breaking == [] and all("after the divergence of stage assistant" in line for line in allowed)
    # other settings still break, and without a divergence so does the learning rate
    assert compare_configs(old, load_config(None, ["train.weight_decay=0.01"]), status, split_exists=True)[0]
    assert compare_configs(old, new, {"teacher": "finished"}, split_exists=True)[0]


class DivergesAt(CrossEntropyAt):
    """Cross-entropy whose ``call``-th training step is NaN (what a too high learning rate does
    sooner or later)."""

    def training_step(self, model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor) -> StepOutput:
        diverged = self.due()
        out = super().training_step(model, images, labels)
        return StepOutput(out.logits, out.loss * float("nan"), out.parts) if diverged else out


def _trainer(stage_dir: Path, objective: Any = None, **cfg: Any) -> Trainer:
    return Trainer(tiny_vit(), objective or CrossEntropyObjective(), KeyedTrain(64), PlainEval(16),
                   engine_config(**cfg), stage_dir, device=CPU, seed=0, run_fingerprint=fingerprint())


def test_a_diverged_stage_continues_from_its_checkpoint_with_a_lower_lr_and_clipping(tmp_path: Path) -> None:
    """The divergence message says: lower the lr, clip gradients, then re-run. That must work."""
    with pytest.raises(NonFiniteLossError) as raised:
        _trainer(tmp_path, DivergesAt(6), lr=0.05, epochs=2).fit()  # 4 updates per epoch
    assert "re-run the command with the new setting" in str(raised.value)
    assert json.loads((tmp_path / DIVERGED_FILE).read_text())["step"] == 6
    result = _trainer(tmp_path, lr=0.01, grad_clip=1.0, epochs=2).fit()
    assert result.resumed_from == tmp_path / "checkpoint_latest.pt" and result.epochs_run == 2
    resume = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()
              if '"resume"' in line]
    assert resume[-1]["changed"] == {"lr": [0.05, 0.01], "grad_clip": [None, 1.0]}
    assert not (tmp_path / DIVERGED_FILE).exists()  # recovered: the settings are fixed again
    with pytest.raises(IncompatibleResumeError, match=r"engine\.lr .*only after training diverged"):
        _trainer(tmp_path, lr=0.02, grad_clip=1.0, epochs=3).fit()


def test_a_new_learning_rate_takes_effect_at_once_on_the_recovered_resume(tmp_path: Path) -> None:
    with pytest.raises(NonFiniteLossError):
        _trainer(tmp_path, DivergesAt(6), lr=0.05, epochs=2, scheduler="constant").fit()
    trainer = _trainer(tmp_path, lr=0.01, epochs=2, scheduler="constant")
    trainer.checkpoint_state.resume()
    assert trainer.schedule.current_lr() == pytest.approx(0.01)
