"""The KD loss maths: alpha/temperature conventions, the T^2 factor, label smoothing, logit
standardization, float32 under autocast. (Bad settings: tests/test_distillation_losses.py.)"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from src.distillation.losses import kd_loss

TEMPERATURES = (1.0, 2.0, 4.0, 8.0)


def _batch(
    seed: int = 0, classes: int = 10, size: int = 8
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    student = torch.randn(size, classes, generator=gen) * 2
    teacher = torch.randn(size, classes, generator=gen) * 2
    labels = torch.randint(0, classes, (size,), generator=gen)
    return student, teacher, labels


def test_alpha_zero_is_exactly_cross_entropy() -> None:
    student, teacher, labels = _batch()
    loss, parts = kd_loss(student, teacher, labels, temperature=4.0, alpha=0.0)
    assert torch.equal(loss, F.cross_entropy(student, labels))
    assert torch.equal(parts["ce"], loss)
    assert parts["alpha"].item() == 0.0


def test_identical_logits_give_zero_kd() -> None:
    student, _, labels = _batch()
    for temperature in TEMPERATURES:
        loss, parts = kd_loss(student, student.clone(), labels, temperature=temperature, alpha=1.0)
        assert parts["kd"].abs().item() < 1e-7
        assert loss.abs().item() < 1e-7


def test_matches_hand_computation_in_float64() -> None:
    student, teacher, labels = _batch(seed=3, classes=5, size=4)
    temperature, alpha = 3.0, 0.7
    loss, parts = kd_loss(student, teacher, labels, temperature=temperature, alpha=alpha)

    s, t = student.double(), teacher.double()
    p_teacher = torch.softmax(t / temperature, dim=1)
    log_p_student = torch.log_softmax(s / temperature, dim=1)
    kl_per_sample = (p_teacher * (p_teacher.log() - log_p_student)).sum(dim=1)
    kd = temperature**2 * kl_per_sample.mean()
    ce = -torch.log_softmax(s, dim=1)[torch.arange(4), labels].mean()
    torch.testing.assert_close(parts["kd"].double(), kd, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(parts["ce"].double(), ce, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(loss.double(), alpha * kd + (1 - alpha) * ce, rtol=1e-5, atol=1e-6)


def _kd_grad_norm(student: torch.Tensor, teacher: torch.Tensor, temperature: float, *, scaled: bool) -> float:
    logits = student.clone().requires_grad_()
    if scaled:
        loss, _ = kd_loss(
            logits, teacher, torch.zeros(len(student), dtype=torch.long), temperature=temperature, alpha=1.0
        )
    else:  # the same KL without the T^2 factor, as some implementations write it
        loss = F.kl_div(
            F.log_softmax(logits / temperature, dim=1),
            F.log_softmax(teacher / temperature, dim=1),
            log_target=True,
            reduction="batchmean",
        )
    loss.backward()
    return logits.grad.norm().item()


def test_t_squared_keeps_gradient_size_comparable_across_temperatures() -> None:
    student, teacher, _ = _batch(seed=1)
    scaled = [_kd_grad_norm(student, teacher, t, scaled=True) for t in TEMPERATURES]
    unscaled = [_kd_grad_norm(student, teacher, t, scaled=False) for t in TEMPERATURES]

    assert max(scaled) / min(scaled) < 2.0
    # Without T^2 the gradient shrinks roughly like 1/T^2: T=8 gives ~1/64 of T=1.
    assert unscaled[-1] / unscaled[0] < 1 / 30
    for temperature, with_t2, without in zip(TEMPERATURES, scaled, unscaled, strict=True):
        assert with_t2 == pytest.approx(without * temperature**2, rel=1e-4)


def test_gradient_flows_to_student_only() -> None:
    student, teacher, labels = _batch()
    student.requires_grad_()
    teacher.requires_grad_()
    loss, parts = kd_loss(student, teacher, labels, temperature=2.0, alpha=0.5)
    loss.backward()
    assert student.grad is not None and teacher.grad is None
    assert all(not p.requires_grad for p in parts.values())


def test_computes_in_float32_under_autocast() -> None:
    student, teacher, labels = _batch()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss, parts = kd_loss(student.bfloat16(), teacher.bfloat16(), labels, temperature=4.0, alpha=0.9)
    assert loss.dtype == torch.float32 and parts["kd"].dtype == torch.float32


def test_label_smoothing_reaches_the_cross_entropy_term() -> None:
    student, teacher, labels = _batch()
    loss, parts = kd_loss(student, teacher, labels, temperature=4.0, alpha=0.0, label_smoothing=0.1)
    torch.testing.assert_close(loss, F.cross_entropy(student, labels, label_smoothing=0.1))
    # the reported part is the plain cross-entropy, comparable with the validation loss
    torch.testing.assert_close(parts["ce"], F.cross_entropy(student, labels))


def test_standardized_kd_ignores_the_student_logits_scale_and_shift() -> None:
    """Logit standardization's point: a student whose logits are an affine copy of the teacher's
    has learned the teacher's relations, so the standardized KD term is zero; plain KD is not."""
    _, teacher, labels = _batch(seed=4)
    student = 3.0 * teacher + 2.0
    _, plain = kd_loss(student, teacher, labels, temperature=2.0, alpha=1.0)
    _, standardized = kd_loss(student, teacher, labels, temperature=2.0, alpha=1.0, standardize=True)
    assert plain["kd"].item() > 0.1
    assert standardized["kd"].abs().item() < 1e-6
