"""``--epochs N`` at or below a configured warm-up trains: the warm-up keeps its share of the
configured run, per stage where a stage has its own; a warm-up the user set with ``--set`` is
never shortened; and a continued run stays consistent with what it trained with."""
from __future__ import annotations

from pathlib import Path

import pytest

from src.cli.train import build_parser, load_run_config, main
from src.config.change_rules import compare_configs
from src.config.schema import RunConfig
from src.config.stage_settings import stage_config
from src.errors import UserError

CNN_CIFAR = ["--config", "cnn_distillation/configs/cifar10.yaml"]  # epochs 200, warm-up 5
VIT_CIFAR = ["--config", "vit_distillation/configs/cifar10.yaml"]  # 100 / 5; teacher 10 / 1


def cli_config(preset: str, argv: list[str], notes: list[str] | None = None) -> RunConfig:
    """The config the training command would run with for ``argv`` (nothing trained)."""
    return load_run_config(preset, build_parser(preset).parse_args(argv), notes)


def test_a_short_try_of_a_shipped_config_keeps_the_warmups_share_and_says_so() -> None:
    notes: list[str] = []
    cfg = cli_config("cnn", [*CNN_CIFAR, "--epochs", "2"], notes)
    assert (cfg.train.epochs, cfg.train.warmup_epochs) == (2, 0.05)  # 5 of 200 epochs
    assert len(notes) == 1 and "train.warmup_epochs 5 -> 0.05 (5 of the configured 200 epochs)" in notes[0]


def test_each_stage_with_its_own_warmup_keeps_its_own_share() -> None:
    notes: list[str] = []
    cfg = cli_config("vit", [*VIT_CIFAR, "--epochs", "1"], notes)
    assert stage_config(cfg, "student").train.warmup_epochs == 0.05  # 5 of 100
    assert stage_config(cfg, "teacher").train.warmup_epochs == 0.1  # its own 1 of 10
    assert len(notes) == 1 and "stage_overrides.teacher.warmup_epochs 1 -> 0.1" in notes[0]


def test_a_warmup_already_shorter_than_the_run_is_left_alone() -> None:
    notes: list[str] = []
    cfg = cli_config("vit", [*VIT_CIFAR, "--epochs", "2"], notes)
    assert stage_config(cfg, "teacher").train.warmup_epochs == 1.0  # 1 < 2: unchanged
    assert cli_config("cnn", [*CNN_CIFAR, "--epochs", "50"]).train.warmup_epochs == 5.0
    assert not any("stage_overrides" in note for note in notes)


def test_a_warmup_set_explicitly_is_never_shortened(tmp_path: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    argv = [*CNN_CIFAR, "--epochs", "2", "--set", "train.warmup_epochs=5", "--output-dir", str(out)]
    assert main("cnn", argv) == 2
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1 and err[0].startswith("error: config key 'train.warmup_epochs'"), err
    assert not out.exists()


def test_without_epochs_flag_a_too_long_warmup_is_still_refused() -> None:
    with pytest.raises(UserError, match="train.warmup_epochs"):
        cli_config("cnn", [*CNN_CIFAR, "--set", "train.epochs=2"])  # --set is explicit, not --epochs


def test_a_continued_run_keeps_the_warmup_it_trained_with() -> None:
    """The fitted warm-up is what config.yaml records: the same command continues, and so does a
    longer --epochs that fits it to the same share (a longer run, like any change of epochs); one
    that leaves the configured warm-up as it is (another share) is refused naming the key, and
    continuing with the saved value set explicitly is accepted."""
    saved = cli_config("cnn", [*CNN_CIFAR, "--epochs", "2"])
    trained = {"teacher": "trained"}
    assert compare_configs(saved, cli_config("cnn", [*CNN_CIFAR, "--epochs", "2"]), trained,
                           split_exists=True) == ([], [])
    breaking, allowed = compare_configs(saved, cli_config("cnn", [*CNN_CIFAR, "--epochs", "4"]), trained,
                                        split_exists=True)
    assert breaking == [] and allowed == ["train.epochs: 2 -> 4", "train.warmup_epochs: 0.05 -> 0.1"]
    breaking, _ = compare_configs(saved, cli_config("cnn", [*CNN_CIFAR, "--epochs", "10"]), trained,
                                  split_exists=True)
    assert len(breaking) == 1 and breaking[0].startswith("train.warmup_epochs: 0.05 -> 5.0")
    kept = cli_config("cnn", [*CNN_CIFAR, "--epochs", "10", "--set", "train.warmup_epochs=0.05"])
    breaking, allowed = compare_configs(saved, kept, trained, split_exists=True)
    assert breaking == [] and allowed == ["train.epochs: 2 -> 10"]


@pytest.mark.slow
def test_a_short_try_continued_with_more_epochs_trains_on(tmp_path: Path) -> None:
    """The engine's checkpoint check agrees with the run directory's: --epochs 1, then 2."""
    argv = ["--epochs", "1", "--subset", "20", "--image-size", "8", "--batch-size", "8", "--device", "cpu",
            "--stages", "baseline", "--set", "models.student=test_resnet", "--set", "report.benchmark=false",
            "--set", "models.small_input=false", "--set", "train.warmup_epochs=0.5",
            "--output-dir", str(tmp_path)]
    assert main("cnn", argv) == 0
    longer = [*argv[:1], "2", *argv[2:]]
    longer[longer.index("train.warmup_epochs=0.5")] = "train.warmup_epochs=1.0"  # the same share of 2
    assert main("cnn", longer) == 0
    assert "epochs_run" in (tmp_path / "baseline" / "result.json").read_text()
