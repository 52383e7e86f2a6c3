"""Paired statistics for "is stage A more accurate than stage B on the same test images?".

Both stages are scored on the same test images (one persisted split), and every seed's chain is
scored on those same images, so the outcomes form a seeds x images table of paired differences
``D[s, i] = correct_A - correct_B`` (-1, 0 or +1). The accuracy difference is its mean. It has
two sources of noise, *crossed*: which seed a chain happened to get (shared by all images of that
seed) and which images happened to be in the test split (shared by all seeds).
:func:`paired_difference_interval` treats both as random effects of a two-way layout, with a t
quantile for the few seeds; :func:`mcnemar_exact` is the per-seed exact test on the discordant
images; :func:`holm` adjusts a report's p-values for their number. Inputs are boolean "was this
image classified correctly" arrays; outputs are fractions.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from scipy.stats import binomtest
from scipy.stats import t as student_t

Correct = np.ndarray  # bool per test image, in split order


@dataclass(frozen=True)
class McNemar:
    """Exact McNemar test: ``only_a`` images A got right and B wrong, ``only_b`` the reverse;
    two-sided binomial p-value of ``only_a`` out of the discordant pairs at 1/2. ``p_holm`` is
    the p-value Holm-adjusted over every test of the report it is in (None until adjusted)."""

    only_a: int
    only_b: int
    p_value: float
    p_holm: float | None = None


@dataclass(frozen=True)
class Interval:
    """Accuracy of A minus accuracy of B (fractions): the mean over seeds, its interval at
    ``confidence``, each seed's own difference, and the two variance parts of the mean (seeds,
    shared test images) with the t quantile's degrees of freedom."""

    estimate: float
    low: float
    high: float
    seeds: int
    confidence: float
    per_seed: tuple[float, ...] = ()
    seed_variance: float = 0.0
    image_variance: float = 0.0
    degrees_of_freedom: float = float("nan")


class Bounds(NamedTuple):
    """:func:`difference_bounds`' arrays, one value per experiment (the leading axes)."""

    estimate: np.ndarray
    low: np.ndarray
    high: np.ndarray
    seed_variance: np.ndarray
    image_variance: np.ndarray
    degrees_of_freedom: np.ndarray


def _paired(a: Correct, b: Correct) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a, dtype=bool), np.asarray(b, dtype=bool)
    if a.shape != b.shape or a.ndim != 1 or a.size == 0:
        raise ValueError(f"need two equal-length, non-empty 1-D outcome arrays, got {a.shape} and {b.shape}")
    return a, b


