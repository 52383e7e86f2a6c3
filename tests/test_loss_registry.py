"""A distillation loss is one registration: a toy loss added here, through ``LOSSES`` alone, gets
its config section (keys, defaults, rules, config.yaml) and trains a KD stage through the real
command line; and the shipped losses' keys and checkpoint fingerprints keep their layout."""
from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
import yaml

from src.cli.train import main
from src.config.loader import dump_config, flatten, load_config, schema_keys
from src.distillation.distiller import DistillationObjective
from src.distillation.losses import Parts
from src.distillation.registry import LOSSES, LossInputs, LossSettings, LossSpec, require_weights
from src.distillation.settings import DistillationConfig
from src.engine.objective import cross_entropy_with_part
from src.engine.resume_rules import check_resume
from src.errors import IncompatibleResumeError, UserError

TOY = "l2"
# every role a resnet18 at the digits' 8 px, one epoch of a few images: this is about the wiring
TINY = ["--epochs", "1", "--subset", "16", "--batch-size", "8", "--image-size", "8", "--device", "cpu",
        "--stages", "teacher,direct", "--set", "models.teacher=resnet18", "--set", "report.benchmark=false",
        "--set", "train.log_interval=1"]


@dataclass
class L2Settings(LossSettings):
    """The toy's one setting: the weight of its teacher term."""

    weight: float = 1.0

    def check(self) -> None:
        require_weights(self, "weight")


def l2_loss(x: LossInputs, settings: L2Settings,
            scheduled: Mapping[str, float]) -> tuple[torch.Tensor, Parts]:
    """CE + weight * squared L2 distance between the softened class distributions."""
    student = x.student.float()
    p_s = F.softmax(student / x.temperature, dim=1)
    p_t = F.softmax(x.teacher.float() / x.temperature, dim=1)
    l2 = (p_s - p_t).pow(2).sum(dim=1).mean()
    ce, plain = cross_entropy_with_part(student, x.labels, x.label_smoothing)
    return ce + settings.weight * l2, {"ce": plain, "kd": l2.detach(), "l2": l2.detach()}


@pytest.fixture
def toy() -> Iterator[str]:
    """The toy loss, registered for one test."""
    LOSSES.register(TOY, LossSpec(L2Settings, l2_loss))
    try:
        yield TOY
    finally:
        LOSSES.unregister(TOY)


def test_a_registered_loss_gets_its_config_section(toy: str) -> None:
    assert "distillation.l2.weight" in schema_keys()
    cfg = load_config(None, ["distillation.loss=l2", "distillation.l2.weight=0.25"])
    assert cfg.distillation.settings() == L2Settings(weight=0.25)
    assert flatten(cfg)["distillation.l2.weight"] == 0.25
    assert yaml.safe_load(dump_config(cfg))["distillation"]["l2"] == {"weight": 0.25}
    with pytest.raises(UserError, match=r"config key 'distillation\.l2\.weight': must be 0 or a positive"):
        load_config(None, ["distillation.l2.weight=-1"])
    with pytest.raises(UserError, match=r"unknown config key 'distillation\.l2\.weigth' \(did you mean"):
        load_config(None, ["distillation.l2.weigth=1"])


def test_an_unknown_loss_lists_the_registered_ones(toy: str) -> None:
    with pytest.raises(UserError) as info:
        load_config(None, ["distillation.loss=fitnet"])
    assert str(info.value) == ("config key 'distillation.loss': unknown distillation loss 'fitnet': "
                               "choose one of kd, dkd, dist, l2")


def test_the_objective_trains_with_the_registered_loss(toy: str) -> None:
    torch.manual_seed(0)
    teacher, student = torch.nn.Linear(6, 3), torch.nn.Linear(6, 3)
    config = DistillationConfig(loss=TOY, temperature=2.0, sections={TOY: L2Settings(weight=3.0)})
    objective = DistillationObjective(teacher, config)
    images, labels = torch.randn(5, 6), torch.tensor([0, 1, 2, 0, 1])
    out = objective.training_step(student, images, labels)
    with torch.no_grad():
        expected, _ = l2_loss(LossInputs(student(images), teacher(images), labels, 2.0, False, 0.0),
                              L2Settings(weight=3.0), {})
    torch.testing.assert_close(out.loss.detach(), expected)
    assert set(out.parts) == {"ce", "kd", "l2"}
    assert objective.fingerprint()["distillation"]["l2"] == {"weight": 3.0}


