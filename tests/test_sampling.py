"""The data order: a pure function of (seed, epoch), the same samples whatever the ranks,
the micro-batch size or the point a run resumes from."""
from __future__ import annotations

import torch
from engine_fixtures import KeyedTrain

from src.engine.sampling import (
    epoch_order,
    make_loader,
    plan_micro_batches,
    rank_shard,
    train_keys,
    window_sizes,
)


def test_epoch_order_is_a_permutation_fixed_by_seed_and_epoch() -> None:
    order = epoch_order(seed=1, epoch=3, num_samples=50)
    assert sorted(order) == list(range(50))
    assert order == epoch_order(seed=1, epoch=3, num_samples=50)
    assert order != epoch_order(seed=1, epoch=4, num_samples=50)
    assert order != epoch_order(seed=2, epoch=3, num_samples=50)


def test_ranks_split_the_padded_order_evenly_and_cover_every_sample() -> None:
    order = epoch_order(seed=0, epoch=1, num_samples=11)
    shards = [rank_shard(order, rank, 3) for rank in range(3)]
    assert [len(s) for s in shards] == [4, 4, 4]
    assert set().union(*map(set, shards)) == set(range(11))
    unpadded = [rank_shard(order, rank, 3, pad=False) for rank in range(3)]
    assert sorted(i for s in unpadded for i in s) == list(range(11))


def test_resume_offset_continues_the_same_keys() -> None:
    full = train_keys(seed=0, epoch=2, num_samples=40, rank=0, world_size=1, start=0)
    assert train_keys(seed=0, epoch=2, num_samples=40, rank=0, world_size=1, start=24) == full[24:]
    assert all(epoch == 2 for epoch, _ in full)


def test_windows_do_not_depend_on_the_micro_batch_size() -> None:
    keys = [(1, i) for i in range(37)]
    big = plan_micro_batches(keys, window=16, micro_batch=16)
    small = plan_micro_batches(keys, window=16, micro_batch=5)
    assert [k for mb in small for k in mb.keys] == keys
    window_sizes = [mb.window_samples for mb in small if mb.last_in_window]
    assert window_sizes == [mb.window_samples for mb in big if mb.last_in_window] == [16, 16, 5]
    assert [len(mb.keys) for mb in small[:3]] == [5, 5, 6]  # no one-sample micro-batch


def test_a_lone_last_sample_joins_the_window_before_it() -> None:
    """A one-sample batch breaks batch norm in training mode: it never happens unless the
    epoch holds a single sample."""
    assert window_sizes(33, 32) == [33]
    assert window_sizes(34, 32) == [32, 2]
    assert window_sizes(64, 32) == [32, 32]
    assert window_sizes(1, 32) == [1]
    plan = plan_micro_batches([(1, i) for i in range(33)], window=32, micro_batch=16)
    assert [len(mb.keys) for mb in plan] == [16, 17] and plan[-1].window_samples == 33


def test_loading_leaves_the_global_rng_alone() -> None:
    dataset = KeyedTrain(12)
    batches = [[(1, 0), (1, 5)], [(1, 7)]]
    before = torch.get_rng_state()
    first = [images for images, _ in make_loader(dataset, batches, 0, 0, "train", 1)]
    assert torch.equal(torch.get_rng_state(), before)
    again = [images for images, _ in make_loader(dataset, batches, 0, 0, "train", 1)]
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert [len(images) for images in first] == [2, 1]
