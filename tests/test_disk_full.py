"""A full disk while a checkpoint or model.safetensors is written: one ``error:`` line, nothing
already saved is lost, and the same command finishes once there is room again.

The in-process tests make the kernel refuse the write (a file-size limit, RLIMIT_FSIZE: the
write fails with EFBIG inside torch.save / the safetensors write, exactly where ENOSPC would);
the slow test fills a real tmpfs in a private mount namespace (ENOSPC) where the machine allows.
"""
from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pandas as pd
import pytest
import torch

from src.cli.train import main
from src.engine.checkpoint import CheckpointStore
from src.pipeline import train_stage

REPO = Path(__file__).resolve().parents[1]
QUICK = ["--subset", "30", "--image-size", "8", "--device", "cpu", "--stages", "baseline",
         "--set", "models.student=test_resnet", "--set", "models.small_input=false"]  # a 4.5 MB checkpoint


@contextmanager
def file_size_limit(nbytes: int) -> Iterator[None]:
    """Writes past ``nbytes`` fail in the kernel (EFBIG) instead of killing the process (SIGXFSZ)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (nbytes, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, previous)


def _error_lines(capsys: pytest.CaptureFixture[str]) -> list[str]:
    err = capsys.readouterr().err.splitlines()
    assert not any("Traceback" in line for line in err), err
    return [line for line in err if line.startswith("error:")]


def test_full_disk_while_saving_a_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    argv = [*QUICK, "--epochs", "2", "--output-dir", str(out)]
    real_save = CheckpointStore.save_latest
    saves: list[int] = []

    def second_save_hits_a_full_disk(store: CheckpointStore, state: dict) -> Path:
        saves.append(state["epoch"])
        if len(saves) == 2:  # the end of epoch 2: epoch 1's checkpoint is already on disk
            with file_size_limit(1 << 18):
                return real_save(store, state)
        return real_save(store, state)

    monkeypatch.setattr(CheckpointStore, "save_latest", second_save_hits_a_full_disk)
    assert main("cnn", argv) == 2
    (line,) = _error_lines(capsys)
    latest = out / "baseline" / "checkpoint_latest.pt"
    assert line.startswith(f"error: cannot write {latest}: File too large.")
    assert "re-run the same command" in line
    assert torch.load(latest, weights_only=True)["epoch"] == 2  # epoch 1's state, intact
    assert not list((out / "baseline").glob(".*.tmp")) and not (out / "baseline" / "result.json").exists()

    monkeypatch.setattr(CheckpointStore, "save_latest", real_save)
    assert main("cnn", argv) == 0
    assert pd.read_csv(out / "baseline" / "epochs.csv")["epoch"].tolist() == [1, 2]
    assert (out / "baseline" / "result.json").is_file()


def test_full_disk_while_saving_the_weights(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "run"
    argv = [*QUICK, "--epochs", "1", "--output-dir", str(out)]
    real_save = train_stage.save_weights

    def full_disk(*args: object, **kwargs: object) -> str:
        with file_size_limit(1 << 18):
            return real_save(*args, **kwargs)

    monkeypatch.setattr(train_stage, "save_weights", full_disk)
    assert main("cnn", argv) == 2
    (line,) = _error_lines(capsys)
    assert line.startswith(f"error: cannot write {out / 'baseline' / 'model.safetensors'}: File too large.")
    assert not (out / "baseline" / "model.safetensors").exists()
    assert torch.load(out / "baseline" / "checkpoint_latest.pt", weights_only=True)["epoch"] == 2

    monkeypatch.setattr(train_stage, "save_weights", real_save)
    assert main("cnn", argv) == 0  # continues from the checkpoint: nothing is trained twice
    assert pd.read_csv(out / "baseline" / "epochs.csv")["epoch"].tolist() == [1]
    result = json.loads((out / "baseline" / "result.json").read_text())
    assert result["epochs_run"] == 1


def _can_mount_tmpfs(folder: Path) -> bool:
    if shutil.which("unshare") is None or not sys.platform.startswith("linux"):
        return False
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", f"mount -t tmpfs -o size=1m tmpfs {folder}"],
                           capture_output=True)
    return probe.returncode == 0


@pytest.mark.slow
def test_a_really_full_disk_then_the_same_command_finishes(tmp_path: Path) -> None:
    """ENOSPC from a real (tiny) file system, through the real command in a child process."""
    disk = tmp_path / "disk"
    disk.mkdir()
    if not _can_mount_tmpfs(disk):
        pytest.skip("no unprivileged mount namespace (unshare -rm) to make a small tmpfs here")
    command = [sys.executable, str(REPO / "cnn_distillation" / "train.py"), *QUICK, "--epochs", "1",
               "--output-dir", str(disk / "run")]
    script = (
        f"mount -t tmpfs -o size=32m tmpfs {disk} && "
        f"dd if=/dev/zero of={disk}/filler bs=1M count=30 status=none && "
        f"({' '.join(command)} 2> {tmp_path}/first.err; echo $? > {tmp_path}/first.rc) ; "
        f"rm {disk}/filler && ls -a {disk}/run/baseline > {tmp_path}/left.txt ; "
        f"{' '.join(command)} 2> {tmp_path}/second.err; echo $? > {tmp_path}/second.rc; "
        f"ls {disk}/run/baseline > {tmp_path}/final.txt"
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run(["unshare", "-rm", "sh", "-c", script], cwd=REPO, env=env, timeout=600, check=True)
    first_err = (tmp_path / "first.err").read_text()
    assert (tmp_path / "first.rc").read_text().strip() == "2", first_err
    assert "Traceback" not in first_err
    errors = [line for line in first_err.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "No space left on device" in errors[0], first_err
    assert not [name for name in (tmp_path / "left.txt").read_text().split() if name.endswith(".tmp")]
    assert (tmp_path / "second.rc").read_text().strip() == "0", (tmp_path / "second.err").read_text()
    assert "result.json" in (tmp_path / "final.txt").read_text().split()
