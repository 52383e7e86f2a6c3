#!/usr/bin/env python3
"""Make this GPU look like a smaller card: hold all of its memory but ``--card-gib`` GiB until
stdin closes (``bench/gpu_check.py --card-gib 6`` starts it around the training runs).

Why: a memory-fraction cap of a large card leaves the training process's own CUDA context
outside the budget, while on a real 6 GB card the context comes out of the 6 GiB. With the rest
held by this process, the driver reports what such a card would, and the training process's
context, cuDNN/cuBLAS workspaces and tensors all share those GiB.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Optional

GIB = 1 << 30
MIB = 1 << 20


def bytes_to_hold(free: int, card_bytes: int) -> int:
    """What to hold so that ``card_bytes`` stay free (nothing on a card that has no more free)."""
    return max(0, free - card_bytes)


def main(argv: Optional[Sequence[str]] = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--card-gib", type=float, required=True, help="GiB left free for other processes")
    args = parser.parse_args(argv)
    import torch

    if not torch.cuda.is_available():
        print("card_hold: no CUDA GPU is visible", file=sys.stderr)
        return 2
    free, total = torch.cuda.mem_get_info()  # after this process's own context
    hold = bytes_to_hold(free, int(args.card_gib * GIB))
    block = torch.empty(hold, dtype=torch.uint8, device="cuda") if hold else None
    free_now, _ = torch.cuda.mem_get_info()
    print(f"a {args.card_gib:g} GiB card: {hold / MIB:.0f} MiB of the {total / GIB:.1f} GiB held, "
          f"{free_now / MIB:.0f} MiB free for the run", flush=True)
    sys.stdin.read()  # until the caller closes it, or exits
    del block
    return 0


if __name__ == "__main__":
    sys.exit(main())
