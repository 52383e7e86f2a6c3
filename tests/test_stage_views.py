"""Each stage's own view of the run's images: its size and normalisation, the images stored once,
and a distillation teacher fed the student's very batch converted to its view."""
from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch
from test_data_imagefolder import write_class_folders

from src.config.change_rules import compare_configs
from src.config.loader import load_config
from src.config.schema import RunConfig
from src.data.registry import DATASETS
from src.data.settings import DataConfig
from src.data.transforms import ModelInput, Normalize, ViewChange
from src.distillation.distiller import DistillationObjective
from src.errors import UserError
from src.models.settings import ModelsConfig
from src.rundirs.inputs import run_data, stage_data, stage_input, teacher_view_change

CPU = torch.device("cpu")
DIGITS = DATASETS["digits"].stats
TIMM_VIT = Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))  # timm's augreg ViT configs


def run_config(data: DataConfig, **models: object) -> RunConfig:
    return RunConfig(data=data, models=ModelsConfig(**models))  # type: ignore[arg-type]


def test_a_pretrained_teacher_sees_its_weights_statistics_and_every_other_stage_the_datasets() -> None:
    cfg = run_config(DataConfig(image_size=16, subset=20, augment=False), teacher="vit_base", pretrained=True)
    data = run_data(cfg, None)
    assert (data.mean, data.std) == (DIGITS.mean, DIGITS.std)  # the run's datasets: the dataset's own
    teacher = stage_data(cfg, data, "teacher")
    assert (teacher.mean, teacher.std) == (TIMM_VIT.mean, TIMM_VIT.std)
    for stage in ("assistant", "student", "baseline", "direct"):  # from scratch: a paired comparison
        assert stage_data(cfg, data, stage) is data
    for split in ("train", "val", "test"):  # the very same images, standardised the teacher's way
        image, plain = getattr(teacher, split)[0][0], getattr(data, split)[0][0]
        as_pixels = plain * torch.tensor(data.std)[:, None, None] + torch.tensor(data.mean)[:, None, None]
        torch.testing.assert_close(image, (as_pixels - 0.5) / 0.5)
        assert getattr(teacher, split).store is getattr(data, split).store  # stored once
    assert teacher.train._feeds is data.train._feeds and teacher.train.seed == data.train.seed
    resnet = run_config(DataConfig(subset=20), teacher="resnet50", teacher_weights="teacher.safetensors")
    assert stage_input(resnet, "teacher", data).normalize.std == (0.229, 0.224, 0.225)  # ImageNet's
    from_scratch = run_config(DataConfig(image_size=16, subset=20), teacher="vit_base")
    assert stage_data(from_scratch, data, "teacher") is data


def test_weights_of_an_unknown_pretrained_tag_are_a_user_error() -> None:
    cfg = run_config(DataConfig(subset=10), teacher="vit_base_patch16_224.no_such_tag", pretrained=True)
    with pytest.raises(UserError, match="unknown pretrained weights vit_base_patch16_224.no_such_tag"):
        stage_input(cfg, "teacher", run_data(cfg, None))


def test_each_role_sees_its_own_size_from_images_stored_once_at_the_largest(tmp_path: Path) -> None:
    write_class_folders(tmp_path, "train", per_class=8)  # 14x10 photos: no native size
    cfg = load_config(None, ["data.name=imagefolder", f"data.data_dir={tmp_path}", "data.image_size=12",
                             "models.image_size.teacher=20", "models.image_size.student=8"])
    data = run_data(cfg, None)
    assert data.train.store.size == 20  # decoded once, at the largest view
    sizes = {stage: stage_data(cfg, data, stage).train.batches([[(1, 0), (1, 1)]], CPU)
             for stage in ("teacher", "assistant", "student", "baseline")}
    assert {stage: next(batches)[0].shape[-1] for stage, batches in sizes.items()} == \
        {"teacher": 20, "assistant": 12, "student": 8, "baseline": 8}
    digits = load_config(None, ["models.image_size.teacher=32"])  # digits are 8 px: stored as they are
    assert run_data(digits, None).train.store.size == 8


