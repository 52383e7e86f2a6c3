"""Small images for a convolutional stem: a 3x3 stride-1 first conv and no stem max-pool.

An ImageNet stem (ResNet's 7x7 stride-2 conv and 3x3 stride-2 max-pool, EfficientNet's and
MobileNet's 3x3 stride-2 conv, ConvNeXt's 4x4 stride-4 patchify conv) shrinks an 8-32 px image to
almost nothing before the first stage. The conv is found by timm's own metadata
(``pretrained_cfg["first_conv"]``), never by the model's name, and replaced by a 3x3 stride-1
conv with the same channels (freshly initialised: a 7x7 stride-2 kernel does not transfer); a
max-pool that directly follows it (after its norm and activation only) is dropped. For a timm
ResNet this is exactly the CIFAR stem: the same modules, drawn in the same order.
"""
from __future__ import annotations

from torch import nn

from src.errors import UserError


def _parent(model: nn.Module, path: str) -> tuple[nn.Module, str]:
    """The module holding ``path``'s last part, and that part's name."""
    *parents, leaf = path.split(".")
    holder = model
    for part in parents:
        holder = getattr(holder, part)
    return holder, leaf


def _has_conv(module: nn.Module) -> bool:
    return any(isinstance(m, nn.Conv2d) for m in module.modules())


def _stem_pool(model: nn.Module, path: str) -> tuple[nn.Module, str] | None:
    """(holder, name) of a max-pool that directly follows the first conv: the first one met in
    registration order (timm registers a stem in forward order) among the modules after it, its
    holder's and then each enclosing module's, before any module that holds a conv (a stage)."""
    parts = path.split(".")
    for depth in range(len(parts) - 1, -1, -1):
        holder = model.get_submodule(".".join(parts[:depth]))
        names = [name for name, _ in holder.named_children()]
        for name in names[names.index(parts[depth]) + 1:]:
            child = getattr(holder, name)
            if isinstance(child, nn.MaxPool2d):
                return holder, name
            if _has_conv(child):
                return None
    return None


def adapt_conv_stem(model: nn.Module, timm_name: str, first_conv: str | None) -> None:
    """Give ``model`` the small-image stem (module doc); a UserError when it has none to adapt."""
    fix = ("use images of 64 px or more (--image-size, models.image_size.<role>) or "
           "--set models.small_input=false")
    try:
        old = model.get_submodule(first_conv) if first_conv else None
    except AttributeError:
        old = None
    if not isinstance(old, nn.Conv2d) or old.groups != 1:
        raise UserError(f"cannot adapt the stem of {timm_name} to small images (its first conv "
                        f"{first_conv or '(unknown)'} is not a plain convolution); {fix}")
    assert first_conv is not None
    if old.kernel_size == (3, 3) and old.stride == (1, 1):
        return  # already a small-image stem
    holder, leaf = _parent(model, first_conv)
    conv = nn.Conv2d(old.in_channels, old.out_channels, kernel_size=3, stride=1, padding=1,
                     bias=old.bias is not None)
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)
    setattr(holder, leaf, conv)
    pool = _stem_pool(model, first_conv)
    if pool is not None:
        setattr(pool[0], pool[1], nn.Identity())
