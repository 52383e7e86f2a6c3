"""The shared command line and the run directory's resume rules (no training here)."""
from __future__ import annotations

import signal
from pathlib import Path

import pytest
import torch

from src.cli import train as cli
from src.cli.train import build_parser, default_config_path, load_run_config, main
from src.config.loader import dump_config, load_config
from src.errors import IncompatibleResumeError, TrainingInterrupted, UserError
from src.pipeline.runner import resolve_device, resume_target
from src.rundirs.rundir import RunDirectory, check_stage_plan, prepare_run_directory
from src.utils.training_guards import NonFiniteLossError


def parse(preset: str, *argv: str):  # noqa: ANN201 - argparse.Namespace
    return build_parser(preset).parse_args(list(argv))


def test_flags_override_yaml_and_set_overrides_flags() -> None:
    args = parse("cnn", "--epochs", "2", "--lr", "0.2", "--set", "train.lr=0.3",
                 "--stages", "teacher,baseline", "--subset", "30", "--device", "cpu", "--vram-budget", "4")
    cfg = load_run_config("cnn", args)
    assert cfg.train.epochs == 2 and cfg.train.lr == 0.3
    assert cfg.stages == ["teacher", "baseline"] and cfg.data.subset == 30
    assert cfg.runtime.device == "cpu" and cfg.runtime.vram_budget_gb == 4.0
    assert cfg.train.batch_size == load_config(default_config_path("cnn", None)).train.batch_size


def test_dataset_flag_picks_that_dataset_config() -> None:
    assert default_config_path("vit", "cifar10").name == "cifar10.yaml"
    assert default_config_path("vit", None).name == "digits.yaml"
    assert default_config_path("cnn", "imagefolder").name == "cifar10.yaml"  # photos: the GPU-sized one


def test_any_config_runs_under_any_entry_script() -> None:
    vit = default_config_path("vit", None)
    cfg = load_run_config("cnn", parse("cnn", "--config", str(vit)))
    models = (cfg.models.teacher, cfg.models.assistant, cfg.models.student)
    assert models == ("vit_base", "vit_small", "vit_tiny")
    assert cfg == load_config(vit)  # the entry script only picks the default config


def test_an_old_config_with_the_retired_family_key_loads_with_a_note(tmp_path: Path) -> None:
    vit = default_config_path("vit", None)
    old = tmp_path / "old.yaml"
    old.write_text(vit.read_text(encoding="utf-8").replace("models:\n", "models:\n  family: vit\n"),
                   encoding="utf-8")
    notes: list[str] = []
    cfg = load_run_config("cnn", parse("cnn", "--config", str(old), "--set", "models.family=cnn"), notes)
    assert cfg == load_config(vit)
    assert notes == [f"{old}: config key 'models.family' ('cnn') is retired and ignored: any timm model "
                     "fits any role; the entry script only picks the default config"]
    assert "family" not in dump_config(cfg)  # never written into a new config.yaml


def test_user_errors_print_one_line_and_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main("cnn", ["--output-dir", str(tmp_path / "run"), "--set", "train.lrr=1"])
    err = capsys.readouterr().err
    assert code == 2
    assert err == "error: unknown config key 'train.lrr' (did you mean 'train.lr'?)\n"
    assert not (tmp_path / "run").exists()  # nothing was created for a rejected command


def test_bad_flag_value_is_an_argparse_error() -> None:
    with pytest.raises(SystemExit) as info:
        parse("vit", "--epochs", "many")
    assert info.value.code == 2


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-CUDA message")
def test_cuda_without_cuda_is_a_user_error() -> None:
    with pytest.raises(UserError, match="no CUDA device is available"):
        resolve_device("cuda")
    assert resolve_device("auto").type == "cpu"


def test_resume_path_must_be_a_file(tmp_path: Path) -> None:
    assert resume_target("auto") is None and resume_target("never") is None
    with pytest.raises(UserError, match="no such checkpoint file"):
        resume_target(str(tmp_path / "checkpoint_latest.pt"))


