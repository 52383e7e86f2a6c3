"""Checkpoint files: weights_only round trips, rotation, fallback from damage, crash safety."""
from __future__ import annotations

import logging
import random

import pytest
import torch
from torch import nn

import src.engine.checkpoint as checkpoint_module
from src.engine.checkpoint import CheckpointStore, library_versions
from src.engine.early_stopping import EarlyStopping
from src.engine.optim import build_optimizer, build_schedule
from src.engine.settings import TrainConfig
from src.errors import UserError


def _state(tag: float) -> dict:
    return {"model": {"w": torch.full((3,), tag)}, "step": int(tag)}


def _tag(state: dict) -> float:
    return float(state["model"]["w"][0])


def test_full_training_state_loads_with_weights_only(tmp_path):
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    cfg = TrainConfig(epochs=2, scheduler="onecycle")
    optimizer = build_optimizer(model, cfg)
    schedule = build_schedule(optimizer, cfg, 3)
    model(torch.randn(5, 4)).sum().backward()
    optimizer.step()
    schedule.step_update()
    state = {
        "model": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "schedule": schedule.state_dict(),
        "early_stopping": EarlyStopping().state_dict(),
        "rng": {"torch": torch.get_rng_state(), "python": random.getstate()},
        "versions": library_versions(),
        "epoch": 1,
        "step": 1,
    }
    store = CheckpointStore(tmp_path)
    store.save_latest(state)
    loaded, path = store.load_latest()
    assert path == tmp_path / "checkpoint_latest.pt"
    assert torch.equal(loaded["rng"]["torch"], state["rng"]["torch"])
    assert loaded["rng"]["python"] == state["rng"]["python"]
    assert loaded["versions"]["torch"] == str(torch.__version__) and set(loaded["versions"]) == {
        "torch", "torchvision", "timm", "python",
    }
    restored = build_optimizer(model, cfg)
    restored.load_state_dict(loaded["optimizer"])
    momentum = next(iter(restored.state.values()))["momentum_buffer"]
    assert torch.equal(momentum, next(iter(optimizer.state.values()))["momentum_buffer"])


def test_no_checkpoint_is_none(tmp_path):
    assert CheckpointStore(tmp_path / "stage").load_latest() is None


def test_second_save_keeps_the_first_as_previous(tmp_path):
    store = CheckpointStore(tmp_path)
    store.save_latest(_state(1))
    store.save_latest(_state(2))
    assert _tag(torch.load(tmp_path / "checkpoint_previous.pt", weights_only=True)) == 1
    state, path = store.load_latest()
    assert _tag(state) == 2 and path.name == "checkpoint_latest.pt"


@pytest.mark.parametrize(
    ("damage", "reason"),
    [
        (lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]), "Error"),  # truncated
        (lambda p: p.write_bytes(b"not a checkpoint at all"), "Error"),
        (lambda p: torch.save({"step": 3}, p), "missing keys"),
        (lambda p: torch.save([1, 2], p), "not a checkpoint dict"),
    ],
    ids=["truncated", "garbage", "missing-keys", "not-a-dict"],
)
def test_damaged_latest_falls_back_to_previous_with_warning(tmp_path, caplog, damage, reason):
    store = CheckpointStore(tmp_path)
    store.save_latest(_state(1))
    store.save_latest(_state(2))
    damage(tmp_path / "checkpoint_latest.pt")
    with caplog.at_level(logging.WARNING, logger="kd_pipeline.checkpoint"):
        state, path = CheckpointStore(tmp_path).load_latest()
    assert _tag(state) == 1 and path.name == "checkpoint_previous.pt"
    assert "checkpoint_latest.pt" in caplog.text and reason in caplog.text


def test_unsafe_pickle_is_refused_not_executed(tmp_path, caplog):
    store = CheckpointStore(tmp_path)
    store.save_latest(_state(1))
    store.save_latest(_state(2))
    torch.save({"model": {}, "payload": EarlyStopping()}, tmp_path / "checkpoint_latest.pt")
    with caplog.at_level(logging.WARNING):
        state, path = store.load_latest()
    assert path.name == "checkpoint_previous.pt"
    assert "Unsupported global: GLOBAL src.engine.early_stopping.EarlyStopping" in caplog.text


