"""torch.distributed under torchrun: who am I, and the few collectives the engine needs.

Every decision that changes control flow (stop early, stop on a signal, checkpoint now, redo a
window after an out-of-memory error) is taken once and shared, so ranks never diverge and
deadlock in a collective. Gradients are averaged by ``average_gradients`` once per update,
after the ranks agreed that every one of them computed its share (docs/ARCHITECTURE.md,
"Data parallel training and out-of-memory errors").
"""
from __future__ import annotations

import os
import signal
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as torch_dist

from src.engine.device import torchrun_local_rank


@dataclass
class DistributedContext:
    """One process's place in the job. ``DistributedContext()`` is the single-process case."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    comm_device: str = "cpu"  # where collective tensors live: nccl needs them on the GPU

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @classmethod
    def from_env(cls, device: torch.device | None = None) -> DistributedContext:
        """Read torchrun's variables and join the process group (gloo on CPU, nccl on CUDA).
        Without them (a plain ``python`` run) this is the single-process context. ``device``
        is this rank's device (``resolve_device`` gives CUDA ranks the GPU of their local rank)."""
        local_rank = torchrun_local_rank()
        if local_rank is None:
            return cls()
        rank, world_size = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
        use_cuda = (device is None or device.type == "cuda") and torch.cuda.is_available()
        gpu = torch.device("cuda", local_rank if device is None or device.index is None else device.index)
        if use_cuda:
            torch.cuda.set_device(gpu)  # nccl's collectives run on the current device
        if not torch_dist.is_initialized():
            torch_dist.init_process_group("nccl" if use_cuda else "gloo", rank=rank, world_size=world_size)
        comm_device = str(gpu) if use_cuda else "cpu"
        return cls(rank=rank, world_size=world_size, local_rank=local_rank, comm_device=comm_device)

    def barrier(self) -> None:
        if self.enabled:
            torch_dist.barrier()

    def any_flags(self, *flags: bool) -> list[bool]:
        """Each flag is true on every rank when it is true on at least one (a signal reaches
        ranks at different steps); one small all-reduce for all of them."""
        return [bool(v) for v in self.max_codes(*(int(f) for f in flags))]

    def max_codes(self, *codes: int) -> list[int]:
        """Each code at its largest over ranks: a flag that also says what happened (which
        non-finite value a loss took), the same on every rank; one small all-reduce for all."""
        if not self.enabled:
            return list(codes)
        value = torch.tensor(codes, dtype=torch.int64, device=self.comm_device)
        torch_dist.all_reduce(value, op=torch_dist.ReduceOp.MAX)
        return [int(v) for v in value.tolist()]

    def broadcast_flag(self, flag: bool, src: int = 0) -> bool:
        """Rank ``src``'s decision, on every rank."""
        if not self.enabled:
            return flag
        value = torch.tensor([int(flag)], dtype=torch.int64, device=self.comm_device)
        torch_dist.broadcast(value, src=src)
        return bool(value.item())

    def all_gather_object(self, obj: Any) -> list[Any]:
        """Every rank's ``obj`` in rank order (small, once-per-epoch payloads)."""
        if not self.enabled:
            return [obj]
        gathered: list[Any] = [None] * self.world_size
        torch_dist.all_gather_object(gathered, obj)
        return gathered

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """Sum of ``tensor`` over ranks (a new tensor on the tensor's own device)."""
        if not self.enabled:
            return tensor
        shared = tensor.detach().to(self.comm_device, copy=True)
        torch_dist.all_reduce(shared, op=torch_dist.ReduceOp.SUM)
        return shared.to(tensor.device)

    def broadcast_buffers(self, module: torch.nn.Module) -> None:
        """Give every rank rank 0's buffers (BatchNorm running statistics). Each rank updates
        them with its own batches, so without this the ranks would validate (and rank 0 would
        save) slightly different models."""
        self._broadcast_in_place(module.buffers())

    def broadcast_weights(self, module: torch.nn.Module) -> None:
        """Give every rank rank 0's parameters and buffers, so all start from the same model."""
        self._broadcast_in_place([*module.parameters(), *module.buffers()])

    def _broadcast_in_place(self, tensors: Iterable[torch.Tensor]) -> None:
        if self.enabled:
            with torch.no_grad():
                for tensor in tensors:
                    torch_dist.broadcast(tensor, src=0)

    def average_gradients(self, params: Iterable[torch.Tensor]) -> None:
        """Replace each parameter's gradient by its mean over ranks, in place (no memory is
        allocated, so this collective cannot run out of memory on one rank alone).

        Every rank passes the same parameters in the same order, and the same ones hold
        gradients on every rank (the graph does not depend on the data: true of the timm models
        here; DDP's ``find_unused_parameters=False`` asks the same)."""
        if not self.enabled:
            return
        grads = [param.grad for param in params if param.grad is not None]
        works = [torch_dist.all_reduce(grad, op=torch_dist.ReduceOp.SUM, async_op=True) for grad in grads]
        for work in works:
            work.wait()
        torch._foreach_div_(grads, float(self.world_size))

    def destroy(self) -> None:
        if self.enabled and torch_dist.is_initialized():
            torch_dist.destroy_process_group()


def keep_exit_code_under_torchrun() -> None:
    """Call once this process is ending with an error of its own (printed, exit code chosen).
    torchrun stops every other rank with SIGTERM as soon as one has exited and reports a rank it
    stopped as killed (-15): ranks that agreed to stop with the same error would show different
    exit codes by a race. Ignoring SIGTERM from here lets each finish exiting with its own code."""
    if torchrun_local_rank() is not None and threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
