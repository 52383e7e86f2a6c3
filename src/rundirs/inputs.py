"""What each stage's model is fed: its own view of the run's one set of stored images.

A view is an image size and a normalisation (``ModelInput``). A stage's size is its role's
``models.image_size.<role>``, or ``data.image_size`` when that is null. Its normalisation follows
its weights: the teacher stage, when it starts from pretrained timm weights (``models.pretrained``
or ``models.teacher_weights``), sees the mean/std those weights were trained with (timm's
pretrained config of the teacher's architecture, tag included: a local file is taken to be
timm's weights for the name given), so it sees its inputs as it learned them. Every stage that
starts from scratch (the assistant, the student, the direct student and the baseline) uses the
dataset's own statistics: it learns equally well under any fixed standardisation, and sharing
one keeps student, direct and baseline a paired comparison.

The images are stored once (uint8, at their native size up to the largest view any role uses)
and every stage's datasets share those stores and feeds (``DataBundle.view``). A distillation
stage's teacher sees the student's very batch converted to the teacher's view
(``teacher_view_change``, src/data/transforms.py ``ViewChange``).
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

from src.config.schema import RunConfig
from src.config.stages import ROLES, STAGES
from src.data.build import DataBundle, build_datasets
from src.data.transforms import ModelInput, Normalize, ViewChange
from src.models.pretrained import weights_normalization


def stage_image_size(cfg: RunConfig, stage: str) -> int:
    """The square input size of ``stage``'s model."""
    return getattr(cfg.models.image_size, STAGES[stage].role) or cfg.data.image_size


def starts_pretrained(cfg: RunConfig, stage: str) -> bool:
    """Only the teacher stage may start from pretrained weights (timm's hub or a local file)."""
    return stage == "teacher" and bool(cfg.models.pretrained or cfg.models.teacher_weights)


def stage_input(cfg: RunConfig, stage: str, data: DataBundle) -> ModelInput:
    """``stage``'s view: its size, and its pretrained weights' mean/std or the dataset's (the
    statistics ``data`` was built with: ``run_data`` builds it with the dataset's own)."""
    normalize = (Normalize(*weights_normalization(cfg.models.teacher))  # type: ignore[arg-type]
                 if starts_pretrained(cfg, stage) else Normalize(data.mean, data.std))
    return ModelInput(stage_image_size(cfg, stage), normalize)


def stage_data(cfg: RunConfig, data: DataBundle, stage: str) -> DataBundle:
    """The run's datasets as ``stage``'s model sees them (module doc)."""
    return data.view(stage_input(cfg, stage, data))


def teacher_view_change(cfg: RunConfig, data: DataBundle, stage: str) -> ViewChange:
    """From ``stage``'s input to its teacher stage's: an identity when the two views match."""
    teacher_stage = STAGES[stage].teacher_stage
    assert teacher_stage is not None, f"stage {stage} has no teacher"
    return ViewChange(stage_input(cfg, stage, data), stage_input(cfg, teacher_stage, data))


def largest_view(cfg: RunConfig) -> int:
    """The largest input size any role uses: the size the images are stored at (at most)."""
    return max(getattr(cfg.models.image_size, role) or cfg.data.image_size for role in ROLES)


def run_data(cfg: RunConfig, run_root: Path | None, *, write: bool = False) -> DataBundle:
    """The run's datasets under the dataset's own statistics, stored for the largest view: its
    split (made and saved in ``run_root`` when ``write``, else reused from there). A stage takes
    its own view of them with ``stage_data``."""
    stored = dataclasses.replace(cfg.data, image_size=largest_view(cfg))
    return build_datasets(stored, run_root, cfg.runtime.seed, write=write)
