"""A thin factory over ``timm.create_model`` for the TAKD chain's ResNets and ViTs.

timm builds every network; this module only (1) maps the short names users type
(``resnet50``, ``vit_base``, ...) to timm names, (2) adapts the models to small images
(a 3x3 stride-1 ResNet stem without max-pool, a ViT patch size that follows the image size)
and (3) turns every way pretrained weights can fail into a one-line ``UserError`` instead of
a silent random init or a 50-second retry loop ending in a traceback.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import timm
from safetensors import SafetensorError
from timm.models import load_state_dict
from timm.models.resnet import ResNet
from timm.models.vision_transformer import VisionTransformer
from torch import nn

from src.errors import UserError, error_detail
from src.models.vit_patches import vit_patch_size

SHORT_NAMES: dict[str, str] = {
    "resnet50": "resnet50",
    "resnet34": "resnet34",
    "resnet18": "resnet18",
    "vit_base": "vit_base_patch16_224",
    "vit_small": "vit_small_patch16_224",
    "vit_tiny": "vit_tiny_patch16_224",
}
SMALL_INPUT_BELOW = 64  # image sizes under this get the small-input stem / patch by default
WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")


def resolve_model_name(name: str) -> str:
    """Return the timm model name for a short name or an existing timm name (tags allowed)."""
    resolved = SHORT_NAMES.get(name, name)
    if not timm.is_model(resolved):
        raise UserError(f"unknown model {name!r}: use one of {', '.join(SHORT_NAMES)} or a timm model name")
    return resolved


def _missing_from_file(model: nn.Module, file_keys: set[str]) -> list[str]:
    """Model tensors the weights file does not provide, ignoring the classifier head.

    timm loads non-strictly whenever ``num_classes`` differs from the checkpoint's, so a file
    for another architecture would "load" without a single matching tensor: check it here.
    """
    classifier = model.pretrained_cfg.get("classifier") or ()
    heads = (classifier,) if isinstance(classifier, str) else tuple(classifier)
    return [
        key
        for key in model.state_dict()
        if key not in file_keys
        and not key.endswith("num_batches_tracked")
        and not any(key.startswith(f"{head}.") for head in heads)
    ]


def _create_from_file(timm_name: str, weights_path: str | Path, **kwargs: Any) -> nn.Module:
    """timm's own local-file loading (``pretrained_cfg_overlay=dict(file=...)``): its checkpoint
    filters adapt pos-embed/patch-embed to the new image size and drop a mismatched head."""
    path = Path(weights_path).expanduser()
    if not path.is_file():
        raise UserError(f"weights file not found: {path}")
    if path.suffix not in WEIGHT_SUFFIXES:
        raise UserError(f"weights file {path} must be one of {', '.join(WEIGHT_SUFFIXES)}")
    try:
        file_keys = set(load_state_dict(str(path)))
        model = timm.create_model(
            timm_name, pretrained=True, pretrained_cfg_overlay={"file": str(path)}, **kwargs
        )
    except (RuntimeError, KeyError, ValueError, OSError, SafetensorError) as exc:  # damaged file too
        raise UserError(f"weights file {path} does not fit {timm_name}: {error_detail(exc)}") from exc
    missing = _missing_from_file(model, file_keys)
    if missing:
        raise UserError(
            f"weights file {path} does not fit {timm_name}: {len(missing)} tensors missing "
            f"(e.g. {', '.join(missing[:3])})"
        )
    return model


def _create(timm_name: str, pretrained: bool, weights_path: str | Path | None, **kwargs: Any) -> nn.Module:
    """``timm.create_model`` with pretrained failures mapped to ``UserError``."""
    if weights_path is not None:
        return _create_from_file(timm_name, weights_path, **kwargs)
    if not pretrained:
        return timm.create_model(timm_name, pretrained=False, **kwargs)
    try:
        return timm.create_model(timm_name, pretrained=True, **kwargs)
    except OSError as exc:  # hub/urllib/connection errors and HF_HUB_OFFLINE all derive from OSError
        raise UserError(
            f"pretrained weights for {timm_name} could not be downloaded ({type(exc).__name__}); "
            "pass a local file with --set models.teacher_weights=PATH or run online"
        ) from exc
    except RuntimeError as exc:  # timm: "No pretrained weights exist for ..."
        raise UserError(f"pretrained weights for {timm_name} are not available: {exc}") from exc


def _use_small_stem(model: ResNet) -> None:
    """CIFAR-style stem: a 3x3 stride-1 conv (64 channels, no bias) and no max-pool.

    timm has no keyword for this (its ``stem_type='deep'`` is a stride-2 three-conv stem, a
    different network), so the modules are swapped after creation. Pretrained weights are
    loaded before the swap; the new conv1 is freshly initialised because a 7x7 stride-2 kernel
    does not transfer to a 3x3 stride-1 one. BatchNorm ``bn1`` keeps its (loaded) weights.
    """
    old = model.conv1
    if not isinstance(old, nn.Conv2d):
        raise UserError("small_input needs a ResNet with a single-conv stem (not a deep-stem variant)")
    model.conv1 = nn.Conv2d(old.in_channels, old.out_channels, kernel_size=3, stride=1, padding=1, bias=False)
    nn.init.kaiming_normal_(model.conv1.weight, mode="fan_out", nonlinearity="relu")
    model.maxpool = nn.Identity()


def get_resnet_model(
    name: str,
    num_classes: int,
    *,
    small_input: bool = True,
    pretrained: bool = False,
    weights_path: str | Path | None = None,
    drop_path_rate: float = 0.0,
) -> nn.Module:
    """A timm ResNet with ``num_classes`` outputs; ``small_input`` swaps in the 3x3 stem."""
    timm_name = resolve_model_name(name)
    model = _create(
        timm_name, pretrained, weights_path, num_classes=num_classes, drop_path_rate=drop_path_rate
    )
    if not isinstance(model, ResNet):
        raise UserError(
            f"model {name!r} is not a ResNet; the cnn family takes {', '.join(list(SHORT_NAMES)[:3])}"
        )
    if small_input:
        _use_small_stem(model)
    return model


def get_vit_model(
    name: str,
    num_classes: int,
    img_size: int,
    patch_size: int | None = None,
    *,
    pretrained: bool = False,
    weights_path: str | Path | None = None,
    drop_path_rate: float = 0.0,
) -> nn.Module:
    """A timm VisionTransformer for ``img_size`` images; the patch size follows the image size."""
    timm_name = resolve_model_name(name)
    patch = vit_patch_size(img_size, patch_size)
    model = _create(
        timm_name,
        pretrained,
        weights_path,
        num_classes=num_classes,
        img_size=img_size,
        patch_size=patch,
        drop_path_rate=drop_path_rate,
    )
    if not isinstance(model, VisionTransformer):
        raise UserError(
            f"model {name!r} is not a ViT; the vit family takes {', '.join(list(SHORT_NAMES)[3:])}"
        )
    return model


def create_model(
    family: str,
    name: str,
    num_classes: int,
    image_size: int,
    *,
    small_input: bool | None = None,
    patch_size: int | None = None,
    pretrained: bool = False,
    weights_path: str | Path | None = None,
    drop_path_rate: float = 0.0,
) -> nn.Module:
    """Build a model of ``family`` ("cnn" or "vit"); ``small_input=None`` means image_size < 64."""
    if family == "cnn":
        small = image_size < SMALL_INPUT_BELOW if small_input is None else small_input
        return get_resnet_model(
            name,
            num_classes,
            small_input=small,
            pretrained=pretrained,
            weights_path=weights_path,
            drop_path_rate=drop_path_rate,
        )
    if family == "vit":
        return get_vit_model(
            name,
            num_classes,
            image_size,
            patch_size,
            pretrained=pretrained,
            weights_path=weights_path,
            drop_path_rate=drop_path_rate,
        )
    raise UserError(f"unknown model family {family!r}: use cnn or vit")


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameter elements (only those with ``requires_grad`` when asked)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
