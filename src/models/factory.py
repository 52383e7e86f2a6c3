"""A thin factory over ``timm.create_model`` for any timm classifier in any role.

timm builds every network; this module only (1) maps the short names users type (``resnet50``,
``vit_base``, ...) to timm names (src/models/architecture.py), (2) adapts a model to small
images as its own metadata says it is built: a patch-embedding model (ViT, DeiT, ...) gets the
image size and a patch that follows it, a convolutional stem gets the 3x3 stride-1 small-image
stem (src/models/small_input.py), and (3) turns every way pretrained weights, a stem or an image
size can fail into a one-line ``UserError`` instead of a silent random init, a traceback or a
50-second retry loop.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import timm
import torch
from safetensors import SafetensorError
from timm.models import load_state_dict
from torch import nn

from src.errors import UserError, error_detail
from src.models.architecture import embeds_patches, first_conv, resolve_model_name
from src.models.small_input import adapt_conv_stem
from src.models.vit_patches import vit_patch_size

__all__ = ["SMALL_INPUT_BELOW", "check_runs_at", "count_parameters", "create_model", "resolve_model_name"]

SMALL_INPUT_BELOW = 64  # image sizes under this get the small-input stem by default
WEIGHT_SUFFIXES = (".safetensors", ".pth", ".pt", ".bin")
SIZE_FIX = "use another image size (--image-size, or models.image_size.<role> for one stage)"


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


def _create_pretrained(timm_name: str, **kwargs: Any) -> nn.Module:
    """timm's hub weights, with every way a download fails mapped to ``UserError``."""
    try:
        return timm.create_model(timm_name, pretrained=True, **kwargs)
    except OSError as exc:  # hub/urllib/connection errors and HF_HUB_OFFLINE all derive from OSError
        raise UserError(
            f"pretrained weights for {timm_name} could not be downloaded ({type(exc).__name__}); "
            "pass a local file with --set models.teacher_weights=PATH or run online"
        ) from exc
    except RuntimeError as exc:  # timm: "No pretrained weights exist for ..."
        raise UserError(f"pretrained weights for {timm_name} are not available: {exc}") from exc


def _create(timm_name: str, image_size: int, pretrained: bool, weights_path: str | Path | None,
            **kwargs: Any) -> nn.Module:
    """``timm.create_model`` from random, hub or file weights; a model that refuses the
    arguments its input needs (``img_size``, ``patch_size``) is a ``UserError``."""
    try:
        if weights_path is not None:
            return _create_from_file(timm_name, weights_path, **kwargs)
        if pretrained:
            return _create_pretrained(timm_name, **kwargs)
        return timm.create_model(timm_name, pretrained=False, **kwargs)
    except (TypeError, AssertionError, ValueError) as exc:
        raise UserError(f"model {timm_name} cannot be built as configured for {image_size}x{image_size} "
                        f"images ({error_detail(exc)}); leave out a setting it does not take "
                        f"(models.drop_path_rate) or {SIZE_FIX}") from None


def create_model(
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
    """Any timm classifier (or short name) with ``num_classes`` outputs for ``image_size`` images.

    A patch-embedding model is built for ``image_size`` with the patch ``vit_patch_size`` gives
    (``patch_size``, or one that follows the image size); any other model gets the small-image
    stem when ``small_input`` (None: ``image_size`` < 64). Pretrained weights (timm's hub, or a
    local ``weights_path``) are loaded before the stem is swapped.
    """
    timm_name = resolve_model_name(name)
    kwargs: dict[str, Any] = {"num_classes": num_classes}
    patches = embeds_patches(timm_name)
    if patches:
        kwargs.update(img_size=image_size, patch_size=vit_patch_size(image_size, patch_size))
    if drop_path_rate:  # not every model takes it (DenseNet, MobileNet v1, ...); 0 is everyone's default
        kwargs["drop_path_rate"] = drop_path_rate
    model = _create(timm_name, image_size, pretrained, weights_path, **kwargs)
    small = image_size < SMALL_INPUT_BELOW if small_input is None else small_input
    if small and not patches:
        adapt_conv_stem(model, timm_name, model.pretrained_cfg.get("first_conv") or first_conv(timm_name))
    return model


def check_runs_at(model: nn.Module, name: str, image_size: int) -> None:
    """Run one ``image_size`` image through ``model`` (eval mode, no gradients, nothing changed):
    a model whose layers cannot take that size fails here with a ``UserError``, before a stage
    holds any state, instead of with a traceback in its first training step."""
    device = next(model.parameters()).device
    was_training = model.training
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=[]):
            model.eval()(torch.zeros(1, 3, image_size, image_size, device=device))
    except (RuntimeError, ValueError, AssertionError) as exc:
        raise UserError(f"model {name} does not run on {image_size}x{image_size} images "
                        f"({error_detail(exc)}); {SIZE_FIX}") from None
    finally:
        model.train(was_training)


def count_parameters(model: nn.Module, trainable_only: bool = False) -> int:
    """Number of parameter elements (only those with ``requires_grad`` when asked)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