def mcnemar_exact(a: Correct, b: Correct) -> McNemar:
    """The exact (binomial) McNemar test of A against B on the same images."""
    a, b = _paired(a, b)
    only_a, only_b = int(np.sum(a & ~b)), int(np.sum(~a & b))
    discordant = only_a + only_b
    p_value = 1.0 if discordant == 0 else float(binomtest(only_a, discordant, 0.5).pvalue)
    return McNemar(only_a, only_b, p_value)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjustment: the k-th smallest of m p-values times (m - k + 1), made
    non-decreasing in that order, capped at 1. Rejecting where the adjusted value is below 5%
    keeps the chance of any false rejection among all m tests at 5%, whatever their dependence."""
    p = np.asarray(p_values, dtype=float)
    order = np.argsort(p, kind="stable")
    scaled = (p.size - np.arange(p.size)) * p[order]
    adjusted = np.empty_like(p)
    adjusted[order] = np.minimum(np.maximum.accumulate(scaled), 1.0)
    return adjusted.tolist()


def difference_bounds(differences: np.ndarray, confidence: float = 0.95) -> Bounds:
    """The interval of the mean of ``differences[..., seeds, images]`` (paired outcome
    differences), for every experiment on the leading axes at once.

    Model: ``D[s, i] = theta + seed effect + image effect + residual`` (seed x image interaction
    and the coin flip of each outcome), effects independent with mean zero; seeds are independent
    chains and the test images a random sample, so the mean's variance is ``var_seed / n +
    var_image / m + var_residual / (n m)``. From the two-way mean squares (no replication):

    - the seed part, ``MS_seed / (n m)``, is the squared standard error of the per-seed
      differences (it holds the residual's share); the image part, ``(MS_image - MS_residual) /
      (n m)``, cut at zero, is what the images all seeds share add;
    - the quantile is Student's t with Satterthwaite's degrees of freedom for that sum of mean
      squares, and the half-width is never below a t-interval with n - 1 degrees of freedom over
      the per-seed differences alone;
    - one seed: the images' variance over m with m - 1 degrees of freedom, which covers that
      seed's own difference, not the mean over seeds (seed variation is not measured).
    """
    d = np.asarray(differences, dtype=float)
    if d.ndim < 2 or d.shape[-2] < 1 or d.shape[-1] < 2:
        raise ValueError(f"need a (..., seeds, images) array of differences with at least two images, "
                         f"got shape {d.shape}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    seeds, images = d.shape[-2:]
    estimate = d.mean(axis=(-2, -1))
    quantile = 0.5 + confidence / 2
    image_means = d.mean(axis=-2)
    if seeds == 1:
        image_variance = image_means.var(axis=-1, ddof=1) / images
        df = np.full_like(estimate, images - 1)
        half = student_t.ppf(quantile, df) * np.sqrt(image_variance)
        return Bounds(estimate, estimate - half, estimate + half, np.zeros_like(estimate), image_variance, df)
    seed_means = d.mean(axis=-1)
    cells = seeds * images
    ms_seed = images * seed_means.var(axis=-1, ddof=1)
    ms_image = seeds * image_means.var(axis=-1, ddof=1)
    residual = d - seed_means[..., :, None] - image_means[..., None, :] + estimate[..., None, None]
    residual_df = (seeds - 1) * (images - 1)
    ms_residual = np.square(residual).sum(axis=(-2, -1)) / residual_df
    seed_variance = ms_seed / cells
    shared = ms_image > ms_residual
    image_variance = np.where(shared, ms_image - ms_residual, 0.0) / cells
    variance = seed_variance + image_variance
    spread = seed_variance ** 2 / (seeds - 1) + np.where(
        shared, (ms_image / cells) ** 2 / (images - 1) + (ms_residual / cells) ** 2 / residual_df, 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        df = np.where(spread > 0, variance ** 2 / spread, seeds - 1.0)
    half = np.maximum(student_t.ppf(quantile, df) * np.sqrt(variance),
                      student_t.ppf(quantile, seeds - 1) * np.sqrt(seed_variance))
    return Bounds(estimate, estimate - half, estimate + half, seed_variance, image_variance, df)


def paired_difference_interval(per_seed: Sequence[tuple[Correct, Correct]], *,
                               confidence: float = 0.95) -> Interval:
    """The accuracy difference A - B over seeds on shared test images, with its interval
    (:func:`difference_bounds`): a pure function of the outcomes."""
    if not per_seed:
        raise ValueError("need at least one seed's outcomes")
    pairs = [_paired(a, b) for a, b in per_seed]
    if len({a.size for a, _ in pairs}) != 1:
        raise ValueError("every seed must be scored on the same test images")
    differences = np.stack([a.astype(np.int8) - b.astype(np.int8) for a, b in pairs])
    bounds = difference_bounds(differences, confidence)
    return Interval(float(bounds.estimate), float(bounds.low), float(bounds.high), len(pairs), confidence,
                    tuple(float(x) for x in differences.mean(axis=1)), float(bounds.seed_variance),
                    float(bounds.image_variance), float(bounds.degrees_of_freedom))


def mean_and_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof 1; NaN for a single value: not measured)."""
    array = np.asarray(values, dtype=float)
    std = float(np.std(array, ddof=1)) if array.size > 1 else float("nan")
    return float(np.mean(array)), std