def test_missing_latest_after_interrupted_rotation_uses_previous(tmp_path, caplog):
    store = CheckpointStore(tmp_path)
    store.save_latest(_state(1))
    (tmp_path / "checkpoint_latest.pt").rename(tmp_path / "checkpoint_previous.pt")
    with caplog.at_level(logging.WARNING):
        state, path = store.load_latest()
    assert _tag(state) == 1 and "missing" in caplog.text


def test_both_damaged_is_a_user_error(tmp_path):
    (tmp_path / "checkpoint_latest.pt").write_bytes(b"\x00" * 10)
    (tmp_path / "checkpoint_previous.pt").write_bytes(b"junk")
    with pytest.raises(UserError, match="no usable checkpoint.*checkpoint_latest.pt.*checkpoint_previous.pt"):
        CheckpointStore(tmp_path).load_latest()


def test_lone_damaged_latest_is_a_user_error(tmp_path):
    (tmp_path / "checkpoint_latest.pt").write_bytes(b"junk")
    with pytest.raises(UserError, match="checkpoint_latest.pt"):
        CheckpointStore(tmp_path).load_latest()


def test_crash_inside_write_leaves_old_files_and_no_temp(tmp_path, monkeypatch):
    store = CheckpointStore(tmp_path)
    store.save_latest(_state(1))
    store.save_latest(_state(2))
    real_save = torch.save

    def crash_midway(obj, handle, *args, **kwargs):
        real_save(obj, handle, *args, **kwargs)
        handle.truncate(100)  # half-written file, then the process "dies"
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint_module.torch, "save", crash_midway)
    with pytest.raises(OSError, match="disk full"):
        store.save_latest(_state(3))
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint_latest.pt", "checkpoint_previous.pt"]
    state, path = store.load_latest()
    assert _tag(state) == 2 and path.name == "checkpoint_latest.pt"
    assert _tag(torch.load(tmp_path / "checkpoint_previous.pt", weights_only=True)) == 1


def test_file_resumed_from_survives_the_next_save_when_latest_was_damaged(tmp_path):
    store = CheckpointStore(tmp_path)
    store.save_latest(_state(1))
    store.save_latest(_state(2))
    (tmp_path / "checkpoint_latest.pt").write_bytes(b"junk")
    resumed = CheckpointStore(tmp_path)
    state, _ = resumed.load_latest()
    resumed.save_latest(_state(3))
    assert _tag(torch.load(tmp_path / "checkpoint_previous.pt", weights_only=True)) == 1
    resumed.save_latest(_state(4))  # a sound latest rotates as usual
    assert _tag(torch.load(tmp_path / "checkpoint_previous.pt", weights_only=True)) == 3


def test_best_is_separate_and_explicit_load(tmp_path):
    store = CheckpointStore(tmp_path)
    store.save_latest(_state(7))
    store.link_best(store.latest_path)  # shares the file, and survives the rotations that follow
    store.save_latest(_state(0))
    store.save_latest(_state(1))
    assert _tag(store.load_best()) == 7 and _tag(store.load(tmp_path / "checkpoint_latest.pt")) == 1


def test_explicit_path_problems_are_user_errors(tmp_path):
    store = CheckpointStore(tmp_path)
    with pytest.raises(UserError, match="does not exist"):
        store.load(tmp_path / "nope.pt")
    with pytest.raises(UserError, match="does not exist"):
        store.load_best()
    (tmp_path / "bad.pt").write_bytes(b"junk")
    with pytest.raises(UserError, match="cannot load checkpoint .*bad.pt"):
        store.load(tmp_path / "bad.pt")


def test_temp_files_of_a_killed_save_are_cleared_by_the_next_save(tmp_path):
    store = CheckpointStore(tmp_path)
    store.save_latest(_state(1))
    (tmp_path / ".checkpoint_latest.pt.abc123.tmp").write_bytes(b"half a checkpoint")
    (tmp_path / ".checkpoint_best.pt.def456.tmp").write_bytes(b"half a checkpoint")
    store.save_latest(_state(2))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint_latest.pt", "checkpoint_previous.pt"]
