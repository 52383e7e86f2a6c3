"""DistillationObjective: a frozen, always-eval teacher outside the student; alpha per epoch."""

from __future__ import annotations

import pytest
import torch

from src.distillation.distiller import DistillationObjective
from src.distillation.losses import dist_loss, dkd_loss, kd_loss
from src.distillation.registry import DKDSettings, KDSettings, dkd_warmup
from src.distillation.settings import DistillationConfig
from src.errors import UserError
from src.models.factory import create_model

IMAGE = 8


@pytest.fixture
def pair() -> tuple[torch.nn.Module, torch.nn.Module]:
    torch.manual_seed(0)
    teacher = create_model("resnet34", num_classes=4, image_size=IMAGE)
    student = create_model("resnet18", num_classes=4, image_size=IMAGE)
    return teacher, student


def _batch(size: int = 4) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(1)
    return torch.randn(size, 3, IMAGE, IMAGE, generator=gen), torch.randint(0, 4, (size,), generator=gen)


def test_training_the_student_never_touches_the_teacher(pair) -> None:
    teacher, student = pair
    objective = DistillationObjective(teacher)
    before = {k: v.clone() for k, v in teacher.state_dict().items()}  # weights and BN statistics
    student_before = student.fc.weight.detach().clone()
    optimizer = torch.optim.SGD(student.parameters(), lr=0.1)
    images, labels = _batch()

    for _ in range(2):
        student.train()
        out = objective.training_step(student, images, labels)
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()

    assert all(p.grad is None and not p.requires_grad for p in teacher.parameters())
    for key, value in teacher.state_dict().items():
        assert torch.equal(value, before[key]), key
    assert not torch.equal(student.fc.weight, student_before)


def test_teacher_stays_in_eval_mode(pair) -> None:
    teacher, student = pair
    objective = DistillationObjective(teacher)
    assert not teacher.training
    student.train()  # what the engine does every epoch
    assert not teacher.training
    teacher.train()  # even if something flips it, the step puts it back before the forward
    bn_mean = teacher.bn1.running_mean.clone()
    objective.training_step(student, *_batch())
    assert not teacher.training
    assert torch.equal(teacher.bn1.running_mean, bn_mean)


def test_teacher_is_not_reachable_from_the_student(pair) -> None:
    teacher, student = pair
    DistillationObjective(teacher)
    teacher_params = {id(p) for p in teacher.parameters()}
    assert teacher_params.isdisjoint(id(p) for p in student.parameters())
    assert all(module is not teacher for module in student.modules())
    assert not any(key.startswith("teacher") for key in student.state_dict())


def test_alpha_follows_the_schedule_per_epoch(pair) -> None:
    teacher, student = pair
    objective = DistillationObjective(teacher, DistillationConfig(temperature=2.0))
    seen = []
    for epoch in range(1, 6):
        objective.on_epoch_start(epoch, 5)
        seen.append(objective.training_step(student, *_batch(2)).parts["alpha"].item())
    assert seen == pytest.approx([0.9, 0.8, 0.7, 0.6, 0.5])


def test_loss_matches_kd_loss_and_backward_works_under_autocast(pair) -> None:
    teacher, student = pair
    config = DistillationConfig(temperature=3.0, sections={"kd": KDSettings(alpha_start=0.7, alpha_end=0.7)})
    objective = DistillationObjective(teacher, config)
    images, labels = _batch()
    student.eval()  # deterministic forward so the two computations can be compared
    out = objective.training_step(student, images, labels)
    with torch.no_grad():
        expected, parts = kd_loss(student(images), teacher(images), labels, temperature=3.0, alpha=0.7)
    torch.testing.assert_close(out.loss.detach(), expected)
    assert set(out.parts) == {"ce", "kd", "alpha"}
    torch.testing.assert_close(out.parts["kd"], parts["kd"])
    assert out.logits.shape == (4, 4)

    # The engine wraps the step in autocast; the inference-mode teacher logits must not
    # break the student's backward pass.
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = objective.training_step(student, images, labels)
    out.loss.backward()
    assert student.fc.weight.grad is not None


def test_fingerprint_names_every_loss_setting_and_the_teacher(pair) -> None:
    teacher, _ = pair
    teacher_id = {"path": "runs/x/teacher/checkpoint_best.pt", "sha256": "ab" * 32}
    objective = DistillationObjective(teacher, label_smoothing=0.1, teacher_fingerprint=teacher_id)
    facts = objective.fingerprint()
    assert facts["objective"] == "DistillationObjective" and facts["teacher"] == teacher_id
    assert facts["label_smoothing"] == 0.1
    assert facts["distillation"]["loss"] == "kd" and facts["distillation"]["temperature"] == 4.0
    assert facts["distillation"]["dkd"]["beta"] == 8.0 and facts["distillation"]["dist"]["gamma"] == 1.0
    assert objective.to(torch.device("cpu")) is objective


