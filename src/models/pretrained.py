"""What timm's pretrained configuration says about a model's weights: the input mean/std they
were trained with (e.g. 0.5/0.5 for the augreg ViTs, ImageNet's for the ResNets)."""
from __future__ import annotations

from timm.models import get_pretrained_cfg

from src.errors import UserError
from src.models.architecture import resolve_model_name


def weights_normalization(model_name: str) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """The mean/std of timm's pretrained weights for ``model_name`` (short or timm name)."""
    timm_name = resolve_model_name(model_name)
    try:
        cfg = get_pretrained_cfg(timm_name)
    except RuntimeError as exc:  # timm: "Invalid pretrained tag (...) for ..."
        raise UserError(f"unknown pretrained weights {timm_name}: {exc}") from None
    if cfg is None or cfg.mean is None or cfg.std is None:
        raise UserError(f"timm has no pretrained configuration for {timm_name}, so its input "
                        "normalisation is unknown; set models.pretrained=false and leave "
                        "models.teacher_weights unset to train it from scratch")
    return tuple(cfg.mean), tuple(cfg.std)
