"""The ViT patch grid: which patch size an image size gets, and which ones fit.

Pure arithmetic without timm, so the config validation can refuse a patch that does not
divide the image before anything is written (the factory applies the same rule).
"""
from __future__ import annotations

from src.errors import UserError


def default_patch_size(img_size: int) -> int:
    """Patch size when none is given: 16 from 224 px up, else about an 8x8 token grid.

    The result always divides ``img_size`` (the largest divisor not above the target), so any
    ``--image-size`` works without the user having to pick a patch: 32 -> 4, 16 -> 2, 8 -> 1.
    """
    target = 16 if img_size >= 224 else max(1, img_size // 8)
    return next(p for p in range(min(target, img_size), 0, -1) if img_size % p == 0)


def vit_patch_size(img_size: int, patch_size: int | None) -> int:
    """The patch a ViT of ``img_size`` uses; a given ``patch_size`` must divide the image."""
    if img_size < 1:
        raise UserError(f"image size must be positive, got {img_size}")
    if patch_size is None:
        return default_patch_size(img_size)
    if patch_size < 1:
        raise UserError(f"models.patch_size must be at least 1, got {patch_size}")
    if img_size % patch_size:
        multiple = -(-img_size // patch_size) * patch_size
        raise UserError(
            f"ViT patch size {patch_size} does not divide the image size {img_size}: use an image size "
            f"that is a multiple of it (e.g. --image-size {multiple}), or --set models.patch_size=null "
            "to let the patch follow the image size"
        )
    return patch_size
