"""Seeding, deterministic mode and RNG state capture, so a resumed run continues exactly."""
from __future__ import annotations

import hashlib
import os
import random
from typing import Any

import numpy as np
import torch


def derive_seed(*parts: int | str) -> int:
    """A 63-bit seed that is a pure function of ``parts`` (e.g. seed, epoch, sample index).

    Data order and augmentation use this so that a resumed run, or one split across processes,
    draws exactly what an uninterrupted single-process run would have drawn.
    """
    digest = hashlib.blake2b("/".join(str(p) for p in parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)


def setup_reproducibility(seed: int = 42, deterministic: bool = False) -> dict[str, Any]:
    """Seed Python, NumPy and torch (CPU and every CUDA device), and choose speed or bit-exactness
    for CUDA kernels (``runtime.deterministic``).

    On the CPU the choice changes nothing: its kernels give the same bits for the same inputs and
    thread count, and the RNG states are checkpointed, so a run there repeats and resumes exactly
    either way. On CUDA, ``deterministic=False`` (the default) lets cuDNN autotune its convolution
    algorithms (``cudnn.benchmark``), which is faster but may pick kernels that add in a
    different order each run: two runs agree to rounding, not to the bit, and a resumed run
    continues correctly but not bit-identically. ``deterministic=True`` turns the autotuner off,
    makes cuDNN use deterministic algorithms, sets ``CUBLAS_WORKSPACE_CONFIG`` (unless the user
    did) and calls ``torch.use_deterministic_algorithms(True)``, so an operation without a
    deterministic CUDA kernel raises instead of quietly differing; the ResNets and ViTs built
    here use none (a ResNet's 1x1 global pool is a mean). See :func:`determinism_note` for what
    each choice costs. Returns what was set.
    """
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.backends.cudnn.deterministic = deterministic
    torch.backends.cudnn.benchmark = not deterministic
    torch.use_deterministic_algorithms(deterministic)
    return {
        "seed": seed,
        "deterministic": deterministic,
        "cudnn_deterministic": torch.backends.cudnn.deterministic,
        "cudnn_benchmark": torch.backends.cudnn.benchmark,
        "deterministic_algorithms": torch.are_deterministic_algorithms_enabled(),
        "cublas_workspace_config": os.environ.get("CUBLAS_WORKSPACE_CONFIG"),
    }


def determinism_note(deterministic: bool, device: torch.device) -> str:
    """One log line saying what ``runtime.deterministic`` means for this run and what it costs."""
    if device.type != "cuda":
        return (f"runtime.deterministic={str(deterministic).lower()}: no effect on {device.type}, "
                "which repeats and resumes bit for bit either way")
    if deterministic:
        return ("runtime.deterministic=true: deterministic CUDA kernels and no cuDNN autotuning, so "
                "runs repeat bit for bit on this GPU and torch build; this costs speed (bench/data.py "
                "prints the student's deterministic/fast training ratio); set it to false for speed")
    return ("runtime.deterministic=false: cuDNN autotunes for speed, so GPU runs agree to rounding, "
            "not bit for bit (a resumed run continues correctly); set it to true for bit-exact runs")


def capture_rng_state() -> dict[str, Any]:
    """Every global RNG's state, as plain values and tensors only.

    The result survives ``torch.save`` and ``torch.load(..., weights_only=True)`` (NumPy's key
    array is stored as a tensor), so checkpoints can hold it and still load safely.
    """
    version, internal, gauss_next = random.getstate()
    kind, keys, pos, has_gauss, cached_gaussian = np.random.get_state(legacy=True)
    state: dict[str, Any] = {
        "python": (version, tuple(internal), gauss_next),
        "numpy": {
            "kind": str(kind),
            "keys": torch.from_numpy(keys.astype(np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached_gaussian),
        },
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng_state(state: dict[str, Any]) -> None:
    """Put every global RNG back to a state from :func:`capture_rng_state`.

    CUDA states are restored only where CUDA is available (a checkpoint from a GPU machine
    resumes on a CPU one); the devices present are restored in order.
    """
    version, internal, gauss_next = state["python"]
    random.setstate((int(version), tuple(int(v) for v in internal), gauss_next))
    saved = state["numpy"]
    keys = np.asarray(saved["keys"].cpu().numpy() if torch.is_tensor(saved["keys"]) else saved["keys"])
    np.random.set_state(
        (saved["kind"], keys.astype(np.uint32), int(saved["pos"]), int(saved["has_gauss"]),
         float(saved["cached_gaussian"]))
    )
    torch.set_rng_state(state["torch"].cpu())
    if "cuda" in state and torch.cuda.is_available():
        for device, cuda_state in enumerate(state["cuda"][: torch.cuda.device_count()]):
            torch.cuda.set_rng_state(cuda_state.cpu(), device)


def seed_worker(worker_id: int) -> None:
    """DataLoader ``worker_init_fn``: seed NumPy and ``random`` in each worker from torch's seed.

    Forked workers inherit the parent's NumPy and ``random`` state; tying both to torch's
    per-worker seed (torch's documented recipe) makes any library that uses them differ
    between workers yet repeat between runs. Our own augmentation draws from ``derive_seed``.
    """
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)
