"""One floor for the micro-batch (src/engine/batch_floor.py): 2 for a model with BatchNorm, which
cannot train on one sample, else 1. The memory planner never plans below it (a small budget
used to give a BatchNorm model micro-batch 1, which crashed in its first forward), and not
fitting at the floor is one error line."""
from __future__ import annotations

import pytest
import timm
from fake_cuda import GIB, MIB, FakeCuda, StepMemory
from test_cuda_paths import plan_on_fake, small_cnn

from src.engine.batch_floor import micro_batch_floor
from src.errors import UserError
from src.memory.search import search_micro_batch


def test_the_floor_is_two_with_batch_norm_and_one_without() -> None:
    assert micro_batch_floor(small_cnn()) == 2
    assert micro_batch_floor(timm.create_model("test_vit", num_classes=3, img_size=8, patch_size=4)) == 1


def test_the_search_never_tries_below_the_floor() -> None:
    tried: list[int] = []

    def measure(micro: int) -> int:
        tried.append(micro)
        return micro * GIB

    plan = search_micro_batch(64, measure, 2 * GIB, margin=0.0, floor=2)
    assert (plan.micro_batch, plan.accumulation_steps) == (2, 32) and min(tried) == 2
    assert not search_micro_batch(64, measure, GIB, margin=0.0, floor=2).fits  # 1 would fit: not a choice


def test_a_small_budget_plans_a_batch_norm_model_at_two(fake_cuda: FakeCuda,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    """2 GiB per image: micro-batch 2 takes 4 GiB of the 5.4 GiB a 6 GiB card allows."""
    plan, _ = plan_on_fake(fake_cuda, monkeypatch, small_cnn(), 8, 6.0, StepMemory(2 * GIB, 2 * GIB),
                           checkpointing="off")
    assert (plan.micro_batch, plan.accumulation_steps) == (2, 32)
    assert all(micro >= 2 for micro, _ in plan.tried)


def test_a_batch_norm_model_fitting_only_one_image_is_one_error_line(fake_cuda: FakeCuda,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """3 GiB per image: only micro-batch 1 fits, which a BatchNorm model cannot train on."""
    with pytest.raises(UserError) as caught:
        plan_on_fake(fake_cuda, monkeypatch, small_cnn(), 8, 6.0, StepMemory(3 * GIB, 3 * GIB),
                     checkpointing="off")
    message = str(caught.value)
    assert "\n" not in message and "even at micro-batch 2 (tried without checkpointing 64: oom" in message
    assert "1: " not in message.split("(tried", 1)[1]  # micro-batch 1 was never probed
    assert fake_cuda.allocator().allocated.current < 100 * MIB  # the probes left nothing behind
