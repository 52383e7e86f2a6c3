"""Seeding and RNG state capture/restore: a resumed run draws exactly what it would have."""
from __future__ import annotations

import os
import random

import numpy as np
import pytest
import torch

from src.utils.reproducibility import (
    capture_rng_state,
    derive_seed,
    restore_rng_state,
    seed_worker,
    setup_reproducibility,
)


@pytest.fixture
def restore_global_torch_flags(monkeypatch):
    """setup_reproducibility changes process-wide switches: put them back for the other tests."""
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    saved = (
        torch.are_deterministic_algorithms_enabled(),
        torch.is_deterministic_algorithms_warn_only_enabled(),
        torch.backends.cudnn.deterministic,
        torch.backends.cudnn.benchmark,
    )
    yield
    torch.use_deterministic_algorithms(saved[0], warn_only=saved[1])
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = saved[2], saved[3]


def draws() -> tuple:
    return random.random(), np.random.rand(3).tolist(), torch.rand(3).tolist(), np.random.randn()


def test_derive_seed_is_stable_and_distinct():
    assert derive_seed(42, 3, 17) == derive_seed(42, 3, 17)
    assert derive_seed(42, 3, 17) != derive_seed(42, 17, 3)
    assert 0 <= derive_seed("order", 1) < 2**63


def test_setup_reproducibility_seeds_everything(restore_global_torch_flags):
    setup_reproducibility(7)
    first = draws()
    setup_reproducibility(7)
    assert draws() == first
    setup_reproducibility(8)
    assert draws() != first


def test_setup_reproducibility_deterministic_switches(restore_global_torch_flags):
    info = setup_reproducibility(1, deterministic=True)
    assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
    assert torch.are_deterministic_algorithms_enabled()
    assert torch.is_deterministic_algorithms_warn_only_enabled()
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    assert info["seed"] == 1 and info["deterministic"] and info["cublas_workspace_config"] == ":4096:8"

    info = setup_reproducibility(1, deterministic=False)
    assert torch.backends.cudnn.benchmark and not torch.backends.cudnn.deterministic
    assert not torch.are_deterministic_algorithms_enabled()
    assert info["cudnn_benchmark"] is True


def test_user_cublas_setting_is_kept(restore_global_torch_flags, monkeypatch):
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":16:8")
    assert setup_reproducibility(3)["cublas_workspace_config"] == ":16:8"
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":16:8"


@pytest.mark.parametrize("seed", [-1, 1.5, True, "42"])
def test_setup_reproducibility_rejects_bad_seeds(seed):
    with pytest.raises(ValueError, match="seed"):
        setup_reproducibility(seed)


def test_rng_state_survives_a_weights_only_checkpoint(tmp_path):
    random.seed(5)
    np.random.seed(5)
    torch.manual_seed(5)
    np.random.randn()  # leaves a cached gaussian in NumPy's state
    random.gauss(0, 1)  # and in Python's
    state = capture_rng_state()
    expected = draws()

    torch.save({"rng": state}, tmp_path / "ckpt.pt")
    for _ in range(3):  # move every generator on
        draws()
    loaded = torch.load(tmp_path / "ckpt.pt", weights_only=True)["rng"]
    restore_rng_state(loaded)
    assert draws() == expected


def test_seed_worker_ties_numpy_and_random_to_torch_seed():
    torch.manual_seed(1234)
    seed_worker(0)
    a = (random.random(), np.random.rand())
    torch.manual_seed(1234)
    seed_worker(1)
    assert (random.random(), np.random.rand()) == a
    torch.manual_seed(99)
    seed_worker(0)
    assert (random.random(), np.random.rand()) != a


def test_seed_worker_gives_dataloader_workers_distinct_reproducible_streams():
    class NumpyDraws(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return 4

        def __getitem__(self, index: int) -> float:
            return float(np.random.rand())

    def run() -> list[float]:
        loader = torch.utils.data.DataLoader(
            NumpyDraws(), batch_size=1, num_workers=2, worker_init_fn=seed_worker,
            generator=torch.Generator().manual_seed(0),
        )
        return [float(x) for x in loader]

    values = run()
    assert values == run()
    assert values[0] != values[1]  # first sample of worker 0 vs worker 1
