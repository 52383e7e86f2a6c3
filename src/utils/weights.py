"""model.safetensors: writing the deployable weights and naming them by their tensors.

The identity recorded in result.json (``weights_sha256``) is a sha256 over the tensors (name,
dtype, shape and bytes, in name order), not over the file: safetensors writes its metadata in
an order that depends on the process's hash seed (PYTHONHASHSEED), so identical weights saved
by two processes are different files. A teacher retrained to the same weights keeps its name,
and a checkpoint that recorded it stays resumable.
"""
from __future__ import annotations

import hashlib
from collections.abc import Mapping
from pathlib import Path

import torch
from safetensors.torch import load_file, save
from torch import nn

from src.utils.atomic import atomic_write_bytes

WEIGHTS_FILE = "model.safetensors"  # a stage folder's final (best) weights


def tensors_sha256(tensors: Mapping[str, torch.Tensor]) -> str:
    """The identity of a set of named tensors, independent of the file that holds them."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        tensor = tensors[name].detach().cpu().contiguous()
        digest.update(f"{name}\0{tensor.dtype}\0{tuple(tensor.shape)}\0".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy())
    return digest.hexdigest()


def weights_sha256(path: Path) -> str:
    """The tensor identity of a .safetensors file (see :func:`tensors_sha256`)."""
    return tensors_sha256(load_file(str(path)))


def file_sha256(path: Path) -> str:
    """The sha256 of a file's bytes (what result.json recorded before the tensor identity)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_weights(model: nn.Module, path: Path, metadata: dict[str, str]) -> str:
    """Write ``model``'s weights as a safetensors file atomically; returns their tensor identity.
    Serialised in memory and written by Python, so a full disk is reported as such (src.utils.atomic)."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    atomic_write_bytes(path, save(tensors, metadata=metadata))
    return tensors_sha256(tensors)
