"""A fake CUDA device, so the product's CUDA branches run on a machine without a GPU.

Only the lowest level is replaced: torch._C's CUDA bindings (device count, lazy init, current
device, memory fraction, memory statistics and their peaks, empty_cache, synchronize; and
torch.accelerator's current device and stream, which optimizers consult), the few
names torch.cuda binds to them at import (``_exchange_device``, ``_get_device_properties``,
which the real ``_cuda_init`` defines) and the raw NVML device count. Everything above them is
torch's own Python: ``torch.cuda.is_available``, ``_lazy_init`` with its queued calls and
capability checks, ``_get_device_index`` (which refuses ``torch.device("cuda")`` without an
index), ``set_per_process_memory_fraction``'s argument checks, ``memory_stats``' flattening, the
RNG functions over ``default_generators``. At initialisation the fake reads the allocator
setting from the environment as torch does and parses it with torch's own parser
(``torch._C._accelerator_setAllocatorSettings``), so a wrong key fails as on a card.

Tensors cannot live on this device: creating one still fails. Where a computation would run on
the card, a test runs it on the CPU and books its memory with ``FakeAllocator.hold``, tied to
the lifetime of a real object (a tensor of the step), so the fake's figures rise and fall with
real reference counting. The allocator keeps allocated and reserved bytes (2 MiB segments, a
cache that ``empty_cache`` returns) with peaks, and raises torch's real ``OutOfMemoryError``
when a request would take the process past its memory fraction.
"""
from __future__ import annotations

import os
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Optional

import pytest
import torch

GIB = 1 << 30
MIB = 1 << 20
SEGMENT = 2 * MIB


@dataclass(frozen=True)
class FakeDeviceProperties:
    """What torch.cuda.get_device_properties returns (the fields the product and torch read)."""

    name: str
    major: int
    minor: int
    total_memory: int
    multi_processor_count: int = 30
    is_integrated: bool = False
    is_multi_gpu_board: bool = False


@dataclass
class _Counter:
    current: int = 0
    peak: int = 0
    allocated: int = 0
    freed: int = 0

    def add(self, n: int) -> None:
        self.current += n
        self.allocated += n
        self.peak = max(self.peak, self.current)

    def sub(self, n: int) -> None:
        self.current -= n
        self.freed += n

    def as_dict(self) -> dict[str, int]:
        return {"current": self.current, "peak": self.peak, "allocated": self.allocated, "freed": self.freed}


