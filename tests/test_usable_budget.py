"""The budget the planner plans against is what the card really offers this process: on a card at
or under ``--vram-budget``, or a shared one, the free memory after the CUDA context and other
processes, plus what this process already reserved, less a margin (fake CUDA device)."""
from __future__ import annotations

import logging
from collections.abc import Callable

import pytest
import torch
from fake_cuda import GIB, MIB, FakeCuda

from src.errors import UserError
from src.memory.planner import CONTEXT_GROWTH_MARGIN, usable_budget

CUDA = torch.device("cuda", 0)
MakeFake = Callable[..., FakeCuda]


def test_a_6_gib_card_offers_6_gib_less_its_context_and_says_so_in_one_line(
        make_fake_cuda: MakeFake, caplog: pytest.LogCaptureFixture) -> None:
    fake: FakeCuda = make_fake_cuda(context_bytes=300 * MIB)
    fake.allocator().alloc(100 * MIB)  # the weights, already reserved by this process: still its own
    with caplog.at_level(logging.INFO, logger="kd_pipeline.memory"):
        budget = usable_budget(6 * GIB, CUDA)
    assert budget == 6 * GIB - 300 * MIB - CONTEXT_GROWTH_MARGIN
    assert len(caplog.records) == 1 and "this card offers 5.46 GiB" in caplog.records[0].getMessage()


def test_a_shared_large_card_offers_what_the_other_processes_leave(make_fake_cuda: MakeFake) -> None:
    make_fake_cuda(total_memory=24 * GIB, context_bytes=500 * MIB, held_elsewhere=20 * GIB)
    assert usable_budget(6 * GIB, CUDA) == 4 * GIB - 500 * MIB - CONTEXT_GROWTH_MARGIN


def test_a_large_free_card_keeps_the_budget_asked_for(make_fake_cuda: MakeFake,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    make_fake_cuda(total_memory=80 * GIB, context_bytes=500 * MIB)
    with caplog.at_level(logging.INFO, logger="kd_pipeline.memory"):
        assert usable_budget(6 * GIB, CUDA) == 6 * GIB
    assert not caplog.records


def test_a_card_with_nothing_free_is_one_error_line(make_fake_cuda: MakeFake) -> None:
    make_fake_cuda(context_bytes=300 * MIB, held_elsewhere=6 * GIB)
    with pytest.raises(UserError) as refused:
        usable_budget(6 * GIB, CUDA)
    message = str(refused.value)
    assert "\n" not in message and message.startswith("no GPU memory is free for training on cuda:0")