def test_the_teacher_sees_the_students_batch_as_its_own_view_would_show_it() -> None:
    cfg = load_config(None, ["data.subset=20", "data.image_size=8", "models.teacher=vit_tiny",
                             "models.pretrained=true", "models.image_size.teacher=16"])
    data = run_data(cfg, None)
    student, teacher = stage_data(cfg, data, "direct"), stage_data(cfg, data, "teacher")
    keys = [[(1, i) for i in range(6)]]  # augmented: the same crops and flips for both views
    student_batch, _ = next(student.train.batches(keys, CPU))
    teacher_batch, _ = next(teacher.train.batches(keys, CPU))
    before = student_batch.clone()
    converted = teacher_view_change(cfg, data, "direct")(student_batch)
    assert torch.equal(student_batch, before)  # the student trains on its own input, untouched
    assert converted.shape == teacher_batch.shape == (6, 3, 16, 16)
    torch.testing.assert_close(converted, teacher_batch, rtol=0, atol=1e-5)  # linear: rounding apart
    channels_last = student_batch.contiguous(memory_format=torch.channels_last)
    kept = teacher_view_change(cfg, data, "direct")(channels_last)
    assert kept.is_contiguous(memory_format=torch.channels_last)  # a CNN teacher's layout on CUDA


def test_matching_views_hand_the_teacher_the_batch_itself() -> None:
    cfg = load_config(None)  # make run: one size, the dataset's statistics for every stage
    data = run_data(cfg, None)
    batch = torch.randn(2, 3, 8, 8)
    for stage in ("assistant", "student", "direct"):
        assert teacher_view_change(cfg, data, stage)(batch) is batch
    view = ModelInput(8, DIGITS)
    assert ViewChange(view, dataclasses.replace(view))(batch) is batch


class Recorder(torch.nn.Module):
    """A teacher that remembers the shape of what it was fed."""

    def __init__(self) -> None:
        super().__init__()
        self.head = torch.nn.Linear(3, 4)
        self.seen: list[tuple[int, ...]] = []

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        self.seen.append(tuple(images.shape))
        return self.head(images.mean((2, 3)))


def test_the_distillation_objective_feeds_its_teacher_through_the_view_change() -> None:
    student = torch.nn.Sequential(torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(3, 4))
    change = ViewChange(ModelInput(8, DIGITS), ModelInput(16, TIMM_VIT))
    teacher = Recorder()
    objective = DistillationObjective(teacher, teacher_input=change)
    out = objective.training_step(student, torch.randn(5, 3, 8, 8), torch.tensor([0, 1, 2, 3, 0]))
    assert teacher.seen == [(5, 3, 16, 16)] and out.logits.shape == (5, 4)


def test_a_roles_image_size_is_a_role_key_on_resume() -> None:
    every = "stages=teacher,assistant,student,baseline,direct"
    old, new = load_config(None, [every]), load_config(None, [every, "models.image_size.student=16"])
    trained = {stage: "finished" for stage in ("teacher", "assistant")}
    assert compare_configs(old, new, trained, split_exists=True) == \
        ([], ["models.image_size.student: None -> 16"])  # the student's stages have not started
    breaking, _ = compare_configs(old, new, {**trained, "baseline": "trained"}, split_exists=True)
    assert breaking == ["models.image_size.student: None -> 16 (stage baseline already trained with the old "
                        "value)"]
    teacher = load_config(None, [every, "models.image_size.teacher=16"])
    done = {"teacher": "finished", "baseline": "finished"}
    breaking, _ = compare_configs(old, teacher, done, split_exists=True)
    assert breaking == ["models.image_size.teacher: None -> 16 (stage teacher already trained with the old "
                        "value)"]  # the teacher and what it taught; never the baseline