@dataclass
class FakeAllocator:
    """One device's caching allocator, as far as its statistics and its limit go."""

    total_memory: int
    fraction: float = 1.0
    allocated: _Counter = field(default_factory=_Counter)
    reserved: _Counter = field(default_factory=_Counter)
    num_ooms: int = 0
    num_alloc_retries: int = 0

    @property
    def limit(self) -> int:
        return int(self.total_memory * self.fraction)

    def _reserve_for(self, nbytes: int) -> None:
        needed = -(-(self.allocated.current + nbytes) // SEGMENT) * SEGMENT
        if needed <= self.reserved.current:
            return
        if needed > self.limit:  # as the real allocator: give the cache back and try once more
            self.num_alloc_retries += 1
            self.empty_cache()
            if needed > self.limit:
                self.num_ooms += 1
                raise torch.OutOfMemoryError(
                    f"CUDA out of memory (fake device). Tried to allocate {nbytes / MIB:.2f} MiB; "
                    f"{self.allocated.current / GIB:.2f} GiB allocated, limit {self.limit / GIB:.2f} GiB")
        self.reserved.add(needed - self.reserved.current)

    def alloc(self, nbytes: int) -> Callable[[], None]:
        """Book ``nbytes``; returns the function that frees them (call it once)."""
        self._reserve_for(nbytes)
        self.allocated.add(nbytes)
        freed = [False]

        def free() -> None:
            if not freed[0]:
                freed[0] = True
                self.allocated.sub(nbytes)

        return free

    def hold(self, nbytes: int, owner: Any) -> None:
        """Book ``nbytes`` for as long as ``owner`` lives (freed when it is garbage)."""
        weakref.finalize(owner, self.alloc(nbytes))

    def empty_cache(self) -> None:
        in_use = -(-self.allocated.current // SEGMENT) * SEGMENT
        if self.reserved.current > in_use:
            self.reserved.sub(self.reserved.current - in_use)

    def reset_peaks(self) -> None:
        self.allocated.peak = self.allocated.current
        self.reserved.peak = self.reserved.current

    def stats(self) -> dict[str, Any]:
        """The nested dict torch._C._cuda_memoryStats returns (the pools the product reads)."""
        return {"allocated_bytes": {"all": self.allocated.as_dict()},
                "reserved_bytes": {"all": self.reserved.as_dict()},
                "num_ooms": self.num_ooms, "num_alloc_retries": self.num_alloc_retries}


@dataclass(frozen=True)
class FakeStream:
    """The current stream, as torch.accelerator hands it out (optimizers ask if it is capturing)."""

    device_index: int
    device_type: int = 1  # DeviceType::CUDA

    def is_capturing(self) -> bool:
        return False

    def query(self) -> bool:
        return True

    def synchronize(self) -> None:
        return None


class FakeCudart:
    """The CUDA runtime module torch.cuda.cudart() returns, as far as torch.cuda.mem_get_info uses it."""

    def __init__(self, fake: FakeCuda) -> None:
        self.fake = fake

    def cudaMemGetInfo(self, index: int) -> tuple[int, int]:  # noqa: N802 - the runtime's name
        """(free, total) bytes as the driver reports them: the card less this process's context
        and reserved memory, and what other processes hold."""
        self.fake.calls.append("cudaMemGetInfo")
        allocator = self.fake.allocators[self.fake._initialized_device(index)]
        used = self.fake.context_bytes + self.fake.held_elsewhere + allocator.reserved.current
        return max(0, allocator.total_memory - used), allocator.total_memory


class FakeCuda:
    """``devices`` identical fake GPUs (default: one 6 GiB Ampere laptop card). ``context_bytes``:
    what this process's CUDA context takes once initialised; ``held_elsewhere``: what other
    processes (a display, another job) hold on each card. Both are outside the allocator and only
    show in ``torch.cuda.mem_get_info``."""

    def __init__(self, devices: int = 1, total_memory: int = 6 * GIB, capability: tuple[int, int] = (8, 6),
                 name: str = "Fake GeForce RTX 3060 Laptop GPU", context_bytes: int = 0,
                 held_elsewhere: int = 0) -> None:
        self.properties = FakeDeviceProperties(name, capability[0], capability[1], total_memory)
        self.context_bytes, self.held_elsewhere = context_bytes, held_elsewhere
        self.allocators = [FakeAllocator(total_memory) for _ in range(devices)]
        self.current = 0
        self.initialized = False
        self.allocator_settings: Optional[str] = None  # what torch would have parsed at initialisation
        self.calls: list[str] = []  # every faked binding called, in order
        self.on_empty_cache: list[Callable[[], None]] = []  # tests look at the world at that moment
        self.generators = tuple(torch.Generator() for _ in range(devices))  # CPU stand-ins, real state API

    def allocator(self, index: Optional[int] = None) -> FakeAllocator:
        return self.allocators[self.current if index is None else index]

    # --------------------------------------------------------------- the replaced bindings

    def _check(self, index: int) -> int:
        if not 0 <= index < len(self.allocators):
            raise RuntimeError(f"CUDA error: invalid device ordinal {index} (fake device)")
        return index

    def _initialized_device(self, index: int) -> int:
        if not self.initialized:  # the real allocator has no per-device state before init
            raise RuntimeError(f"Invalid device argument {index}: did you call init?")
        return self._check(index)

    def _record(self, name: str, result: Any = None) -> Any:
        self.calls.append(name)
        return result

    def get_device_count(self) -> int:
        return self._record("_cuda_getDeviceCount", len(self.allocators))

    def init(self) -> None:
        """What the real _cuda_init does for Python: the allocator reads its setting (CUDA-only
        keys from PYTORCH_CUDA_ALLOC_CONF first, as torch 2.14 does), torch.cuda gets its
        default generators."""
        self._record("_cuda_init")
        setting = os.environ.get("PYTORCH_CUDA_ALLOC_CONF") or os.environ.get("PYTORCH_ALLOC_CONF") or ""
        if setting:
            torch._C._accelerator_setAllocatorSettings(setting)  # torch's parser: a bad key raises
        self.allocator_settings = setting
        self.initialized = True
        torch.cuda.default_generators = self.generators

    def get_device(self) -> int:
        return self._record("_cuda_getDevice", self.current)

    def set_device(self, index: int) -> None:
        self._record("_cuda_setDevice")
        self.current = self._check(index)

    def exchange_device(self, index: int) -> int:
        self._record("_cuda_exchangeDevice")
        previous = self.current
        if index >= 0:
            self.current = self._check(index)
        return previous

    def device_properties(self, index: int) -> FakeDeviceProperties:
        self._record("_get_device_properties")
        self._check(index)
        return self.properties

    def set_memory_fraction(self, fraction: float, index: int) -> None:
        self._record("_cuda_setMemoryFraction")
        self.allocators[self._initialized_device(index)].fraction = fraction

    def get_memory_fraction(self, index: int) -> float:
        self._record("_cuda_getMemoryFraction")
        return self.allocators[self._initialized_device(index)].fraction

    def memory_stats(self, index: int) -> dict[str, Any]:
        self._record("_cuda_memoryStats")
        return self.allocators[self._initialized_device(index)].stats()

    def reset_peak_memory_stats(self, index: int) -> None:
        self._record("_cuda_resetPeakMemoryStats")
        self.allocators[self._initialized_device(index)].reset_peaks()

    def empty_cache(self) -> None:
        self._record("_cuda_emptyCache")
        for hook in self.on_empty_cache:
            hook()
        for allocator in self.allocators:
            allocator.empty_cache()

    def synchronize(self) -> None:
        self._record("_cuda_synchronize")

    def is_current_stream_capturing(self) -> bool:
        self._record("_cuda_isCurrentStreamCapturing")
        return False

    def current_stream(self, index: int) -> FakeStream:
        self._record("_accelerator_getStream")
        return FakeStream(self._check(index))

    # ------------------------------------------------------------------ installing it

    def install(self, monkeypatch: pytest.MonkeyPatch) -> FakeCuda:
        """Replace the bindings for the test's duration (monkeypatch restores torch afterwards)."""
        bindings = {
            "_cuda_getDeviceCount": self.get_device_count, "_cuda_init": self.init,
            "_cuda_getDevice": self.get_device, "_cuda_setDevice": self.set_device,
            "_cuda_exchangeDevice": self.exchange_device, "_cuda_maybeExchangeDevice": self.exchange_device,
            "_cuda_setMemoryFraction": self.set_memory_fraction,
            "_cuda_getMemoryFraction": self.get_memory_fraction,
            "_cuda_memoryStats": self.memory_stats,
            "_cuda_resetPeakMemoryStats": self.reset_peak_memory_stats,
            "_cuda_emptyCache": self.empty_cache, "_cuda_synchronize": self.synchronize,
            "_cuda_isCurrentStreamCapturing": self.is_current_stream_capturing,  # optimizers ask (2.11)
            # torch.accelerator's device-generic bindings (optimizers' graph-capture check)
            "_accelerator_getDeviceIndex": self.get_device, "_accelerator_setDeviceIndex": self.set_device,
            "_accelerator_getStream": self.current_stream,
        }
        for name, function in bindings.items():
            monkeypatch.setattr(torch._C, name, function, raising=False)
        cuda = torch.cuda
        # names torch.cuda bound to the bindings at import, or that the real _cuda_init defines
        monkeypatch.setattr(cuda, "_exchange_device", self.exchange_device)
        monkeypatch.setattr(cuda, "_maybe_exchange_device", self.exchange_device)
        monkeypatch.setattr(cuda, "_get_device_properties", self.device_properties, raising=False)
        monkeypatch.setattr(cuda.graphs, "_cuda_isCurrentStreamCapturing", self.is_current_stream_capturing,
                            raising=False)
        monkeypatch.setattr(cuda, "_raw_device_count_nvml", lambda: len(self.allocators))
        monkeypatch.setattr(cuda, "_raw_device_uuid_nvml", lambda: None)
        monkeypatch.setattr(cuda, "_cudart", FakeCudart(self))  # lazy init checks it exists; mem_get_info
        # torch.cuda's own state starts as in a process that never touched CUDA
        monkeypatch.setattr(cuda, "_initialized", False)
        monkeypatch.setattr(cuda, "_cached_device_count", None)
        monkeypatch.setattr(cuda, "_queued_calls", list(cuda._queued_calls))
        monkeypatch.setattr(cuda, "default_generators", ())
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
        monkeypatch.delenv("PYTORCH_NVML_BASED_CUDA_CHECK", raising=False)
        return self


@pytest.fixture
def make_fake_cuda(monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., FakeCuda]]:
    """``make_fake_cuda(**options)`` installs a FakeCuda (see its arguments) for the test. Where a
    real GPU is present, its own (``gpu``-marked) tests cover these paths and the fake stays out
    of the real CUDA state."""
    if torch.cuda.is_available():
        pytest.skip("a real GPU is here: the gpu-marked tests run these paths on it")
    read_settings = getattr(torch._C, "_accelerator_getAllocatorSettings", lambda: "")  # torch >= 2.14
    settings = read_settings()  # init parses into process-wide state: put it back afterwards
    yield lambda **options: FakeCuda(**options).install(monkeypatch)
    torch._C._accelerator_setAllocatorSettings(settings)


@pytest.fixture
def fake_cuda(make_fake_cuda: Callable[..., FakeCuda]) -> FakeCuda:
    """One fake 6 GiB Ampere GPU for the test."""
    return make_fake_cuda()


@dataclass
class StepMemory:
    """A made-up memory model of one training step on the fake card (bytes): activations per
    image, fewer with gradient checkpointing; gradients and optimizer state sized by the model."""

    per_image: int
    per_image_checkpointed: int
    state_per_param_byte: int = 1  # SGD momentum: one copy of the weights; AdamW: 2


class SimulatedStep:
    """Stands in for ``UpdateStep`` where a step would have to run on the card (the planner's
    probe): the probe's own code runs around it (snapshot, fork_rng over the CUDA generators,
    precision, optimizer, restore) while this books the step's memory on the fake allocator.
    ``seen`` records, per constructed step, whether the model's weights and the inputs were
    channels-last."""

    memory: StepMemory
    fake: FakeCuda
    seen: list[tuple[bool, bool]]

    def __init__(self, model: torch.nn.Module, objective: Any, optimizer: torch.optim.Optimizer, cfg: Any,
                 device: torch.device, autocast_dtype: Any, scaler: Any, channels_last: bool) -> None:
        self.model, self.optimizer = model, optimizer
        conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
        self.seen.append((conv.weight.is_contiguous(memory_format=torch.channels_last), channels_last))
        self.param_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
        self.grads: Optional[torch.Tensor] = None  # stands for the gradients: their booking lives with it
        self.state_held = False

    @classmethod
    def using(cls, fake: FakeCuda, memory: StepMemory) -> type[SimulatedStep]:
        return type("SimulatedStep", (cls,), {"memory": memory, "fake": fake, "seen": []})

    def forward_backward(self, images: torch.Tensor, labels: torch.Tensor,
                         weight: float) -> tuple[None, torch.Tensor, torch.Tensor]:
        allocator = self.fake.allocator()
        if self.grads is None:  # the first backward of a window creates the gradients
            self.grads = torch.empty(0)
            allocator.hold(self.param_bytes, self.grads)
        checkpointed = bool(getattr(self.model, "grad_checkpointing", False))
        per_image = self.memory.per_image_checkpointed if checkpointed else self.memory.per_image
        allocator.alloc(per_image * images.shape[0])()  # activations: freed by the backward
        return None, torch.tensor(True), labels

    def apply(self, losses_finite: torch.Tensor) -> None:
        if not self.state_held:  # the first step creates the optimizer state, which lives with it
            self.fake.allocator().hold(self.param_bytes * self.memory.state_per_param_byte, self.optimizer)
            self.state_held = True
        self.grads = None  # zero_grad(set_to_none=True)
