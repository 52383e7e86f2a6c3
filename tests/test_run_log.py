"""metrics.jsonl: buffered records, atomic rewrites, resume truncation, optional TensorBoard."""
from __future__ import annotations

import importlib.util
import json
import math

import pytest
import torch

from src.engine.run_log import MetricsLog, TensorBoardLog, open_tensorboard
from src.errors import UserError


def _lines(path):
    return [json.loads(line) for line in path.read_text().splitlines()]


def test_records_reach_the_file_only_on_flush_and_are_not_duplicated(tmp_path):
    path = tmp_path / "metrics.jsonl"
    log = MetricsLog(path)
    log.append({"step": 20, "epoch": 1, "loss": 1.5})
    assert not path.exists()
    log.flush()
    log.append({"step": 40, "epoch": 1, "loss": 1.2, "grad_norm": math.nan})
    log.flush()
    records = _lines(path)
    assert [r["step"] for r in records] == [20, 40]
    assert math.isnan(records[1]["grad_norm"]) and records[0]["loss"] == 1.5
    assert list(tmp_path.iterdir()) == [path]  # no temp files left behind


def test_resume_keeps_records_up_to_the_checkpoint_step(tmp_path):
    path = tmp_path / "metrics.jsonl"
    first = MetricsLog(path)
    for step in (20, 40, 60, 80):
        first.append({"step": step, "epoch": 1 + step // 50})
    first.flush()  # the crash came after step 80 was flushed, but the checkpoint is at step 40
    resumed = MetricsLog(path, resume_after_step=40)
    assert [r["step"] for r in resumed.records] == [20, 40]
    resumed.append({"step": 60, "epoch": 2, "loss": 0.5})
    resumed.flush()
    assert [(r["step"], r.get("loss")) for r in _lines(path)] == [(20, None), (40, None), (60, 0.5)]


def test_resume_without_a_file_and_fresh_start_over_an_old_file(tmp_path):
    path = tmp_path / "metrics.jsonl"
    assert MetricsLog(path, resume_after_step=100).records == []
    path.write_text('{"step": 5, "epoch": 1}\n')
    fresh = MetricsLog(path)
    fresh.append({"step": 1, "epoch": 1})
    fresh.flush()
    assert _lines(path) == [{"step": 1, "epoch": 1}]


def test_bad_records_fail_at_append(tmp_path):
    log = MetricsLog(tmp_path / "metrics.jsonl")
    with pytest.raises(ValueError, match="step"):
        log.append({"epoch": 1, "loss": 0.1})
    with pytest.raises(TypeError):
        log.append({"step": 1, "epoch": 1, "loss": torch.tensor(0.1)})  # tensors must be read first
    assert log.records == []


def test_damaged_file_on_resume_is_a_user_error(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1, "epoch": 1}\n{"step": 2, "ep\n')
    with pytest.raises(UserError, match="metrics.jsonl line 2 is not JSON"):
        MetricsLog(path, resume_after_step=10)


@pytest.mark.skipif(importlib.util.find_spec("tensorboard") is not None, reason="tensorboard is installed")
def test_tensorboard_missing_is_a_clear_user_error(tmp_path):
    with pytest.raises(UserError, match="pip install tensorboard"):
        open_tensorboard(tmp_path / "tb")


class _RecordingWriter:
    """Stands in for SummaryWriter, which cannot be installed on this machine."""

    def __init__(self):
        self.scalars, self.flushed = [], 0

    def add_scalar(self, tag, value, step):
        self.scalars.append((tag, value, step))

    def flush(self):
        self.flushed += 1


def test_tensorboard_mirror_gets_numeric_values_per_step(tmp_path):
    writer = _RecordingWriter()
    log = MetricsLog(tmp_path / "metrics.jsonl", tensorboard=TensorBoardLog(writer))
    log.append({"step": 20, "epoch": 1, "loss": 0.7, "event": "resume", "nonfinite": False})
    log.flush()
    assert writer.scalars == [("loss", 0.7, 20)] and writer.flushed == 1
