"""Seeding, deterministic mode and RNG state capture (extended by the utils work)."""
from __future__ import annotations

import hashlib


def derive_seed(*parts: int | str) -> int:
    """A 63-bit seed that is a pure function of ``parts`` (e.g. seed, epoch, sample index).

    Data order and augmentation use this so that a resumed run, or one split across processes,
    draws exactly what an uninterrupted single-process run would have drawn.
    """
    digest = hashlib.blake2b("/".join(str(p) for p in parts).encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & ((1 << 63) - 1)
