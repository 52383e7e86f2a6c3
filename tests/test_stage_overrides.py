"""``stage_overrides.<stage>.<train key>``: one stage's training settings, validated under its own
key, breaking on resume only for that stage, and used by the ViT CIFAR configs. (A real run with
an override: tests/test_seeds_and_reuse.py.)"""
from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from src.cli.train import default_config_path
from src.config.loader import config_from_dict, dump_config, load_config
from src.config.presets import PRESETS
from src.config.stage_settings import stage_config
from src.errors import IncompatibleResumeError, UserError
from src.pipeline.train_stage import run_fingerprint
from src.rundirs.rundir import RunDirectory, prepare_run_directory


def test_an_override_changes_its_stage_only_and_config_yaml_lists_only_what_was_set() -> None:
    cfg = load_config(None, ["train.lr=0.1", "stage_overrides.teacher.lr=0.001",
                             "stage_overrides.teacher.optimizer=adamw"])
    teacher, student = stage_config(cfg, "teacher"), stage_config(cfg, "student")
    assert (teacher.train.lr, teacher.train.optimizer) == (0.001, "adamw")
    assert (student.train.lr, student.train.optimizer) == (0.1, "sgd")
    assert teacher.train.epochs == cfg.train.epochs
    saved = yaml.safe_load(dump_config(cfg))
    assert saved["stage_overrides"] == {"teacher": {"lr": 0.001, "optimizer": "adamw"}}
    assert config_from_dict(saved) == cfg
    # a stage's checkpoint identity (run_fingerprint, plus the effective train settings the engine
    # compares) holds its own overrides and none of another stage's
    plain = load_config(None, ["train.lr=0.1"])
    assert run_fingerprint(student, "student") == run_fingerprint(stage_config(plain, "student"), "student")
    assert student.train == stage_config(plain, "student").train
    assert teacher.train != stage_config(plain, "teacher").train


def test_a_bad_override_is_reported_under_the_stages_key_with_advice_that_works() -> None:
    with pytest.raises(UserError, match=r"'stage_overrides\.teacher\.lr': must be positive"):
        load_config(None, ["stage_overrides.teacher.lr=0"])
    with pytest.raises(UserError, match=r"unknown config key 'stage_overrides\.teacher\.lrr'"):
        load_config(None, ["stage_overrides.teacher.lrr=0.1"])
    with pytest.raises(UserError) as caught:
        load_config(None, ["train.warmup_epochs=2", "stage_overrides.assistant.epochs=2"])
    message = str(caught.value)
    assert "stage_overrides.assistant.warmup_epochs" in message
    advice = message.split("--set ")[1].rstrip(")")
    fixed = load_config(None, ["train.warmup_epochs=2", "stage_overrides.assistant.epochs=2", advice])
    assert stage_config(fixed, "assistant").train.warmup_epochs == 0


def test_an_override_change_breaks_a_resume_only_for_its_own_started_stage(tmp_path: Path) -> None:
    run = RunDirectory(tmp_path / "run")
    prepare_run_directory(run, load_config(None, ["stage_overrides.teacher.lr=0.001"]), "auto", write=True)
    run.split_path.write_text("{}")  # the teacher trained on the run's split
    run.stage_dir("teacher").mkdir()
    (run.stage_dir("teacher") / "checkpoint_latest.pt").write_bytes(b"state")
    changed = load_config(None, ["stage_overrides.teacher.lr=0.001", "stage_overrides.student.lr=0.01",
                                 "stage_overrides.teacher.epochs=3"])
    notes = prepare_run_directory(run, changed, "auto", write=False)
    assert any(n.startswith("stage_overrides.student.lr") for n in notes)
    assert any(n.startswith("stage_overrides.teacher.epochs") for n in notes)  # harmless, as train.epochs
    refused = r"stage_overrides\.teacher\.lr: 0\.001 -> 0\.002 \(stage teacher already trained"
    with pytest.raises(IncompatibleResumeError, match=refused):
        prepare_run_directory(run, load_config(None, ["stage_overrides.teacher.lr=0.002"]), "auto",
                              write=False)


@pytest.mark.parametrize("name", ["cifar10", "cifar100"])
def test_vit_cifar_configs_fine_tune_the_pretrained_teacher_briefly_at_a_low_rate(name: str) -> None:
    cfg = load_config(PRESETS["vit"].config_path(name))
    assert cfg.models.pretrained
    teacher, student = stage_config(cfg, "teacher").train, stage_config(cfg, "student").train
    assert teacher.lr < 0.2 * student.lr and teacher.epochs <= student.epochs / 5


def test_the_epochs_flag_is_every_stages_length_and_set_can_still_give_one_stage_its_own() -> None:
    """make run's config trains its teacher 15 epochs (stage_overrides); ``--epochs 1`` is a quick
    one-epoch run all the same, and ``--set`` after the flag still sets one stage."""
    config = default_config_path("cnn", None)
    default = load_config(config)
    epochs = {stage: stage_config(default, stage).train.epochs for stage in ("teacher", "student")}
    assert epochs == {"teacher": 15, "student": 5}
    quick = load_config(config, [], {"train.epochs": 1})
    assert {stage_config(quick, stage).train.epochs for stage in ("teacher", "assistant", "student")} == {1}
    mixed = load_config(config, ["stage_overrides.teacher.epochs=3"], {"train.epochs": 1})
    epochs = {stage: stage_config(mixed, stage).train.epochs for stage in ("teacher", "student")}
    assert epochs == {"teacher": 3, "student": 1}
