"""Where a ViT looks: the last block's CLS-token attention over the patches, saved as a PNG.

Any model with timm's ViT-style attention blocks qualifies (ViT, DeiT, EVA, BEiT, ...: a
``patch_embed`` with a token grid, ``blocks`` whose attention has timm's explicit path), whatever
its name. timm's ``Attention`` normally runs fused ``scaled_dot_product_attention``, which never
materialises the attention probabilities. For one batch we switch the last block to timm's
own explicit path (``fused_attn = False``) and read the probabilities at ``attn_drop`` (an
identity in eval mode), so the maps are exactly what the model computes, with no copy of its
maths here. Everything is undone afterwards: flag, hook, training mode, captured tensors.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure
from torch import nn

from src.utils.atomic import atomic_write_with


def should_visualize(epoch: int, every: int) -> bool:
    """True on every ``every``-th epoch (1-based); ``every <= 0`` disables the maps."""
    return every > 0 and epoch % every == 0


def has_vit_attention(model: nn.Module) -> bool:
    """Whether ``model`` has timm's ViT-style attention blocks the maps can be read from: a
    ``patch_embed`` with a ``grid_size``, prefix tokens, and a last block whose ``attn`` has
    timm's switch to the explicit path (``fused_attn``), its ``attn_drop`` and ``num_heads``."""
    model = getattr(model, "module", model)  # DistributedDataParallel wraps the model
    blocks = getattr(model, "blocks", None)
    if not isinstance(blocks, (nn.Sequential, nn.ModuleList)) or len(blocks) == 0:
        return False
    attn = getattr(blocks[-1], "attn", None)
    return (hasattr(getattr(model, "patch_embed", None), "grid_size") and hasattr(model, "num_prefix_tokens")
            and all(hasattr(attn, name) for name in ("fused_attn", "attn_drop", "num_heads")))


def _last_block_attention(model: nn.Module, images: torch.Tensor) -> torch.Tensor:
    """Attention probabilities (B, heads, tokens, tokens) of the last block, on the CPU."""
    attn = model.blocks[-1].attn
    captured: list[torch.Tensor] = []
    handle = attn.attn_drop.register_forward_hook(lambda _m, _i, out: captured.append(out.detach()))
    was_fused, was_training = attn.fused_attn, model.training
    try:
        attn.fused_attn = False
        model.eval()
        with torch.no_grad():
            model(images)
    finally:
        handle.remove()
        attn.fused_attn = was_fused
        model.train(was_training)
    if len(captured) != 1:
        raise RuntimeError("the last ViT block did not expose its attention probabilities")
    return captured.pop().float().cpu()


def _cls_maps(model: nn.Module, probs: torch.Tensor) -> torch.Tensor:
    """Per image and head, the attention the class token pays to each patch, as a (h, w) grid.

    Without a class token (average-pooled ViTs) the mean over all query tokens stands in.
    """
    prefix = model.num_prefix_tokens
    has_cls = getattr(model, "cls_token", None) is not None
    rows = probs[:, :, 0, prefix:] if has_cls else probs[:, :, prefix:, prefix:].mean(2)
    return rows.reshape(*rows.shape[:2], *model.patch_embed.grid_size)


def _displayable(image: torch.Tensor) -> np.ndarray:
    """A normalised (C, H, W) tensor as an (H, W, C) array in [0, 1] (grey: (H, W)) for imshow."""
    image = image.float().cpu()
    image = (image - image.min()) / (image.max() - image.min()).clamp_min(1e-12)
    return (image.permute(1, 2, 0) if image.shape[0] == 3 else image[0]).numpy()


def save_attention_maps(
    model: nn.Module,
    images: torch.Tensor,
    out_dir: Path,
    epoch: int,
    *,
    heads: Sequence[int] = (0,),
    max_images: int = 4,
) -> list[Path]:
    """Plot CLS attention of ``heads`` next to each of the first ``max_images`` images.

    Writes ``out_dir/attention_epoch{epoch:03d}.png`` atomically and returns its path. The
    model's training mode is restored; no hooks or captured tensors outlive the call.
    """
    vit = getattr(model, "module", model)  # DistributedDataParallel wraps the model
    if not has_vit_attention(vit):
        raise TypeError(f"attention maps need timm ViT-style attention blocks, got {type(vit).__name__}")
    num_heads = vit.blocks[-1].attn.num_heads
    if not heads or any(not 0 <= h < num_heads for h in heads):
        raise ValueError(f"heads must be indices in 0..{num_heads - 1}, got {tuple(heads)}")
    device = next(vit.parameters()).device
    batch = images[:max_images].to(device)
    maps = _cls_maps(vit, _last_block_attention(vit, batch)).numpy()

    fig = Figure(figsize=(2.2 * (1 + len(heads)), 2.2 * len(batch)), layout="constrained")
    axes = fig.subplots(len(batch), 1 + len(heads), squeeze=False)
    for row, image in enumerate(batch):
        shown = _displayable(image)
        axes[row, 0].imshow(shown, cmap="gray" if shown.ndim == 2 else None)
        axes[row, 0].set_title("input" if row == 0 else "", fontsize=8)
        for col, head in enumerate(heads, start=1):
            axes[row, col].imshow(shown, cmap="gray" if shown.ndim == 2 else None)
            extent = (-0.5, shown.shape[1] - 0.5, shown.shape[0] - 0.5, -0.5)
            axes[row, col].imshow(maps[row, head], cmap="inferno", alpha=0.6, extent=extent)
            axes[row, col].set_title(f"head {head}" if row == 0 else "", fontsize=8)
    for ax in axes.flat:
        ax.set_axis_off()
    fig.suptitle(f"CLS attention, last block, epoch {epoch}", fontsize=9)
    path = Path(out_dir) / f"attention_epoch{epoch:03d}.png"
    atomic_write_with(path, lambda tmp: fig.savefig(tmp, format="png", dpi=100))
    return [path]
