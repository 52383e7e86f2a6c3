"""Bad input a user can fix ends in one `error: ...` line and exit code 2, never a traceback,
and never leaves a run directory that the corrected command can no longer use."""
from __future__ import annotations

from pathlib import Path

import pytest

from src.cli import evaluate
from src.cli.train import build_parser, load_run_config, main
from src.config.loader import load_config
from src.data.build import build_datasets
from src.pipeline.train_stage import save_weights
from src.rundirs.rundir import RunDirectory, compare_configs, prepare_run_directory
from src.rundirs.stage_models import build_model

QUICK = ["--subset", "20", "--epochs", "1", "--image-size", "8", "--device", "cpu", "--stages", "teacher"]


def _error_line(capsys: pytest.CaptureFixture[str]) -> str:
    """The one line the command printed on stderr besides log lines (fails on a traceback)."""
    lines = [line for line in capsys.readouterr().err.splitlines() if line.strip() and " INFO " not in line]
    assert len(lines) == 1 and lines[0].startswith("error: "), lines
    return lines[0]


def test_a_model_typo_is_refused_before_anything_is_written(tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    assert main("cnn", [*QUICK, "--output-dir", str(out), "--set", "models.teacher=resnet999"]) == 2
    assert "error: config key 'models.teacher': unknown model 'resnet999'" in _error_line(capsys)
    assert not out.exists()


def test_a_model_that_cannot_take_the_images_can_be_corrected_in_the_same_output_dir(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    assert main("cnn", [*QUICK, "--output-dir", str(out), "--set", "models.teacher=mixer_s16_224"]) == 2
    assert "model mixer_s16_224 does not run on 8x8 images" in _error_line(capsys)
    # nothing was trained: the corrected command must be accepted, not refused as a breaking change
    fixed = load_run_config("cnn", build_parser("cnn").parse_args([*QUICK, "--output-dir", str(out)]))
    notes = prepare_run_directory(RunDirectory(out), fixed, "auto", write=False)
    assert notes == ["models.teacher: 'mixer_s16_224' -> 'resnet50'"]


def test_architecture_change_breaks_only_once_a_stage_has_started() -> None:
    old, new = load_config(None, []), load_config(None, ["models.teacher=resnet34"])
    breaking, harmless = compare_configs(old, new, {}, split_exists=True)
    assert not breaking and harmless == ["models.teacher: 'resnet50' -> 'resnet34'"]
    breaking, _ = compare_configs(old, new, {"teacher": "trained"}, split_exists=True)
    assert breaking and breaking[0].startswith("models.teacher")
    # the split's settings break once split.json exists, before any stage started
    breaking, _ = compare_configs(old, load_config(None, ["data.subset=50"]), {}, split_exists=True)
    assert breaking


def test_output_dir_below_a_file_is_a_user_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    blocker = tmp_path / "afile"
    blocker.write_text("mine")
    assert main("cnn", [*QUICK, "--output-dir", str(blocker / "run")]) == 2
    assert f"{blocker} is a file, not a folder" in _error_line(capsys)
    assert blocker.read_text() == "mine"


def test_damaged_teacher_weights_file_is_a_user_error(tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    damaged = tmp_path / "teacher.safetensors"
    damaged.write_text("not safetensors")
    argv = [*QUICK, "--output-dir", str(tmp_path / "run"), "--set", f"models.teacher_weights={damaged}"]
    assert main("cnn", argv) == 2
    assert f"weights file {damaged}" in _error_line(capsys)


@pytest.fixture
def split_run(tmp_path: Path) -> Path:
    """A run directory with config.yaml and split.json, as a run leaves it before training."""
    run = RunDirectory(tmp_path / "run")
    cfg = load_config(None, ["data.subset=20", "data.image_size=8", "stages=[teacher]"])
    prepare_run_directory(run, cfg, "auto", write=True)
    build_datasets(cfg.data, run.root, cfg.runtime.seed, write=True)
    return run.root


def test_evaluate_damaged_safetensors_is_a_user_error(split_run: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    damaged = split_run / "teacher" / "model.safetensors"
    damaged.parent.mkdir()
    damaged.write_text("not safetensors")
    base = ["--checkpoint", str(damaged), "--run-dir", str(split_run), "--device", "cpu"]
    assert evaluate.main(base) == 2  # stage read from the file's metadata
    assert "not a readable safetensors file" in _error_line(capsys)
    assert evaluate.main([*base, "--stage", "teacher"]) == 2  # straight to loading the weights
    assert f"weights {damaged} do not fit" in _error_line(capsys)


def test_evaluate_directory_and_zero_batch_are_user_errors(split_run: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    assert evaluate.main(["--checkpoint", str(split_run), "--device", "cpu"]) == 2
    assert "is a directory" in _error_line(capsys)
    config = split_run / "config.yaml"
    assert evaluate.main(["--checkpoint", str(config), "--run-dir", str(split_run), "--batch-size", "0"]) == 2
    assert "--batch-size must be at least 1" in _error_line(capsys)


def test_broken_image_in_imagefolder_is_a_user_error_and_writes_nothing(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from PIL import Image

    for label in ("a", "b"):
        (tmp_path / "data" / "train" / label).mkdir(parents=True)
        for i in range(6):
            Image.new("RGB", (10, 10), (40 * i, 0, 0)).save(tmp_path / "data" / "train" / label / f"{i}.png")
    broken = tmp_path / "data" / "train" / "a" / "broken.png"
    broken.write_text("not an image")
    out = tmp_path / "run"
    argv = [*QUICK, "--dataset", "imagefolder", "--data-dir", str(tmp_path / "data"),
            "--output-dir", str(out), "--set", "train.warmup_epochs=0"]
    assert main("cnn", argv) == 2
    assert f"cannot read image {broken}" in _error_line(capsys)
    # no split.json counting the broken file: after removing it, the same command may use this folder
    assert not (out / "split.json").exists()


@pytest.mark.parametrize("argv", [["--device", "tpu"], ["--epochs", "abc"], ["--stages"]])
def test_bad_flag_is_one_error_line_not_a_usage_block(argv: list[str],
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main("vit", argv)
    assert exit_info.value.code == 2
    assert _error_line(capsys).endswith("(see --help)")
    with pytest.raises(SystemExit) as exit_info:
        evaluate.main(["--checkpoint", "x.pt", "--split", "holdout"])
    assert exit_info.value.code == 2
    assert "invalid choice: 'holdout'" in _error_line(capsys)


def test_evaluate_weights_of_another_architecture_name_the_mismatch(
        split_run: Path, capsys: pytest.CaptureFixture[str]) -> None:
    cfg = RunDirectory(split_run).saved_config()
    assert cfg is not None
    weights = split_run / "teacher" / "model.safetensors"
    weights.parent.mkdir()
    save_weights(build_model(cfg, "teacher", 10, initial=False), weights, {"stage": "teacher"})
    argv = ["--checkpoint", str(weights), "--stage", "student", "--device", "cpu"]
    assert evaluate.main(argv) == 2
    line = _error_line(capsys)
    assert line.startswith(f"error: weights {weights} do not fit this model: ")
    assert "key(s) in state_dict" in line or "size mismatch" in line  # the detail, not torch's bare header


def test_negative_seed_is_a_config_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main("cnn", [*QUICK, "--seed", "-1", "--output-dir", str(tmp_path / "run")]) == 2
    assert _error_line(capsys) == "error: config key 'runtime.seed': must be 0 or more, got -1"
    assert not (tmp_path / "run").exists()


def test_resume_from_a_directory_says_it_is_one(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    stage_dir = tmp_path / "old" / "teacher"
    stage_dir.mkdir(parents=True)
    assert main("cnn", [*QUICK, "--resume", str(stage_dir), "--output-dir", str(tmp_path / "run")]) == 2
    assert _error_line(capsys).startswith(f"error: --resume {stage_dir} is a directory")


def test_subset_of_one_is_a_config_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = [*QUICK, "--subset", "1", "--output-dir", str(tmp_path / "run")]
    assert main("cnn", argv) == 2
    assert "data.subset" in _error_line(capsys)
    assert not (tmp_path / "run").exists()