def test_rejects_bad_settings(pair) -> None:
    teacher, _ = pair
    with pytest.raises(UserError, match="distillation.temperature"):
        DistillationObjective(teacher, DistillationConfig(temperature=0.0))
    with pytest.raises(UserError, match="distillation.alpha_start"):
        DistillationObjective(teacher, DistillationConfig(sections={"kd": KDSettings(alpha_start=1.5)}))


@pytest.mark.parametrize("loss", ["dkd", "dist"])
def test_configured_loss_is_the_one_trained_with_the_runs_label_smoothing(pair, loss: str) -> None:
    teacher, student = pair
    config = DistillationConfig(loss=loss, logit_standardization=True, temperature=2.0)
    objective = DistillationObjective(teacher, config, label_smoothing=0.2)
    images, labels = _batch()
    student.eval()
    out = objective.training_step(student, images, labels)
    with torch.no_grad():
        s, t = student(images), teacher(images)
        if loss == "dkd":
            expected, parts = dkd_loss(s, t, labels, temperature=2.0, alpha=1.0, beta=8.0,
                                       warmup=objective.scheduled["warmup"], label_smoothing=0.2,
                                       standardize=True)
        else:
            expected, parts = dist_loss(s, t, labels, tau=2.0, beta=1.0, gamma=1.0, label_smoothing=0.2,
                                        standardize=True)
    torch.testing.assert_close(out.loss.detach(), expected)
    assert set(out.parts) == set(parts)


def test_dkd_warmup_is_mdistillers_share_of_the_stage(pair) -> None:
    """mdistiller: min(epoch / 20, 1) over 240 epochs; the same 1/12 of any stage length."""
    assert [dkd_warmup(e, 240, 20 / 240) for e in (1, 10, 20, 21, 240)] == pytest.approx([0.05, 0.5, 1, 1, 1])
    assert [dkd_warmup(e, 24, 20 / 240) for e in (1, 2, 3)] == pytest.approx([0.5, 1, 1])
    assert dkd_warmup(1, 5, 0.0) == 1.0
    teacher, _ = pair
    config = DistillationConfig(loss="dkd", sections={"dkd": DKDSettings(warmup_fraction=0.5)})
    objective = DistillationObjective(teacher, config)
    logits, labels = torch.randn(3, 4), torch.tensor([0, 1, 2])
    seen = []
    for epoch in (1, 2, 3, 4):
        objective.on_epoch_start(epoch, 4)
        seen.append(objective.loss(logits, logits.flip(0), labels)[1]["warmup"].item())
    assert seen == pytest.approx([0.5, 1.0, 1.0, 1.0])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize(("loss", "standardize"), [("kd", False), ("dkd", False), ("dist", True)])
def test_cuda_fp16_autocast_step_with_grad_scaler(pair, loss: str, standardize: bool) -> None:
    teacher, student = (m.cuda() for m in pair)
    config = DistillationConfig(loss=loss, logit_standardization=standardize)
    objective = DistillationObjective(teacher, config).to(torch.device("cuda"))
    before = {k: v.clone() for k, v in teacher.state_dict().items()}
    optimizer = torch.optim.SGD(student.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cuda")
    images, labels = (t.cuda() for t in _batch())
    student.train()
    with torch.autocast("cuda", dtype=torch.float16):
        out = objective.training_step(student, images, labels)
    assert out.loss.dtype == torch.float32
    scaler.scale(out.loss).backward()
    scaler.step(optimizer)
    scaler.update()
    assert torch.isfinite(out.loss).item()
    assert all(torch.equal(v, before[k]) for k, v in teacher.state_dict().items())


def test_teacher_follows_channels_last_inputs_with_the_same_targets(pair) -> None:
    """On CUDA the engine feeds CNNs channels-last batches; the teacher's conv weights follow
    once (not re-laid out by cuDNN on every forward), and its soft targets do not change."""
    teacher, student = pair
    objective = DistillationObjective(teacher)
    images, labels = _batch()
    plain = objective.training_step(student, images, labels)
    assert teacher.conv1.weight.is_contiguous()
    fast = objective.training_step(student, images.contiguous(memory_format=torch.channels_last), labels)
    assert teacher.conv1.weight.is_contiguous(memory_format=torch.channels_last)
    assert not teacher.conv1.weight.is_contiguous()
    torch.testing.assert_close(fast.loss, plain.loss, rtol=1e-4, atol=1e-5)
