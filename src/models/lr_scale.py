"""``get_model_specific_lr``: the learning rate scaled by model size, the one rule for every stage
and for users' own scripts (re-exported by ``src.utils.training_guards``).

Why: a chain trains models of very different sizes with one configured rate (the teacher's).
From scratch, the smaller models of a chain were less stable at it, so each stage trains at a
fraction of it that falls with the model's size. The size is the parameter count of the model's
body (without its classifier head, so the class count does not move it), in three tiers:

    body parameters   share of train.lr   the presets' models
    >= 22.5 M         1.0   teacher-size     ResNet-50 (23.5 M), ViT-Base (85.8 M)
    >= 16 M           0.75  assistant-size   ResNet-34 (21.3 M), ViT-Small (21.7 M)
    below             0.5   student-size     ResNet-18 (11.2 M), ViT-Tiny (5.5 M)

The tiers are coarse on purpose: they keep the factors the six preset models have always had
(the boundaries sit between their sizes), and put any other timm model with those of its size.
A name is counted on an instance built on the meta device in timm's default configuration; a
built model is counted as built (its image size moves a ViT's position embedding by well under
the margin to the next tier for the presets' sizes).
"""
from __future__ import annotations

import math
import numbers

from torch import nn

from src.errors import UserError
from src.models.architecture import architecture_parameters, body_parameters, resolve_model_name

# (smallest body parameter count, share of the base rate), largest tier first
LR_TIERS: tuple[tuple[float, float], ...] = ((22.5e6, 1.0), (16e6, 0.75), (0.0, 0.5))


def lr_share(parameters: int) -> float:
    """The share of the base learning rate for a model body of ``parameters`` parameters."""
    return next(share for smallest, share in LR_TIERS if parameters >= smallest)


def get_model_specific_lr(model: str | nn.Module, base_lr: float) -> float:
    """``base_lr`` scaled by model size (module doc): teacher-size 1.0x, assistant-size 0.75x,
    student-size 0.5x.

    ``model`` is a built model or a name: a short name (``resnet50``, ``vit_base``) or any timm
    model name, pretrained tag allowed (``resnet50.a1_in1k``); a name timm does not know raises
    ValueError, as does a base rate that is not a positive finite number.
    """
    if isinstance(base_lr, bool) or not isinstance(base_lr, numbers.Real) or not (
        math.isfinite(base_lr) and base_lr > 0
    ):
        raise ValueError(f"base_lr must be a positive finite number, got {base_lr!r}")
    if isinstance(model, nn.Module):
        return float(base_lr) * lr_share(body_parameters(model))
    try:
        timm_name = resolve_model_name(str(model).strip().lower())
    except UserError as exc:
        raise ValueError(f"no learning-rate scale: {exc}") from None
    return float(base_lr) * lr_share(architecture_parameters(timm_name))
