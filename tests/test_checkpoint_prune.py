"""What a finished stage keeps: at most ``train.keep_checkpoints`` full training states (latest
first, then best, then previous), checkpoint_best.pt always (as the best weights alone when it
is beyond the limit), no temporary files, and a stage continued with more epochs still ends on
its best weights."""
from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from engine_fixtures import KeyedTrain, PlainEval, engine_config, fingerprint, tiny_vit

from src.engine.checkpoint import CheckpointStore
from src.engine.objective import CrossEntropyObjective
from src.engine.trainer import Trainer


def _state(tag: float) -> dict:
    return {"model": {"w": torch.full((3,), tag)}, "optimizer": {"state": {}}, "epoch": int(tag) + 1,
            "best_metric": tag}


def _store(tmp_path: Path, best_is_latest: bool) -> CheckpointStore:
    """Three epochs saved; best is epoch 3 (linked to latest) or epoch 1."""
    store = CheckpointStore(tmp_path)
    for tag in (1, 2, 3):
        store.save_latest(_state(tag))
        if tag == (3 if best_is_latest else 1):
            store.link_best(store.latest_path)
    (tmp_path / ".checkpoint_latest.pt.x1.tmp").write_bytes(b"left by a killed save")
    return store


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@pytest.mark.parametrize(
    ("keep", "best_is_latest", "files", "best_full"),
    [
        (1, True, ["checkpoint_best.pt", "checkpoint_latest.pt"], True),  # one file, two names
        (1, False, ["checkpoint_best.pt", "checkpoint_latest.pt"], False),
        (2, False, ["checkpoint_best.pt", "checkpoint_latest.pt"], True),
        (2, True, ["checkpoint_best.pt", "checkpoint_latest.pt", "checkpoint_previous.pt"], True),
        (3, False, ["checkpoint_best.pt", "checkpoint_latest.pt", "checkpoint_previous.pt"], True),
        (0, True, ["checkpoint_best.pt"], False),
    ],
)
def test_prune_keeps_what_keep_checkpoints_says(tmp_path: Path, keep: int, best_is_latest: bool,
                                                files: list[str], best_full: bool) -> None:
    store = _store(tmp_path, best_is_latest)
    store.prune(keep)
    assert _names(tmp_path) == files
    best = store.load_best()
    assert ("optimizer" in best) == best_full
    assert float(best["model"]["w"][0]) == (3 if best_is_latest else 1) and best["epoch"] in (2, 4)
    if "checkpoint_latest.pt" in files:
        assert float(store.load_latest()[0]["model"]["w"][0]) == 3
    store.prune(keep)  # idempotent: the runner prunes finished stages on every run
    assert _names(tmp_path) == files


def test_a_pruned_stage_continued_with_more_epochs_ends_on_its_best_weights(tmp_path: Path) -> None:
    def trainer(epochs: int) -> Trainer:
        # no later epoch can beat the first by a min_delta this large: the best epoch is 1 by
        # construction, at a learning rate that diverges on no CPU
        cfg = engine_config(epochs=epochs, lr=0.05, scheduler="constant", optimizer="sgd", weight_decay=0.0,
                            min_delta=1e9)
        return Trainer(tiny_vit(), CrossEntropyObjective(), KeyedTrain(48), PlainEval(16), cfg, tmp_path,
                       device=torch.device("cpu"), seed=0, run_fingerprint=fingerprint())

    first = trainer(3).fit()
    assert first.best_epoch == 1  # the setting of this test: the best epoch is not the last one
    store = CheckpointStore(tmp_path)
    best_weights = {k: v.clone() for k, v in store.load_best()["model"].items()}
    store.prune(1)
    assert not os.path.samefile(store.best_path, store.latest_path) and "optimizer" not in store.load_best()
    extended = trainer(4)
    result = extended.fit()
    assert result.resumed_from == store.latest_path and result.epochs_run == 4
    assert result.best_epoch == 1
    assert all(torch.equal(extended.model.state_dict()[k], v) for k, v in best_weights.items())


@pytest.mark.parametrize("keep", [1, 2])
def test_pruning_a_pruned_stage_maps_best_instead_of_reading_it(tmp_path: Path, keep: int,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """The runner prunes every finished stage on every run: finding there is nothing to do must not
    read a checkpoint as big as the model (1 GB for a ViT-Base) into memory each time."""
    store = _store(tmp_path, best_is_latest=False)
    store.prune(keep)
    real_load, loads = torch.load, []

    def recording_load(*args, **kwargs):
        loads.append(kwargs.get("mmap", False))
        return real_load(*args, **kwargs)

    monkeypatch.setattr(torch, "load", recording_load)
    before = _names(tmp_path)
    assert store.prune(keep) == [] and _names(tmp_path) == before
    assert loads == [True]  # best looked at once, through a memory map


def test_a_best_that_cannot_be_mapped_is_read_and_kept(tmp_path: Path) -> None:
    """torch's pre-zip format cannot be memory-mapped; that does not make it damaged."""
    store = _store(tmp_path, best_is_latest=False)
    store.best_path.unlink()
    torch.save(_state(1), store.best_path, _use_new_zipfile_serialization=False)
    store.prune(1)
    best = store.load_best()
    assert float(best["model"]["w"][0]) == 1 and "optimizer" not in best  # reduced, not removed
