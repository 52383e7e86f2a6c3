"""Seeding and RNG state capture/restore: a resumed run draws exactly what it would have."""
from __future__ import annotations

import os
import random

import numpy as np
import pytest
import torch

# cuBLAS reads its workspace setting when CUDA first runs a matmul in this process: set it before any
# test does, so the deterministic GPU test below gets deterministic cuBLAS whatever ran first
os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")

from src.utils.reproducibility import (  # noqa: E402
    capture_rng_state,
    derive_seed,
    determinism_note,
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
    assert not torch.is_deterministic_algorithms_warn_only_enabled()  # asked for: guaranteed or an error
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    assert info["seed"] == 1 and info["deterministic"] and info["cublas_workspace_config"] == ":4096:8"

    info = setup_reproducibility(1, deterministic=False)
    assert torch.backends.cudnn.benchmark and not torch.backends.cudnn.deterministic
    assert not torch.are_deterministic_algorithms_enabled()
    assert info["cudnn_benchmark"] is True


def test_user_cublas_setting_is_kept(restore_global_torch_flags, monkeypatch):
    monkeypatch.setenv("CUBLAS_WORKSPACE_CONFIG", ":16:8")
    assert setup_reproducibility(3, deterministic=True)["cublas_workspace_config"] == ":16:8"
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


def test_speed_is_the_default_and_the_log_says_what_each_choice_costs(restore_global_torch_flags):
    from src.config.schema import RuntimeConfig

    assert RuntimeConfig().deterministic is False
    info = setup_reproducibility(1)
    assert info["cudnn_benchmark"] and not info["deterministic_algorithms"]
    cuda = torch.device("cuda", 0)
    assert "set it to true for bit-exact runs" in determinism_note(False, cuda)
    assert "costs speed" in determinism_note(True, cuda) and "set it to false" in determinism_note(True, cuda)
    assert "no effect on cpu" in determinism_note(True, torch.device("cpu"))


@pytest.mark.parametrize("name", ["resnet18", "vit_tiny"])
def test_strict_determinism_accepts_every_operation_of_the_models(restore_global_torch_flags, name):
    """Under use_deterministic_algorithms(True) an op without a deterministic kernel raises; the
    models' training step (forward, backward, the data path's gather and resize) must not."""
    from src.data.build import build_datasets
    from src.data.settings import DataConfig
    from src.models.factory import create_model

    setup_reproducibility(0, deterministic=True)
    data = build_datasets(DataConfig(image_size=16, subset=20), None, seed=0)
    images, labels = next(data.train.batches([[(1, i) for i in range(8)]], torch.device("cpu")))
    model = create_model(name, 10, 16)
    torch.nn.functional.cross_entropy(model(images), labels).backward()


def _train_twice_on_cuda(name: str) -> list[dict[str, torch.Tensor]]:
    from src.data.build import build_datasets
    from src.data.settings import DataConfig
    from src.models.factory import create_model

    device = torch.device("cuda", 0)
    data = build_datasets(DataConfig(image_size=32, subset=64), None, seed=0)
    results = []
    for _ in range(2):
        setup_reproducibility(0, deterministic=True)
        model = create_model(name, 10, 32).to(device)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        keys = [[(1, i) for i in range(j, j + 16)] for j in range(0, 64, 16)]
        for images, labels in data.train.batches(keys, device):
            with torch.autocast("cuda", dtype=torch.float16):
                loss = torch.nn.functional.cross_entropy(model(images), labels)
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
        results.append({k: v.detach().cpu() for k, v in model.state_dict().items()})
    return results


@pytest.mark.gpu
@pytest.mark.parametrize("name", ["resnet18", "vit_tiny"])
def test_deterministic_true_repeats_bit_for_bit_on_cuda(restore_global_torch_flags, name):
    first, second = _train_twice_on_cuda(name)
    assert [k for k in first if not torch.equal(first[k], second[k])] == []
