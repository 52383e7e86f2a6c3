"""DKD and DIST against their reference definitions, limiting cases, AMP dtypes, and the one
home of the distillation settings' validity rules."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from src.config.loader import load_config
from src.distillation.losses import _non_target, dist_loss, dkd_loss, kd_loss, standardize_logits
from src.distillation.registry import KDSettings
from src.distillation.settings import DistillationConfig, check_distillation
from src.errors import UserError

LOSSES = ("kd", "dkd", "dist")


def _batch(seed: int = 0, classes: int = 6, size: int = 5, scale: float = 2.0):
    gen = torch.Generator().manual_seed(seed)
    student = torch.randn(size, classes, generator=gen, dtype=torch.float64) * scale
    teacher = torch.randn(size, classes, generator=gen, dtype=torch.float64) * scale
    labels = torch.randint(0, classes, (size,), generator=gen)
    return student, teacher, labels


def _call(loss: str, student, teacher, labels, **extra):
    if loss == "kd":
        return kd_loss(student, teacher, labels, temperature=4.0, alpha=0.9, **extra)
    if loss == "dkd":
        return dkd_loss(student, teacher, labels, temperature=4.0, alpha=1.0, beta=8.0, **extra)
    return dist_loss(student, teacher, labels, tau=4.0, beta=1.0, gamma=1.0, **extra)


# --------------------------------------------------------------------------- DKD


def _dkd_reference(s: torch.Tensor, t: torch.Tensor, y: torch.Tensor, T: float) -> tuple[float, float]:
    """mdistiller's dkd_loss written out in float64: binary probabilities by summing softmax
    entries, the non-target distribution by masking the target logit with -1000."""
    gt = F.one_hot(y, s.shape[1]).double()
    p_s, p_t = torch.softmax(s / T, 1), torch.softmax(t / T, 1)
    b_s = torch.stack([(p_s * gt).sum(1), (p_s * (1 - gt)).sum(1)], 1)
    b_t = torch.stack([(p_t * gt).sum(1), (p_t * (1 - gt)).sum(1)], 1)
    tckd = (b_t * (b_t.log() - b_s.log())).sum() / len(y) * T**2
    q_t = torch.softmax(t / T - 1000.0 * gt, 1)
    log_q_s = torch.log_softmax(s / T - 1000.0 * gt, 1)
    nckd = torch.where(q_t > 0, q_t * (q_t.log() - log_q_s), 0.0).sum() / len(y) * T**2
    return tckd.item(), nckd.item()


def test_dkd_matches_the_reference_formula() -> None:
    s, t, y = _batch(seed=1)
    loss, parts = dkd_loss(s, t, y, temperature=4.0, alpha=1.0, beta=8.0, ce_weight=1.0)
    tckd, nckd = _dkd_reference(s, t, y, 4.0)
    assert parts["tckd"].item() == pytest.approx(tckd, rel=1e-5)
    assert parts["nckd"].item() == pytest.approx(nckd, rel=1e-5)
    ce = F.cross_entropy(s, y).item()
    assert loss.item() == pytest.approx(ce + tckd + 8.0 * nckd, rel=1e-5)
    assert set(parts) == {"kd", "tckd", "nckd", "warmup", "ce"}


def test_dkd_parts_recompose_classical_kd_per_sample() -> None:
    """The DKD paper's identity (Eq. 5): KD = TCKD + (1 - p_t) * NCKD, with p_t the teacher's
    softened probability of the label, for each sample."""
    s, t, y = _batch(seed=2)
    T = 3.0
    for i in range(len(y)):
        one = slice(i, i + 1)
        _, kd = kd_loss(s[one], t[one], y[one], temperature=T, alpha=1.0)
        _, dkd = dkd_loss(s[one], t[one], y[one], temperature=T, alpha=1.0, beta=1.0)
        p_t = torch.softmax(t[i] / T, 0)[y[i]].item()
        assert kd["kd"].item() == pytest.approx(dkd["tckd"].item() + (1 - p_t) * dkd["nckd"].item(), rel=1e-5)


def test_dkd_is_zero_for_identical_logits_and_warmup_scales_only_the_kd_term() -> None:
    s, _, y = _batch(seed=3)
    loss, parts = dkd_loss(s, s.clone(), y, temperature=4.0, alpha=1.0, beta=8.0, label_smoothing=0.1)
    assert parts["tckd"].abs().item() < 1e-7 and parts["nckd"].abs().item() < 1e-7
    smoothed_ce = F.cross_entropy(s, y, label_smoothing=0.1)
    torch.testing.assert_close(loss.double(), smoothed_ce, rtol=1e-6, atol=1e-7)
    # the loss smooths its labels; its "ce" part stays the plain cross-entropy that curves.png
    # plots against the validation loss (the Objective contract)
    torch.testing.assert_close(parts["ce"].double(), F.cross_entropy(s, y), rtol=1e-6, atol=1e-7)
    _, t, _ = _batch(seed=4)
    cold, cold_parts = dkd_loss(s, t, y, temperature=4.0, alpha=1.0, beta=8.0, warmup=0.0, ce_weight=2.0)
    torch.testing.assert_close(cold.double(), 2.0 * F.cross_entropy(s, y), rtol=1e-6, atol=1e-7)
    assert cold_parts["kd"].item() > 0 and cold_parts["warmup"].item() == 0.0


def test_dkd_stays_finite_for_confident_logits() -> None:
    """mdistiller takes log() of summed probabilities; a teacher sure to 1e-40 must not give inf."""
    s, t, y = _batch(seed=5)
    t = t.clone()
    t[torch.arange(len(y)), y] += 200.0
    s = s.float().requires_grad_()
    loss, _ = dkd_loss(s, t.float(), y, temperature=1.0, alpha=1.0, beta=8.0)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(s.grad).all()


def test_non_target_gather_equals_masked_removal_in_value_and_order() -> None:
    """The gather that drops each row's target column (no boolean-mask sync on CUDA) keeps the
    other columns in their order, with the target in the first, the last and a middle column."""
    s, t, _ = _batch(seed=6, classes=7, size=9)
    y = torch.tensor([0, 6, 3, 0, 6, 1, 5, 2, 4])
    kept_s, kept_t = _non_target(s, t, y)
    keep = torch.ones_like(s, dtype=torch.bool).scatter(1, y[:, None], False)
    assert torch.equal(kept_s, s[keep].view(9, 6)) and torch.equal(kept_t, t[keep].view(9, 6))
    for i, label in enumerate(y.tolist()):
        columns = [c for c in range(7) if c != label]
        assert torch.equal(kept_s[i], s[i, columns]) and torch.equal(kept_t[i], t[i, columns])


# --------------------------------------------------------------------------- DIST


def _pearson_mean(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean([np.corrcoef(a[i], b[i])[0, 1] for i in range(len(a))]))


def test_dist_matches_pearson_relations_computed_by_numpy() -> None:
    s, t, y = _batch(seed=6, size=7)
    tau = 2.0
    loss, parts = dist_loss(s, t, y, tau=tau, beta=1.0, gamma=1.0, ce_weight=1.0)
    p_s = torch.softmax(s / tau, 1).numpy()
    p_t = torch.softmax(t / tau, 1).numpy()
    inter = tau**2 * (1 - _pearson_mean(p_s, p_t))
    intra = tau**2 * (1 - _pearson_mean(p_s.T, p_t.T))
    assert parts["inter"].item() == pytest.approx(inter, rel=1e-4)
    assert parts["intra"].item() == pytest.approx(intra, rel=1e-4)
    assert loss.item() == pytest.approx(F.cross_entropy(s, y).item() + inter + intra, rel=1e-4)
    _, weighted = dist_loss(s, t, y, tau=tau, beta=2.0, gamma=0.5)
    assert weighted["kd"].item() == pytest.approx(2.0 * inter + 0.5 * intra, rel=1e-4)
    assert set(parts) == {"kd", "inter", "intra", "ce"}


def test_dist_is_zero_for_identical_logits() -> None:
    s, _, y = _batch(seed=7, scale=4.0)
    _, parts = dist_loss(s, s.clone(), y, tau=1.0, beta=1.0, gamma=1.0)
    assert parts["kd"].item() < 1e-5  # 1 - Pearson, up to the reference's eps of 1e-8


# --------------------------------------------------------------------------- all losses


def test_standardized_logits_have_zero_mean_and_unit_std() -> None:
    z = standardize_logits(_batch(seed=8)[0] * 7 + 3)
    torch.testing.assert_close(z.mean(1), torch.zeros(5, dtype=torch.float64), atol=1e-9, rtol=0)
    torch.testing.assert_close(z.std(1), torch.ones(5, dtype=torch.float64), atol=1e-6, rtol=0)


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("standardize", [False, True])
def test_teacher_term_vanishes_for_a_student_equal_to_the_teacher(loss: str, standardize: bool) -> None:
    s, _, y = _batch(seed=9, scale=3.0)
    _, parts = _call(loss, s, s.clone(), y, standardize=standardize)
    # DIST: 1 - Pearson is zero up to the reference's eps (1e-8 over the norms of flat, tau=4 softmaxes)
    assert parts["kd"].abs().item() < (1e-3 if loss == "dist" else 1e-6)


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("standardize", [False, True])
def test_finite_float32_loss_and_gradients_from_half_precision_logits(loss: str, dtype: torch.dtype,
                                                                      standardize: bool) -> None:
    """What autocast hands the loss on a GPU: half-precision logits, here on the CPU."""
    s, t, y = _batch(seed=10, classes=100, size=16, scale=8.0)
    student = s.to(dtype).requires_grad_()
    value, parts = _call(loss, student, t.to(dtype), y, standardize=standardize, label_smoothing=0.1)
    value.backward()
    assert value.dtype == torch.float32 and torch.isfinite(value)
    assert student.grad.dtype == dtype and torch.isfinite(student.grad.float()).all()
    assert student.grad.float().abs().sum() > 0
    for name, part in parts.items():
        assert part.dim() == 0 and part.dtype == torch.float32 and not part.requires_grad, name


def _casts(node) -> int:
    """Float casts (``ToCopyBackward0`` nodes) in the backward graph below ``node``."""
    seen, stack, count = set(), [node], 0
    while stack:
        node = stack.pop()
        if node is None or node in seen:
            continue
        seen.add(node)
        count += type(node).__name__ == "ToCopyBackward0"
        stack.extend(next_node for next_node, _ in node.next_functions)
    return count


@pytest.mark.parametrize("loss", LOSSES)
@pytest.mark.parametrize("standardize", [False, True])
def test_half_precision_student_logits_are_cast_to_float32_once(loss: str, standardize: bool) -> None:
    """Under AMP every cast is a float32 copy of the logits kept for backward: one is enough."""
    s, t, y = _batch(seed=10, classes=10, size=4)
    student = s.half().requires_grad_()
    value, _ = _call(loss, student, t.half(), y, standardize=standardize, label_smoothing=0.1)
    assert _casts(value.grad_fn) == 1


@pytest.mark.parametrize("loss", LOSSES)
def test_gradient_reaches_the_student_only(loss: str) -> None:
    s, t, y = _batch(seed=11)
    s.requires_grad_()
    t.requires_grad_()
    value, _ = _call(loss, s, t, y)
    value.backward()
    assert s.grad is not None and t.grad is None


# --------------------------------------------------------------------------- settings


@pytest.mark.parametrize(("key", "value"), [
    ("temperature", 0.0), ("temperature", -1.0), ("temperature", math.inf), ("temperature", math.nan),
    ("alpha_start", 1.5), ("alpha_end", -0.1),
])
def test_check_distillation_names_the_bad_key(key: str, value: float) -> None:
    cfg = DistillationConfig(**{key: value}) if key == "temperature" else DistillationConfig(
        sections={"kd": KDSettings(**{key: value})})
    with pytest.raises(UserError, match=f"distillation.{key}"):
        check_distillation(cfg)


def test_loader_refuses_bad_loss_settings_by_name() -> None:
    cfg = load_config(None, ["distillation.loss=dkd", "distillation.dkd.beta=2", "distillation.dist.gamma=0"])
    assert cfg.distillation.loss == "dkd" and cfg.distillation.sections["dkd"].beta == 2.0
    for override, key in (("distillation.dkd.beta=-1", "distillation.dkd.beta"),
                          ("distillation.dist.ce_weight=inf", "distillation.dist.ce_weight"),
                          ("distillation.dkd.warmup_fraction=2", "distillation.dkd.warmup_fraction"),
                          ("distillation.temperature=inf", "distillation.temperature"),
                          ("distillation.loss=fitnet", "distillation.loss")):
        with pytest.raises(UserError, match=key.replace(".", r"\.")):
            load_config(None, [override])
