"""What an architecture is, asked of timm's own registry: its name, whether it cuts images into
patches, and how many parameters its body holds.

Every role takes any timm model name; the six short names of the presets (``resnet50``,
``vit_base``, ...) are aliases kept in ``SHORT_NAMES`` alone. Nothing here decides by a name's
spelling: a patch-embedding model is one whose pretrained configuration names a ``patch_embed``
module as its first conv (ViT, DeiT, EVA, Swin, ...), and a model's size is counted on an
instance built on the meta device (no memory, no random draws).
"""
from __future__ import annotations

from functools import cache

import timm
import torch
from timm.models import get_pretrained_cfg
from torch import nn

from src.errors import UserError

SHORT_NAMES: dict[str, str] = {
    "resnet50": "resnet50",
    "resnet34": "resnet34",
    "resnet18": "resnet18",
    "vit_base": "vit_base_patch16_224",
    "vit_small": "vit_small_patch16_224",
    "vit_tiny": "vit_tiny_patch16_224",
}
PATCH_EMBED = "patch_embed"  # timm's module name for a patch-embedding stem


def resolve_model_name(name: str) -> str:
    """The timm model name for a short name or a timm name (a pretrained tag allowed)."""
    resolved = SHORT_NAMES.get(name, name)
    if not timm.is_model(resolved):
        raise UserError(f"unknown model {name!r}: use a timm model name (timm.list_models() lists them) "
                        f"or one of the short names {', '.join(SHORT_NAMES)}")
    return resolved


def first_conv(timm_name: str) -> str | None:
    """The dotted path of the model's first convolution, as timm's pretrained configuration
    records it (``conv1``, ``stem.0``, ``patch_embed.proj``); None when timm has no configuration."""
    cfg = get_pretrained_cfg(timm_name.split(".")[0])
    path = None if cfg is None else cfg.first_conv
    return path if isinstance(path, str) else None


def embeds_patches(timm_name: str) -> bool:
    """Whether the architecture cuts its input into patches (a ``patch_embed`` stem): such a model
    is built for the image size and a patch that follows it, instead of adapting a conv stem."""
    path = first_conv(timm_name)
    if path is not None:
        return path.split(".")[0] == PATCH_EMBED
    return isinstance(getattr(_meta_model(timm_name), PATCH_EMBED, None), nn.Module)


def classifier_parameters(model: nn.Module) -> int:
    """Parameters of the classifier head (timm's ``get_classifier``; 0 for a model without one)."""
    get_classifier = getattr(model, "get_classifier", None)
    head = get_classifier() if callable(get_classifier) else None
    return sum(p.numel() for p in head.parameters()) if isinstance(head, nn.Module) else 0


def body_parameters(model: nn.Module) -> int:
    """Parameters without the classifier head: the model's size whatever its class count."""
    return sum(p.numel() for p in model.parameters()) - classifier_parameters(model)


@cache
def architecture_parameters(timm_name: str) -> int:
    """``body_parameters`` of the architecture in timm's default configuration (its own image
    size, no head), counted on the meta device: a property of the name alone."""
    return body_parameters(_meta_model(timm_name))


def _meta_model(timm_name: str) -> nn.Module:
    """The architecture without a head, on the meta device: shapes without storage or init draws."""
    with torch.random.fork_rng(devices=[]), torch.device("meta"):
        return timm.create_model(timm_name.split(".")[0], pretrained=False, num_classes=0)
