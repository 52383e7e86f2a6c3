"""Upper bounds on sizes no run can mean, checked by the loader before anything is written.

Without them a typo such as ``--image-size 100000`` gets as far as allocating the first batch and
dies in the allocator with a traceback, after config.yaml and split.json were already saved. The
bounds are far above any real setting (a 4096 px image is 16 megapixels; 32 GiB of float inputs
is a whole accelerator's memory), so they refuse only mistakes.
"""
from __future__ import annotations

from src.config.schema import RunConfig
from src.config.stages import ROLES
from src.errors import UserError

MAX_IMAGE_SIZE = 4096  # px per side, any role
MAX_MICRO_BATCH = 65_536  # images per step
MAX_MICRO_BATCH_GIB = 32  # float32 inputs of one step, 3 channels at the largest size
MAX_EFFECTIVE_BATCH = 1_048_576  # images per update (micro-batch x accumulation steps)
MAX_NUM_WORKERS = 256
_CHANNELS, _FLOAT_BYTES = 3, 4


def _refuse(ok: bool, message: str) -> None:
    if not ok:
        raise UserError(message)


def check_limits(cfg: RunConfig) -> None:
    """Refuse a size beyond its bound, naming the key and the bound."""
    sizes = {"data.image_size": cfg.data.image_size}
    sizes.update({f"models.image_size.{role}": getattr(cfg.models.image_size, role) for role in ROLES})
    for key, size in sizes.items():
        _refuse(size is None or size <= MAX_IMAGE_SIZE,
                f"config key '{key}': at most {MAX_IMAGE_SIZE} px, got {size}")
    t = cfg.train
    _refuse(t.batch_size <= MAX_MICRO_BATCH,
            f"config key 'train.batch_size': at most {MAX_MICRO_BATCH:,} images per step, "
            f"got {t.batch_size:,} (use train.accumulation_steps for a larger effective batch)")
    largest = max(size for size in sizes.values() if size is not None)
    gib = t.batch_size * _CHANNELS * largest * largest * _FLOAT_BYTES / 2**30
    _refuse(gib <= MAX_MICRO_BATCH_GIB,
            f"config key 'train.batch_size': {t.batch_size:,} images of {largest} px are {gib:,.0f} GiB of "
            f"float inputs per step, at most {MAX_MICRO_BATCH_GIB} GiB "
            "(lower the batch size or the image size)")
    images = t.batch_size * t.accumulation_steps
    _refuse(images <= MAX_EFFECTIVE_BATCH,
            f"config keys 'train.batch_size' x 'train.accumulation_steps': at most {MAX_EFFECTIVE_BATCH:,} "
            f"images per update, got {images:,}")
    _refuse(t.num_workers <= MAX_NUM_WORKERS,
            f"config key 'train.num_workers': at most {MAX_NUM_WORKERS}, got {t.num_workers}")