def test_the_shipped_losses_keep_the_layout_saved_runs_hold() -> None:
    """config.yaml files and checkpoints saved by earlier versions hold exactly this layout; a
    resume compares it key by key, so it must not move."""
    defaults = {"loss": "kd", "logit_standardization": False, "temperature": 4.0,
                "alpha_start": 0.9, "alpha_end": 0.5,
                "dkd": {"alpha": 1.0, "beta": 8.0, "ce_weight": 1.0, "warmup_fraction": 20 / 240},
                "dist": {"beta": 1.0, "gamma": 1.0, "ce_weight": 1.0}}
    objective = DistillationObjective(torch.nn.Linear(2, 2))
    assert objective.fingerprint()["distillation"] == defaults
    assert list(yaml.safe_load(dump_config(load_config(None)))["distillation"]) == list(defaults)
    keys = [key for key in schema_keys() if key.startswith("distillation.")]
    assert keys == ["distillation.loss", "distillation.logit_standardization", "distillation.temperature",
                    "distillation.alpha_start", "distillation.alpha_end", "distillation.dkd.alpha",
                    "distillation.dkd.beta", "distillation.dkd.ce_weight", "distillation.dkd.warmup_fraction",
                    "distillation.dist.beta", "distillation.dist.gamma", "distillation.dist.ce_weight"]


def test_a_checkpoint_saved_before_a_loss_was_registered_still_matches(toy: str) -> None:
    """The new loss's section appears in the fingerprint; the settings both sides record decide."""
    facts = {"run": {}, "engine": {}, "world_size": 1}
    now = DistillationObjective(torch.nn.Linear(2, 2)).fingerprint()
    saved = json.loads(json.dumps(now))
    del saved["distillation"][TOY]
    assert check_resume({**facts, "objective": saved}, {**facts, "objective": now}, "ckpt") == {}
    saved["distillation"]["temperature"] = 2.0
    changed = r"objective\.distillation\.temperature \(2\.0 -> 4\.0\)"
    with pytest.raises(IncompatibleResumeError, match=changed):
        check_resume({**facts, "objective": saved}, {**facts, "objective": now}, "ckpt")


@pytest.mark.slow
def test_a_toy_loss_trains_a_kd_stage_through_the_command_line(toy: str, tmp_path: Path) -> None:
    out = tmp_path / "run"
    args = ["--output-dir", str(out), *TINY, "--set", f"distillation.loss={TOY}",
            "--set", f"distillation.{TOY}.weight=0.5"]
    assert main("cnn", args) == 0
    saved = yaml.safe_load((out / "config.yaml").read_text())["distillation"]
    assert saved["loss"] == TOY and saved[TOY] == {"weight": 0.5}
    records = [json.loads(line) for line in (out / "direct" / "metrics.jsonl").read_text().splitlines()]
    assert any(TOY in record for record in records), "the toy's own part is logged per interval"
    assert any(record.get("event") == "epoch" and f"train_{TOY}" in record for record in records)
    assert json.loads((out / "direct" / "result.json").read_text())["stage"] == "direct"


@pytest.mark.slow
def test_a_kd_stage_trained_before_a_loss_was_registered_resumes_after(tmp_path: Path) -> None:
    out = tmp_path / "run"
    assert main("cnn", ["--output-dir", str(out), *TINY]) == 0
    (out / "direct" / "result.json").unlink()  # continue the finished stage with one more epoch
    LOSSES.register(TOY, LossSpec(L2Settings, l2_loss))
    try:
        assert main("cnn", ["--output-dir", str(out), *TINY, "--epochs", "2"]) == 0
    finally:
        LOSSES.unregister(TOY)
    assert "resuming direct at epoch 2" in (out / "pipeline.log").read_text()
    assert json.loads((out / "direct" / "result.json").read_text())["epochs_run"] == 2
