"""torch.distributed under torchrun: who am I, and the few collectives the engine needs.

Every decision that changes control flow (stop early, stop on a signal, checkpoint now) is
taken once and shared, so ranks never diverge and deadlock in a collective.
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as torch_dist


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
        Without them (a plain ``python`` run) this is the single-process context."""
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        if world_size <= 1:
            return cls()
        rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
        use_cuda = (device is None or device.type == "cuda") and torch.cuda.is_available()
        if use_cuda:
            torch.cuda.set_device(local_rank)
        if not torch_dist.is_initialized():
            torch_dist.init_process_group("nccl" if use_cuda else "gloo", rank=rank, world_size=world_size)
        comm_device = f"cuda:{local_rank}" if use_cuda else "cpu"
        return cls(rank=rank, world_size=world_size, local_rank=local_rank, comm_device=comm_device)

    def barrier(self) -> None:
        if self.enabled:
            torch_dist.barrier()

    def any_flags(self, *flags: bool) -> list[bool]:
        """Each flag is true on every rank when it is true on at least one (a signal reaches
        ranks at different steps); one small all-reduce for all of them."""
        if not self.enabled:
            return list(flags)
        value = torch.tensor([int(f) for f in flags], dtype=torch.int64, device=self.comm_device)
        torch_dist.all_reduce(value, op=torch_dist.ReduceOp.MAX)
        return [bool(v) for v in value.tolist()]

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
        """Give every rank rank 0's buffers (BatchNorm running statistics). DDP broadcasts them
        before each forward, but each rank then updates them with its own batch, so without
        this the ranks would validate slightly different models."""
        if self.enabled:
            for buffer in module.buffers():
                torch_dist.broadcast(buffer, src=0)

    def destroy(self) -> None:
        if self.enabled and torch_dist.is_initialized():
            torch_dist.destroy_process_group()
