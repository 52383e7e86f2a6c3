"""cleanup_training_state called as training_guards documents it: what it releases from objects
the caller still holds, measured on real storages (CPU here; the same on a GPU, see the gpu test and
tests/test_cuda_paths.py for the CUDA figures)."""
from __future__ import annotations

import weakref

import pytest
import torch
from engine_fixtures import digits_tensors, tiny_cnn

from src.utils.training_guards import cleanup_training_state

OPTIMIZERS = {"sgd": lambda params: torch.optim.SGD(params, lr=0.01, momentum=0.9),
              "adamw": lambda params: torch.optim.AdamW(params, lr=0.01)}


def trained(optimizer: str) -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    """A model after one update and a second backward: gradients and optimizer state both held."""
    model = tiny_cnn()
    optimizer = OPTIMIZERS[optimizer](model.parameters())
    images, labels = digits_tensors(8)
    for _ in range(2):
        torch.nn.functional.cross_entropy(model(images), labels).backward()
        if not optimizer.state:
            optimizer.step()
    return model, optimizer


def held_bytes(model: torch.nn.Module, optimizer: torch.optim.Optimizer) -> int:
    """Bytes of the distinct storages reachable from the two objects (what the caller keeps alive)."""
    tensors = [*model.parameters(), *model.buffers(), *[p.grad for p in model.parameters()],
               *[v for state in optimizer.state.values() for v in state.values()]]
    storages = {t.untyped_storage().data_ptr(): t.untyped_storage().nbytes()
                for t in tensors if isinstance(t, torch.Tensor)}
    return sum(storages.values())


@pytest.mark.parametrize("name", sorted(OPTIMIZERS))
def test_seed_call_releases_optimizer_state_and_gradients_the_caller_still_holds(
        name: str, capsys: pytest.CaptureFixture) -> None:
    model, optimizer = trained(name)
    weights = sum(t.untyped_storage().nbytes() for t in [*model.parameters(), *model.buffers()])
    before = held_bytes(model, optimizer)
    state_refs = [weakref.ref(v) for s in optimizer.state.values() for v in s.values()]
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1)
    scaler = torch.amp.GradScaler("cuda", enabled=False)

    info = cleanup_training_state(model=model, optimizer=optimizer, scheduler=scheduler, scaler=scaler,
                                  verbose=True)

    after = held_bytes(model, optimizer)
    assert before > 2 * weights and after == weights  # only the weights (and buffers) remain
    assert info["released_mb"] == pytest.approx((before - after) / 1e6)
    assert all(ref() is None for ref in state_refs)  # freed, not just forgotten by the optimizer
    assert "released" in capsys.readouterr().out
    images, labels = digits_tensors(4)
    torch.nn.functional.cross_entropy(model(images), labels).backward()
    optimizer.step()  # still usable: the next step starts with fresh state
    scheduler.step()


def test_seed_positional_call_and_the_runners_call_both_work() -> None:
    model, optimizer = trained("sgd")
    info = cleanup_training_state(model, optimizer, None, None, verbose=False)
    assert info["released_mb"] > 0 and all(p.grad is None for p in model.parameters())
    assert cleanup_training_state(verbose=False)["released_mb"] == 0.0


@pytest.mark.gpu
def test_cuda_memory_drops_while_the_caller_keeps_model_and_optimizer() -> None:
    model, optimizer = trained("adamw")
    model.cuda()
    optimizer.load_state_dict(optimizer.state_dict())  # the state follows the parameters to the GPU
    images, labels = digits_tensors(8)
    torch.nn.functional.cross_entropy(model(images.cuda()), labels.cuda()).backward()
    torch.cuda.synchronize()
    weights = sum(p.numel() * p.element_size() for p in model.parameters())
    held = torch.cuda.memory_allocated()
    info = cleanup_training_state(model=model, optimizer=optimizer, verbose=False)
    # weights moved off, gradients and AdamW's two moments gone (cuBLAS workspaces may stay)
    assert held - torch.cuda.memory_allocated() >= 4 * weights
    assert info["released_mb"] * 1e6 >= 4 * weights
    assert all(p.device.type == "cpu" for p in model.parameters())
    assert info["allocated_mb"] == pytest.approx(torch.cuda.memory_allocated() / 1e6)
