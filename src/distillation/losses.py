"""The distillation losses, each as its reference defines it, plus logit standardization.

    kd   (Hinton et al. 2015):  alpha * T^2 * KL(p_t^T || p_s^T) + (1 - alpha) * CE(s, y)
    dkd  (Zhao et al. 2022, mdistiller):
         ce_weight * CE(s, y) + warmup * (alpha * TCKD + beta * NCKD)
         TCKD = T^2 * KL([p_t, 1 - p_t] of teacher || same of student)   (target vs the rest)
         NCKD = T^2 * KL(teacher || student) over the non-target classes, renormalised
    dist (Huang et al. 2022, image_classification_sota):
         ce_weight * CE(s, y) + tau^2 * (beta * inter + gamma * intra)
         inter = 1 - mean over samples of Pearson(p_s[i, :], p_t[i, :])
         intra = 1 - mean over classes of Pearson(p_s[:, c], p_t[:, c])   (across the batch)

``p^T`` is ``softmax(logits / T)``. With ``standardize=True`` (Sun et al. 2024) both logit
vectors are z-scored per sample before the temperature: ``(z - mean(z)) / (std(z) + 1e-7)``.

Conventions, because frameworks disagree and the numbers are not comparable without them:

- kd's ``alpha`` weighs the distillation term (torchdistill's ``alpha`` weighs cross-entropy
  instead, so its 0.9 is our 0.1). DKD and DIST keep their references' separate weights.
- KL divergences are summed over classes and averaged over the batch ("batchmean"), the true
  per-sample KL. The TAKD reference code also divides by the number of classes; we do not.
- The ``T^2`` factor is kept: the gradient of a softened KL scales like ``1 / T^2``, so without
  it raising T would silently turn distillation down relative to the labels.
- Every cross-entropy term uses the run's ``label_smoothing``, as the labels-only stages do, so
  a KD stage differs from the baseline only by its teacher term.
- Everything is computed in float32 even under autocast: log-softmax of half-precision logits
  divided by T loses the small probabilities that carry the teacher's "dark knowledge".
- The functions are pure maths; each loss's registration (src/distillation/registry.py) holds
  its settings, their rules (checked once, by ``src.distillation.settings.check_distillation``)
  and its schedule, and calls its function here.

Every function returns ``(loss, parts)``: ``parts`` are detached 0-dim float32 tensors on the
logits' device (``ce`` and ``kd`` always; the teacher term ``kd`` is reported before its schedule
weight ``alpha``/``warmup``), so the engine can accumulate them without a host sync.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from src.engine.objective import cross_entropy_with_part

Parts = dict[str, torch.Tensor]

STANDARDIZE_EPS = 1e-7  # logit-standardization-KD's normalize()
PEARSON_EPS = 1e-8  # DIST's cosine similarity


def standardize_logits(logits: torch.Tensor) -> torch.Tensor:
    """Z-score each row (sample) of ``logits``: mean 0, unit (unbiased) standard deviation."""
    mean = logits.mean(dim=-1, keepdim=True)
    std = logits.std(dim=-1, keepdim=True)
    return (logits - mean) / (std + STANDARDIZE_EPS)


def _logits(student: torch.Tensor, teacher: torch.Tensor,
            standardize: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Float32 copies (the teacher's as a constant), z-scored when asked."""
    student, teacher = student.float(), teacher.detach().float()
    if standardize:
        return standardize_logits(student), standardize_logits(teacher)
    return student, teacher


def _parts(device: torch.device, **values: torch.Tensor | float) -> Parts:
    """Detached 0-dim float32 tensors on ``device``; schedule weights arrive as floats and are
    filled on the device (a fill kernel, not a host-to-device copy that could wait on the GPU)."""
    return {name: value.detach() if torch.is_tensor(value)
            else torch.full((), float(value), dtype=torch.float32, device=device)
            for name, value in values.items()}


def _softened_kl(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """``T^2 * KL(softmax(teacher / T) || softmax(student / T))``, batch mean."""
    kl = F.kl_div(F.log_softmax(student / temperature, dim=-1), F.log_softmax(teacher / temperature, dim=-1),
                  log_target=True, reduction="batchmean")
    return kl * temperature**2


def kd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    temperature: float,
    alpha: float,
    label_smoothing: float = 0.0,
    standardize: bool = False,
) -> tuple[torch.Tensor, Parts]:
    """Hinton's KD; parts ``kd`` (T^2-scaled KL, before alpha), ``ce`` and ``alpha``."""
    raw = student_logits.float()
    student, teacher = _logits(raw, teacher_logits, standardize)
    kd = _softened_kl(student, teacher, temperature)
    ce, plain_ce = cross_entropy_with_part(raw, labels, label_smoothing)
    loss = alpha * kd + (1.0 - alpha) * ce
    return loss, _parts(raw.device, kd=kd, ce=plain_ce, alpha=alpha)


