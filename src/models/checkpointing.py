"""Gradient checkpointing for the factory's timm models, and the measurement that proves it
works (``saved_activation_bytes``); both re-exported by ``src.utils.training_guards``."""
from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager

import torch
from torch import nn

from src.errors import UserError
from src.utils.logger import announce


def _timm_reentrant_default() -> tuple[Callable[[], bool], Callable[[bool], None]] | None:
    """timm's global switch for checkpoint re-entrancy (``TIMM_REENTRANT_CKPT``), where the
    installed timm has one (added after 1.0.9, the oldest timm requirements.txt allows)."""
    try:
        from timm.layers import set_reentrant_ckpt, use_reentrant_ckpt
    except ImportError:
        return None
    return use_reentrant_ckpt, set_reentrant_ckpt


def switch_on_checkpointing(model: nn.Module) -> str | None:
    """Turn on non-reentrant gradient checkpointing through timm's ``set_grad_checkpointing``;
    returns None when it is on, else why it could not be (the model's own words)."""
    if not hasattr(model, "set_grad_checkpointing"):  # every timm model has it; some refuse
        return "the model offers no gradient-checkpointing method"
    try:
        timm_switch = _timm_reentrant_default()
        if timm_switch is not None and timm_switch[0]():
            warnings.warn(
                "timm was set to reentrant checkpointing (TIMM_REENTRANT_CKPT); "
                "switching timm's default to non-reentrant",
                RuntimeWarning,
                stacklevel=3,
            )
            timm_switch[1](False)
        model.set_grad_checkpointing(True)
    except (AssertionError, NotImplementedError, RuntimeError, TypeError, ValueError) as exc:
        return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    if not getattr(model, "grad_checkpointing", True):
        return "the model did not switch it on"
    return None


def require_gradient_checkpointing(model: nn.Module, model_name: str, why: str) -> None:
    """Checkpointing on, or one ``UserError`` naming the model and the setting that asked for it."""
    failure = switch_on_checkpointing(model)
    if failure is not None:
        raise UserError(f"{why} asks for gradient checkpointing, but {model_name} does not support it "
                        f"({failure}); set it to auto or off for this stage")


def enforce_gradient_checkpointing(model: nn.Module, model_name: str, verbose: bool = True) -> bool:
    """Turn on NON-reentrant gradient checkpointing of a timm model (``set_grad_checkpointing``).

    Checkpointing keeps only each block's input during the forward and recomputes the block's
    activations in the backward: far less activation memory for about one extra forward. A
    stage gets it when ``train.grad_checkpointing`` says ``on`` (the ViT presets' ViT-Base
    teacher: it does not fit a 6 GB card without it), or from the memory planner under ``auto``.

    Non-reentrant because the reentrant variant drops gradients when a block's input does not
    require grad and does not support ``torch.autograd.grad``. timm (1.0.x) checkpoints through
    ``timm.models._manipulate.checkpoint``/``checkpoint_seq``, which read the global default
    ``timm.layers.use_reentrant_ckpt()`` (False unless ``TIMM_REENTRANT_CKPT`` is set in the
    environment); if that default is reentrant it is switched off here with a warning.

    Returns True when checkpointing is on; warns and returns False when the model has no way
    to turn it on (or refused).
    """
    failure = switch_on_checkpointing(model)
    if failure is not None:
        warnings.warn(
            f"Gradient checkpointing could not be enabled for {model_name} ({failure}); "
            "training will keep every activation and may run out of GPU memory",
            RuntimeWarning,
            stacklevel=2,
        )
        return False
    if verbose:
        announce(f"Gradient checkpointing (non-reentrant) enabled for {model_name}")
    return True


@contextmanager
def saved_activation_bytes(model: nn.Module | None = None) -> Iterator[dict[str, int]]:
    """Count the bytes autograd saves for backward while the block runs.

    Yields a dict whose ``"bytes"`` entry is filled in on exit: the size of every unique
    storage packed by autograd, each counted once, leaving out ``model``'s own parameters and
    buffers (memory the model holds anyway). This is the number gradient checkpointing
    shrinks, measurable on the CPU, so the benchmark and the tests use it to prove it works.
    """
    excluded: set[int] = set()
    if model is not None:
        for tensor in (*model.parameters(), *model.buffers()):
            excluded.add(tensor.untyped_storage().data_ptr())
    storages: dict[int, int] = {}
    keep: list[torch.Tensor] = []  # hold references so a freed storage's address is not reused

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        key = storage.data_ptr()
        if key not in excluded and key not in storages:
            storages[key] = storage.nbytes()
            keep.append(tensor)
        return tensor

    result = {"bytes": 0}
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        yield result
    result["bytes"] = sum(storages.values())
    keep.clear()
