"""Which mean/std standardise the model's input: one choice per run, made by the weights.

A KD stage feeds one batch to its frozen teacher and to its student, so every stage of a chain
must see identically normalised inputs; the choice is therefore made once for the run. When the
teacher starts from pretrained timm weights (``models.pretrained`` or ``models.teacher_weights``),
the run uses the mean/std those weights were trained with, from timm's pretrained config of the
teacher's architecture (e.g. 0.5/0.5 for the augreg ViTs, ImageNet's for the ResNets): the teacher
then sees its inputs as it learned them. The stages that start from scratch learn under any fixed
per-channel standardisation equally well, and keeping theirs identical keeps the student, direct
and baseline stages a paired comparison. Without pretrained weights the run uses the dataset's
own statistics. A local ``teacher_weights`` file is taken to be timm's weights for the name given
(a name with a tag, e.g. ``vit_base_patch16_224.augreg_in21k``, picks that tag's statistics).
"""

from __future__ import annotations

from timm.models import get_pretrained_cfg

from src.config.schema import ModelsConfig
from src.data.transforms import Normalize
from src.errors import UserError
from src.models.factory import resolve_model_name

# Channel statistics. CIFAR: the published per-channel values of the official train sets.
# Digits: mean/std of all 1797 scikit-learn digits scaled to [0, 1] (grey, so equal per channel);
# fixed constants rather than per-split values, so the numbers never depend on the seed.
# Image folders: ImageNet's statistics, the convention of most photos and of timm's ResNets.
DATASET_STATS: dict[str, Normalize] = {
    "digits": Normalize((0.3053, 0.3053, 0.3053), (0.3760, 0.3760, 0.3760)),
    "cifar10": Normalize((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": Normalize((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "imagefolder": Normalize((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}


def weights_normalization(model_name: str) -> Normalize:
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
    return Normalize(tuple(cfg.mean), tuple(cfg.std))  # type: ignore[arg-type]


def run_normalization(dataset: str, models: ModelsConfig | None) -> Normalize:
    """The run's input normalisation: the pretrained teacher's, else the dataset's (module doc)."""
    if models is not None and (models.pretrained or models.teacher_weights):
        return weights_normalization(models.teacher)
    return DATASET_STATS[dataset]