def _target_and_rest(logits: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(log p_target, log(1 - p_target)) of ``softmax(logits)``, computed in log space."""
    log_all = torch.logsumexp(logits, dim=-1)
    target = logits.gather(1, labels[:, None]).squeeze(1)
    rest = logits.scatter(1, labels[:, None], float("-inf"))
    return target - log_all, torch.logsumexp(rest, dim=-1) - log_all


def _non_target(student: torch.Tensor, teacher: torch.Tensor,
                labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Both logit matrices without each row's target column (shape [N, C - 1], order kept).

    A gather on column indices that skip the label, built once for both: boolean-mask indexing
    would need a ``nonzero`` and so a host-device sync on CUDA."""
    rows, classes = student.shape
    idx = torch.arange(classes - 1, device=student.device).expand(rows, -1)
    idx = idx + (idx >= labels[:, None])
    return student.gather(1, idx), teacher.gather(1, idx)


def dkd_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    temperature: float,
    alpha: float,
    beta: float,
    ce_weight: float = 1.0,
    warmup: float = 1.0,
    label_smoothing: float = 0.0,
    standardize: bool = False,
) -> tuple[torch.Tensor, Parts]:
    """Decoupled KD; parts ``tckd``, ``nckd`` (both T^2-scaled), ``kd`` = alpha*tckd + beta*nckd
    (before the warm-up factor), ``warmup`` and ``ce``.

    mdistiller builds the binary probabilities by summing softmax entries and masks the target
    with ``- 1000``; here the same quantities come from log-sum-exps and an exact removal of the
    target column, which is equal in value and stays finite for confident logits.
    """
    raw = student_logits.float()
    student, teacher = _logits(raw, teacher_logits, standardize)
    s, t = student / temperature, teacher / temperature
    s_target, s_rest = _target_and_rest(s, labels)
    t_target, t_rest = _target_and_rest(t, labels)
    s_binary = torch.stack([s_target, s_rest], dim=1)
    t_binary = torch.stack([t_target, t_rest], dim=1)
    tckd = F.kl_div(s_binary, t_binary, log_target=True, reduction="batchmean") * temperature**2
    nckd = _softened_kl(*_non_target(student, teacher, labels), temperature)
    kd = alpha * tckd + beta * nckd
    ce, plain_ce = cross_entropy_with_part(raw, labels, label_smoothing)
    loss = ce_weight * ce + warmup * kd
    return loss, _parts(raw.device, kd=kd, tckd=tckd, nckd=nckd, warmup=warmup, ce=plain_ce)


def _pearson_rows(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Pearson correlation of each row of ``a`` with the same row of ``b`` (DIST's eps)."""
    a = a - a.mean(dim=1, keepdim=True)
    b = b - b.mean(dim=1, keepdim=True)
    return (a * b).sum(dim=1) / (a.norm(dim=1) * b.norm(dim=1) + PEARSON_EPS)


def dist_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    tau: float,
    beta: float,
    gamma: float,
    ce_weight: float = 1.0,
    label_smoothing: float = 0.0,
    standardize: bool = False,
) -> tuple[torch.Tensor, Parts]:
    """DIST; parts ``inter``, ``intra`` (both tau^2-scaled), ``kd`` = beta*inter + gamma*intra
    and ``ce``. The intra-class relation is taken across the micro-batch the engine passes."""
    raw = student_logits.float()
    student, teacher = _logits(raw, teacher_logits, standardize)
    p_s, p_t = F.softmax(student / tau, dim=1), F.softmax(teacher / tau, dim=1)
    inter = (1.0 - _pearson_rows(p_s, p_t).mean()) * tau**2
    intra = (1.0 - _pearson_rows(p_s.T, p_t.T).mean()) * tau**2
    kd = beta * inter + gamma * intra
    ce, plain_ce = cross_entropy_with_part(raw, labels, label_smoothing)
    loss = ce_weight * ce + kd
    return loss, _parts(raw.device, kd=kd, inter=inter, intra=intra, ce=plain_ce)