def test_stage_plan_needs_each_teacher() -> None:
    check_stage_plan(["teacher", "assistant", "student"], finished=[])
    check_stage_plan(["student"], finished=["teacher", "assistant"])
    with pytest.raises(UserError, match="'student' distils from 'assistant'.*--stages assistant,student"):
        check_stage_plan(["teacher", "student"], finished=[])
    with pytest.raises(UserError, match="stage 'direct' distils from 'teacher'"):
        check_stage_plan(["direct"], finished=["assistant"])


def _started_run(tmp_path: Path, *overrides: str) -> tuple[RunDirectory, object]:
    run = RunDirectory(tmp_path / "run")
    cfg = load_config(None, [f"data.data_dir={tmp_path}", *overrides])  # absolute, as config.yaml holds it
    prepare_run_directory(run, cfg, "auto", write=True)
    (run.root / "split.json").write_text("{}")
    (run.stage_dir("teacher")).mkdir()
    (run.stage_dir("teacher") / "checkpoint_latest.pt").write_bytes(b"state")
    return run, cfg


def test_resume_refuses_changes_that_break_the_run(tmp_path: Path) -> None:
    run, _ = _started_run(tmp_path)
    before = run.config_path.read_text()
    for change, key in (("data.image_size=24", "data.image_size"),
                        ("models.teacher=resnet34", "models.teacher"),
                        ("runtime.seed=7", "runtime.seed"), ("train.lr=0.5", "train.lr")):
        with pytest.raises(IncompatibleResumeError, match=rf"differs in {key}"):
            prepare_run_directory(run, load_config(None, [change]), "auto", write=True)
    assert run.config_path.read_text() == before


def test_resume_accepts_harmless_changes_and_records_them(tmp_path: Path) -> None:
    run, _ = _started_run(tmp_path)
    # epochs and patience are harmless; distillation settings too while no KD stage has started
    new = load_config(None, [f"data.data_dir={tmp_path}", "train.epochs=20", "train.patience=3",
                             "distillation.temperature=2"])
    notes = prepare_run_directory(run, new, "auto", write=True)
    assert any(n.startswith("train.epochs: 10 -> 20") for n in notes)
    assert any(n.startswith("distillation.temperature") for n in notes)
    assert run.saved_config() == new
    assert "# changed on resume: train.epochs: 10 -> 20" in run.config_path.read_text()


def test_distillation_change_breaks_a_started_kd_stage(tmp_path: Path) -> None:
    run, _ = _started_run(tmp_path)
    run.stage_dir("assistant").mkdir()
    (run.stage_dir("assistant") / "checkpoint_latest.pt").write_bytes(b"state")
    with pytest.raises(IncompatibleResumeError,
                       match="distillation.temperature.*stage assistant already trained"):
        prepare_run_directory(run, load_config(None, ["distillation.temperature=2"]), "auto", write=True)


def test_resume_never_keeps_user_data(tmp_path: Path) -> None:
    run, cfg = _started_run(tmp_path)
    with pytest.raises(UserError, match="not empty and --resume never.*another --output-dir"):
        prepare_run_directory(run, cfg, "never", write=True)
    assert (run.stage_dir("teacher") / "checkpoint_latest.pt").read_bytes() == b"state"
    fresh = RunDirectory(tmp_path / "fresh")
    prepare_run_directory(fresh, cfg, "never", write=True)
    assert fresh.saved_config() == cfg


@pytest.mark.parametrize(
    ("raised", "code", "line"),
    [
        (TrainingInterrupted(signal.SIGTERM, "interrupted by SIGTERM; checkpoint saved"), 143,
         "interrupted by SIGTERM; checkpoint saved\n"),
        (TrainingInterrupted(signal.SIGINT, "interrupted by SIGINT; checkpoint saved"), 130,
         "interrupted by SIGINT; checkpoint saved\n"),
        (NonFiniteLossError(step=7, value=float("nan")), 3, "error: non-finite loss at step 7: nan."),
        (KeyboardInterrupt(), 130, "interrupted: stopped by Ctrl-C"),
    ],
)
def test_exit_codes_of_the_contract(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
                                    raised: BaseException, code: int, line: str) -> None:
    def stopped(preset: str, argv: object) -> None:
        raise raised

    monkeypatch.setattr(cli, "run", stopped)  # the pipeline's own signals are tested in test_trainer
    assert cli.main("cnn", []) == code
    assert capsys.readouterr().err.startswith(line)
