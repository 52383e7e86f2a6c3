"""Mistakes around the run directory: each ends in one ``error:`` line (exit 2) or is fixed in
place by the corrected command, and nothing of the user's, or already trained, is lost."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

from src.cli.train import main
from src.engine.checkpoint import CheckpointStore

REPO = Path(__file__).resolve().parents[1]
# timm's smallest ResNet (a 4.5 MB checkpoint) as the baseline stage: every run here takes seconds
QUICK = ["--subset", "30", "--epochs", "1", "--image-size", "8", "--device", "cpu", "--stages", "baseline",
         "--set", "models.student=test_resnet", "--set", "models.small_input=false"]


def _error(capsys: pytest.CaptureFixture[str]) -> str:
    err = capsys.readouterr().err.splitlines()
    assert not any("Traceback" in line for line in err), err
    (line,) = [line for line in err if line.startswith("error:")]
    return line


def test_a_folder_that_is_not_a_run_is_refused_and_left_as_it_was(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    mine = tmp_path / "notes"
    mine.mkdir()
    (mine / "summary.md").write_text("my own summary")
    assert main("cnn", [*QUICK, "--output-dir", str(mine)]) == 2
    assert "already holds files (summary.md) and is not a kd-pipeline run" in _error(capsys)
    assert sorted(p.name for p in mine.iterdir()) == ["summary.md"]
    assert (mine / "summary.md").read_text() == "my own summary"


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("finished") / "run"  # conftest undoes main()'s logging per module
    assert main("cnn", [*QUICK, "--output-dir", str(out), "--epochs", "2"]) == 0
    return out


def test_a_run_without_its_config_or_split_is_refused_not_reused(finished_run: Path, tmp_path: Path,
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """The finished stage would have been reused under a config nobody checked, or next to stages
    trained on a freshly drawn split."""
    import shutil

    for lost, message in (("config.yaml", "holds trained stages (baseline) but no config.yaml"),
                          ("split.json", "split.json is missing, but stage baseline trained on the split")):
        copy = tmp_path / lost
        shutil.copytree(finished_run, copy)
        (copy / lost).unlink()
        assert main("cnn", [*QUICK, "--output-dir", str(copy), "--lr", "0.5"]) == 2
        assert message in _error(capsys)
        assert not (copy / lost).exists()


def test_a_finished_stage_keeps_one_training_checkpoint_and_best_weights(finished_run: Path) -> None:
    """Two epochs leave latest, previous and best while the stage trains; once finished, one full
    training state (latest) and the best weights once (model.safetensors)."""
    stage = finished_run / "baseline"
    kept = sorted(p.name for p in stage.glob("checkpoint_*.pt"))
    assert kept == ["checkpoint_latest.pt"] and (stage / "model.safetensors").is_file()
    assert not list(finished_run.rglob("*.tmp")) and not (finished_run / ".kd-pipeline.lock").exists()


def test_a_tilde_in_output_dir_means_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.chdir(tmp_path)
    assert main("cnn", [*QUICK, "--output-dir=~/runs/x"]) == 0  # the shell leaves "~" after "=" alone
    assert (tmp_path / "home" / "runs" / "x" / "baseline" / "curves.png").is_file()
    assert not (tmp_path / "~").exists()


def test_batch_size_one_with_batch_norm_is_refused_and_the_corrected_command_runs_there(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    assert main("cnn", [*QUICK, "--batch-size", "1", "--output-dir", str(out)]) == 2
    assert "--batch-size 1: ResNet has BatchNorm layers" in _error(capsys)
    assert main("cnn", [*QUICK, "--batch-size", "2", "--output-dir", str(out)]) == 0


def test_a_stage_that_diverged_before_its_first_checkpoint_reruns_with_a_sane_lr(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    assert main("cnn", [*QUICK, "--lr", "1e30", "--batch-size", "4", "--output-dir", str(out)]) == 3
    line = _error(capsys)
    assert "non-finite loss" in line and "lower --lr" in line and "re-run the command" in line
    assert main("cnn", [*QUICK, "--lr", "0.002", "--batch-size", "4", "--output-dir", str(out)]) == 0
    assert "train.lr: 1e+30 -> 0.002" in (out / "config.yaml").read_text()


def _unfinish(run: Path, copy: Path) -> Path:
    """A copy of ``run`` whose stage has a checkpoint but no result yet (interrupted at an epoch end)."""
    import shutil

    shutil.copytree(run, copy)
    (copy / "baseline" / "result.json").unlink()
    return copy


def test_settings_both_checks_allow_are_accepted_mid_stage(finished_run: Path, tmp_path: Path) -> None:
    """train.min_delta was logged "allowed" by the run directory, then refused by the engine; a
    batch split with the same effective batch was refused by the run directory, allowed by the engine."""
    out = _unfinish(finished_run, tmp_path / "run")
    argv = [*QUICK, "--output-dir", str(out), "--epochs", "3", "--set", "train.min_delta=0.1",
            "--batch-size", "16", "--set", "train.accumulation_steps=2"]
    assert main("cnn", argv) == 0
    assert pd.read_csv(out / "baseline" / "epochs.csv")["epoch"].tolist() == [1, 2, 3]


@pytest.mark.parametrize("damage", ["missing", "garbage"])
def test_a_lost_epochs_csv_is_rebuilt_from_the_checkpoint(finished_run: Path, tmp_path: Path,
                                                          damage: str) -> None:
    out = _unfinish(finished_run, tmp_path / "run")
    table = out / "baseline" / "epochs.csv"
    before = pd.read_csv(table)
    if damage == "missing":
        table.unlink()
    else:
        table.write_text("garbage\n1,2\n")
    assert main("cnn", [*QUICK, "--output-dir", str(out), "--epochs", "3"]) == 0
    after = pd.read_csv(table)
    assert after["epoch"].tolist() == [1, 2, 3]
    pd.testing.assert_frame_equal(after.iloc[:2], before)
    assert (out / "baseline" / "epochs.csv.damaged").exists() == (damage == "garbage")


def test_the_advice_for_a_checkpoint_that_cannot_be_used_works(finished_run: Path, tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    """It used to say "use --resume never", which is refused for every non-empty run directory."""
    out = _unfinish(finished_run, tmp_path / "run")
    (out / "baseline" / "checkpoint_latest.pt").write_bytes(b"damaged")
    assert main("cnn", [*QUICK, "--output-dir", str(out)]) == 2
    line = _error(capsys)
    assert "--resume never" not in line and f"delete {out / 'baseline'} to train the stage again" in line
    import shutil

    shutil.rmtree(out / "baseline")
    assert main("cnn", [*QUICK, "--output-dir", str(out)]) == 0


def test_a_second_run_in_the_same_folder_is_refused_naming_the_first(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from src.rundirs.lock import RunLock

    out = tmp_path / "run"
    with RunLock(out):
        assert main("cnn", [*QUICK, "--output-dir", str(out)]) == 2
        line = _error(capsys)
        assert f"(pid {os.getpid()} on " in line and f"is using {out}; wait for it to finish" in line
    assert not out.exists()  # the refused run wrote nothing, and the lock leaves no folder behind


def test_without_flock_the_run_goes_on_unlocked_with_a_warning(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    """Windows has no fcntl: the lock must not crash the import or the run, and must say so."""
    import src.rundirs.lock as lock

    monkeypatch.setattr(lock, "fcntl", None)
    with caplog.at_level("WARNING", logger="kd_pipeline.lock"), lock.RunLock(tmp_path / "run"):
        assert (tmp_path / "run").is_dir()
    assert "no file locking on this platform" in caplog.text


def test_the_lock_of_a_killed_process_is_taken_over(tmp_path: Path) -> None:
    from src.rundirs.lock import LOCK_FILE, RunLock

    out = tmp_path / "run"
    hold = ("import sys, time; from pathlib import Path; from src.rundirs.lock import RunLock\n"
            "with RunLock(Path(sys.argv[1])):\n    print('locked', flush=True); time.sleep(120)")
    holder = subprocess.Popen([sys.executable, "-c", hold, str(out)], cwd=REPO,
                              env={**os.environ, "PYTHONPATH": str(REPO)}, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(Exception, match=f"pid {holder.pid} "):
            RunLock(out).__enter__()
        holder.send_signal(signal.SIGKILL)  # no clean-up: its info file stays behind
        holder.wait(timeout=30)
        assert json.loads((out / LOCK_FILE).read_text())["pid"] == holder.pid
        assert main("cnn", [*QUICK, "--output-dir", str(out)]) == 0
        assert not (out / LOCK_FILE).exists()
    finally:
        holder.kill()


def test_evaluate_scores_a_finished_stage_best_checkpoint_from_its_weights_file(
        finished_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """checkpoint_best.pt is not kept once a stage finished: evaluate.py scores the same best
    weights from model.safetensors, and says so."""
    import shutil

    from src.cli import evaluate

    copy = tmp_path / "run"
    shutil.copytree(finished_run, copy)
    CheckpointStore(copy / "baseline").prune(0)  # train.keep_checkpoints=0: no full state at all
    assert not list((copy / "baseline").glob("checkpoint_*.pt"))
    scores, notes = [], []
    for name in ("checkpoint_best.pt", "model.safetensors"):
        assert evaluate.main(["--checkpoint", str(copy / "baseline" / name), "--device", "cpu"]) == 0
        out, err = capsys.readouterr()
        scores.append(json.loads(out)["accuracy"])
        notes.append("note: checkpoint_best.pt is not kept once a stage has finished; scoring" in err)
    assert notes == [True, False]
    result = json.loads((copy / "baseline" / "result.json").read_text())
    assert scores[0] == scores[1] == result["test"]["accuracy"]


def test_an_output_dir_that_cannot_be_created_is_one_error_line(tmp_path: Path,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / ("x" * 300)  # longer than any file system allows for one name
    assert main("cnn", [*QUICK, "--output-dir", str(out)]) == 2
    assert _error(capsys) == f"error: cannot create --output-dir {out}: File name too long"


def test_one_training_sample_per_process_with_batch_norm_is_refused() -> None:
    import torch
    from engine_fixtures import KeyedTrain, PlainEval, engine_config, fingerprint, tiny_cnn

    from src.engine.objective import CrossEntropyObjective
    from src.engine.trainer import Trainer
    from src.errors import UserError

    with pytest.raises(UserError, match="each process gets 1 training sample"):
        Trainer(tiny_cnn(), CrossEntropyObjective(), KeyedTrain(1), PlainEval(4), engine_config(),
                Path("unused"), device=torch.device("cpu"), seed=0, run_fingerprint=fingerprint())


@pytest.mark.slow
def test_a_deleted_teacher_retrained_to_the_same_weights_keeps_the_assistant_resumable(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """weights_sha256 hashed the safetensors file, whose metadata order differs from one write to
    the next: the retrained teacher's identical weights no longer matched the assistant's checkpoint."""
    import shutil

    out = tmp_path / "run"
    argv = [*QUICK, "--output-dir", str(out), "--stages", "teacher,assistant",
            "--set", "models.teacher=test_resnet", "--set", "models.assistant=test_resnet"]
    assert main("cnn", argv) == 0
    recorded = json.loads((out / "teacher" / "result.json").read_text())["weights_sha256"]
    (out / "assistant" / "result.json").unlink()  # the assistant is mid-stage, from its checkpoint on
    (out / "teacher" / "model.safetensors").unlink()
    assert main("cnn", argv) == 2
    assert f"delete {out / 'teacher'} and re-run the training command" in _error(capsys)
    shutil.rmtree(out / "teacher")
    assert main("cnn", argv) == 0
    assert json.loads((out / "teacher" / "result.json").read_text())["weights_sha256"] == recorded
    assert "resuming assistant at epoch 2" in (out / "pipeline.log").read_text()


def test_a_refusal_offers_only_fixes_that_work(finished_run: Path,
                                               capsys: pytest.CaptureFixture[str]) -> None:
    assert main("cnn", [*QUICK, "--output-dir", str(finished_run), "--subset", "50"]) == 2
    line = _error(capsys)
    assert "data.subset: 30 -> 50 (split.json was made with the old value)" in line
    assert "delete the folders" not in line and line.endswith("or choose another --output-dir for a new run")
    assert main("cnn", [*QUICK, "--output-dir", str(finished_run), "--lr", "0.5"]) == 2
    assert "(stage baseline already trained with the old value). Use the old values, delete the folders of " \
           "the stages named to train them again" in _error(capsys)
