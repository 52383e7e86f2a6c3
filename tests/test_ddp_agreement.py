"""The decisions ranks take together after an out-of-memory error or a non-finite loss, seen from
rank 0 of two with the other rank scripted (one process, no process group: the real two-process
run is in tests/test_ddp.py). The scripted rank computes exactly what this one does, except that
it reports an out-of-memory error or a NaN loss where the script says."""
from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from engine_fixtures import KeyedTrain, PlainEval, engine_config, fingerprint, tiny_vit

from src.engine.distributed import DistributedContext
from src.engine.divergence import NonFiniteLossError
from src.engine.objective import CrossEntropyObjective
from src.engine.trainer import Trainer
from src.errors import UserError

CPU = torch.device("cpu")


class ScriptedPeer(DistributedContext):
    """Rank 0 of 2. The other rank mirrors this one (its sums and predictions equal ours) but runs
    out of memory in the window after update ``compute_oom_after`` or in the optimizer step of
    update ``step_oom_at``, or has a NaN loss in update ``nan_at``; its codes are max-reduced
    into every agreement, as the all-reduce would."""

    def __init__(self, compute_oom_after: int | None = None, step_oom_at: int | None = None,
                 nan_at: int | None = None) -> None:
        super().__init__(rank=0, world_size=2)
        self.compute_oom_after, self.step_oom_at, self.nan_at = compute_oom_after, step_oom_at, nan_at
        self.trainer: Trainer | None = None
        self.window_agreements = 0

    def max_codes(self, *codes: int) -> list[int]:
        assert self.trainer is not None
        step = self.trainer.global_step
        peer = [0] * len(codes)
        if len(codes) == 1 and self.compute_oom_after == step:
            self.window_agreements += 1
            peer[0] = 1
            self.compute_oom_after = None  # once
        if len(codes) == 5 and self.step_oom_at == step:
            peer[2] = 1
        if len(codes) == 5 and self.nan_at == step:
            peer[4] = 1  # NaN (src/engine/trainer.py, _nonfinite_code)
        return [max(mine, theirs) for mine, theirs in zip(codes, peer, strict=True)]

    def broadcast_flag(self, flag: bool, src: int = 0) -> bool:
        return flag

    def all_gather_object(self, obj: Any) -> list[Any]:
        return [obj, obj]

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        return tensor * 2

    def barrier(self) -> None:
        return None

    def _broadcast_in_place(self, tensors: Any) -> None:
        return None

    def average_gradients(self, params: Any) -> None:
        return None  # the other rank's gradients equal ours: the mean is ours


def make(tmp_path: Path, peer: ScriptedPeer, **cfg: Any) -> Trainer:
    trainer = Trainer(tiny_vit(seed=3), CrossEntropyObjective(), KeyedTrain(128), PlainEval(8),
                      engine_config(epochs=1, batch_size=16, **cfg), tmp_path, device=CPU, seed=0,
                      run_fingerprint=fingerprint(), dist=peer)
    peer.trainer = trainer
    return trainer


def test_another_ranks_out_of_memory_makes_this_rank_drop_and_redo_the_window(tmp_path: Path) -> None:
    """This rank computed window 2 without trouble; the other ran out of memory in it. This rank
    must not apply it: it halves its micro-batch like the other and redoes the window."""
    peer = ScriptedPeer(compute_oom_after=1)
    trainer = make(tmp_path, peer)
    applied: list[int] = []
    real_step = trainer.optimizer.step
    trainer.optimizer.step = lambda *a, **k: (applied.append(trainer.global_step), real_step(*a, **k))[1]
    result = trainer.fit()
    assert peer.window_agreements == 1
    assert trainer.oom_history == ["micro-batch 16 on another rank"]
    assert (result.micro_batch, result.accumulation_steps) == (8, 2)
    # 128 samples over 2 ranks: 4 windows of 16 here, each applied once, the dropped one redone
    assert applied == [0, 1, 2, 3] and trainer.global_step == trainer.schedule.num_updates == 4


def test_an_optimizer_step_out_of_memory_on_another_rank_stops_every_rank_alike(tmp_path: Path) -> None:
    """After the step some ranks applied the update and one did not: no retry can make their
    weights agree again, so every rank stops with the same error (none waits for the others)."""
    trainer = make(tmp_path, ScriptedPeer(step_oom_at=2), checkpoint_every_steps=1)
    expected = r"optimizer step of update 2 on at least one of the 2 ranks.*--vram-budget.*re-run the same"
    with pytest.raises(UserError, match=expected):
        trainer.fit()
    assert trainer.global_step == 2
    state = torch.load(tmp_path / "checkpoint_latest.pt", weights_only=True)
    assert state["global_step"] == 1  # the last checkpoint before the failed step, left as it was


def test_a_nan_loss_on_another_rank_stops_every_rank_with_the_same_error(tmp_path: Path) -> None:
    """This rank's losses are finite; the other rank's loss of update 2 is NaN. This rank must stop
    with the error that rank raises (exit code 3, the same step and value), not train on into a
    collective the other rank never joins; nothing of update 2 is saved."""
    trainer = make(tmp_path, ScriptedPeer(nan_at=2), checkpoint_every_steps=1)
    with pytest.raises(NonFiniteLossError, match=r"^non-finite loss at step 2: nan\. ") as caught:
        trainer.fit()
    assert caught.value.exit_code == 3
    assert torch.load(tmp_path / "checkpoint_latest.pt", weights_only=True)["global_step"] == 1
    assert (tmp_path / "diverged.json").is_file()  # the recovery settings may change on the re-run
