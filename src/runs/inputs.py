"""Which mean/std standardise the model's input: one choice per run, made by the weights.

A KD stage feeds one batch to its frozen teacher and to its student, so every stage of a chain
must see identically normalised inputs; the choice is therefore made once for the run. When the
teacher starts from pretrained timm weights (``models.pretrained`` or ``models.teacher_weights``),
the run uses the mean/std those weights were trained with, from timm's pretrained config of the
teacher's architecture: the teacher then sees its inputs as it learned them. The stages that
start from scratch learn under any fixed per-channel standardisation equally well, and keeping
theirs identical keeps the student, direct and baseline stages a paired comparison. Without
pretrained weights the run uses the dataset's own statistics. A local ``teacher_weights`` file is
taken to be timm's weights for the name given (a name with a tag, e.g.
``vit_base_patch16_224.augreg_in21k``, picks that tag's statistics).
"""
from __future__ import annotations

from pathlib import Path

from src.config.schema import RunConfig
from src.data.build import DataBundle, build_datasets
from src.data.registry import DATASETS
from src.data.transforms import Normalize
from src.models.pretrained import weights_normalization


def run_normalization(cfg: RunConfig) -> Normalize:
    """The run's input normalisation: the pretrained teacher's, else the dataset's (module doc)."""
    models = cfg.models
    if models.pretrained or models.teacher_weights:
        return Normalize(*weights_normalization(models.teacher))  # type: ignore[arg-type]
    return DATASETS[cfg.data.name].stats


def run_data(cfg: RunConfig, run_root: Path | None, *, write: bool = False) -> DataBundle:
    """The run's datasets: its split (made and saved in ``run_root`` when ``write``, else reused
    from there) under the run's normalisation."""
    return build_datasets(cfg.data, run_root, cfg.runtime.seed, write=write, normalize=run_normalization(cfg))
