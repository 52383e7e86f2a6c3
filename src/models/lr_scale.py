"""``get_model_specific_lr``: the learning rate scaled by model size (re-exported by
``src.utils.training_guards``). Smaller models are less stable at the teacher's rate."""
from __future__ import annotations

import logging
import math
import numbers
import re

LOGGER = logging.getLogger("kd_pipeline.models")

_LR_SCALES = {
    "resnet50": 1.0,
    "vit_base": 1.0,
    "resnet34": 0.75,
    "vit_small": 0.75,
    "resnet18": 0.5,
    "vit_tiny": 0.5,
}
_MODEL_NAME = re.compile(r"(?P<base>resnet(?:18|34|50)|vit_(?:base|small|tiny))(?:[._].*)?")


def get_model_specific_lr(model_name: str, base_lr: float) -> float:
    """``base_lr`` scaled by model size: teacher-size 1.0x, assistant-size 0.75x, student-size 0.5x.

    Accepts the short names (``resnet50``, ``vit_base``) and timm names with suffixes
    (``vit_base_patch16_224``, ``resnet50.a1_in1k``); any other name raises ValueError listing
    the known ones.
    """
    if isinstance(base_lr, bool) or not isinstance(base_lr, numbers.Real) or not (
        math.isfinite(base_lr) and base_lr > 0
    ):
        raise ValueError(f"base_lr must be a positive finite number, got {base_lr!r}")
    match = _MODEL_NAME.fullmatch(str(model_name).strip().lower())
    if match is None:
        known = ", ".join(_LR_SCALES)
        raise ValueError(f"unknown model {model_name!r} for a learning-rate scale; known: {known}")
    return float(base_lr) * _LR_SCALES[match.group("base")]


def stage_lr(name: str, base_lr: float) -> float:
    """The size-scaled learning rate; architectures outside the known sizes keep ``base_lr``."""
    try:
        return get_model_specific_lr(name, base_lr)
    except ValueError:
        LOGGER.info("no learning-rate scale known for %s; using the base rate %g", name, base_lr)
        return base_lr
