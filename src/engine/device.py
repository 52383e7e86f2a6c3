"""Which device this process trains on: ``--device auto|cpu|cuda`` -> an indexed ``torch.device``.

A CUDA device always comes back with its index. torch.cuda's memory functions
(``set_per_process_memory_fraction``, ``memory_stats``, ...) resolve their device argument with
``_get_device_index``, which refuses a bare ``torch.device("cuda")``; and an index names the
same GPU whatever the current device is later set to. Under torchrun each rank takes the GPU of
its local rank, the one ``DistributedContext.from_env`` selects for it.
"""
from __future__ import annotations

import os
from typing import Optional

import torch

from src.errors import UserError


def torchrun_local_rank() -> Optional[int]:
    """This process's local rank when torchrun started more than one, else None."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return None
    return int(os.environ.get("LOCAL_RANK", "0"))


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; ``cuda`` -> this rank's GPU (torchrun's local
    rank, else the current device); ``cuda:N`` -> GPU N. Asking for a GPU that is not there is
    a UserError."""
    if name == "cpu" or (name == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if name not in ("auto", "cuda") and not name.startswith("cuda:"):
        raise UserError(f"unknown device {name!r}; use auto, cpu or cuda")
    if not torch.cuda.is_available():
        raise UserError(f"--device {name} was asked for, but no CUDA device is available; "
                        "use --device cpu or auto")
    try:
        requested = torch.device("cuda" if name == "auto" else name)
    except RuntimeError:
        raise UserError(f"unknown device {name!r}; use auto, cpu, cuda or cuda:N") from None
    index = requested.index
    if index is None:
        local_rank = torchrun_local_rank()
        index = torch.cuda.current_device() if local_rank is None else local_rank
    count = torch.cuda.device_count()
    if index >= count:
        why = "this rank's local rank" if requested.index is None else "the index asked for"
        raise UserError(f"GPU {index} ({why}) does not exist: this machine has {count} CUDA device(s); "
                        "start at most that many processes per node (torchrun --nproc_per_node) "
                        "or use --device cuda")
    return torch.device("cuda", index)
