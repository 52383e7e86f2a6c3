"""CUDA caching-allocator settings, chosen before CUDA starts.

``expandable_segments`` lets the allocator grow one segment instead of reserving a new block
for every odd-sized request, so reserved memory stays close to allocated memory and a stage
whose batch shapes vary (the last, short batch; evaluation) does not fragment its way past the
budget. PyTorch reads the setting once, when CUDA initialises; later changes are ignored.
"""
from __future__ import annotations

import logging
import os
from collections.abc import MutableMapping
from typing import Optional

import torch

log = logging.getLogger("kd_pipeline.memory")  # under the pipeline logger: lands in pipeline.log

# PYTORCH_ALLOC_CONF is the current name; PYTORCH_CUDA_ALLOC_CONF is still read (torch 2.14 reads
# the CUDA name first for CUDA-only keys and the generic name first for the rest), so a value in
# either one is the user's choice and is left alone.
ALLOC_CONF_VARS = ("PYTORCH_ALLOC_CONF", "PYTORCH_CUDA_ALLOC_CONF")
DEFAULT_ALLOC_CONF = "expandable_segments:True"


def configure_cuda_allocator(environ: Optional[MutableMapping[str, str]] = None) -> Optional[str]:
    """Set ``PYTORCH_ALLOC_CONF=expandable_segments:True`` unless the user configured the allocator.

    Returns the setting now in force (the user's, ours, or None if CUDA started too early for
    ours to count). Call it at program start, before anything touches CUDA.
    """
    env = os.environ if environ is None else environ
    for name in ALLOC_CONF_VARS:
        if env.get(name):
            log.info("CUDA allocator: keeping the user's %s=%s", name, env[name])
            return env[name]
    if torch.cuda.is_initialized():
        log.warning("CUDA already initialised: %s cannot take effect in this process", DEFAULT_ALLOC_CONF)
        return None
    env[ALLOC_CONF_VARS[0]] = DEFAULT_ALLOC_CONF
    return DEFAULT_ALLOC_CONF
