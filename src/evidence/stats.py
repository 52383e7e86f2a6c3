"""Paired statistics for "is stage A more accurate than stage B on the same test images?".

Both stages are scored on the same test images (one persisted split), so each image gives a
paired outcome. Across seeds the question has two sources of noise: which test images happen
to be in the split, and which seed a chain happened to get. :func:`paired_difference_interval`
covers both with a hierarchical bootstrap (resample seeds, then test images within each
resampled seed); :func:`mcnemar_exact` is the per-seed exact test on the discordant images.
Inputs are boolean "was this image classified correctly" arrays; outputs are fractions.
"""
from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.stats import binomtest

Correct = np.ndarray  # bool per test image, in split order


@dataclass(frozen=True)
class McNemar:
    """Exact McNemar test: ``only_a`` images A got right and B wrong, ``only_b`` the reverse;
    two-sided binomial p-value of ``only_a`` out of the discordant pairs at 1/2."""

    only_a: int
    only_b: int
    p_value: float


@dataclass(frozen=True)
class Interval:
    """Accuracy of A minus accuracy of B (fractions): the mean over seeds and its bootstrap
    percentile interval at ``confidence``."""

    estimate: float
    low: float
    high: float
    seeds: int
    confidence: float


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


def paired_difference_interval(per_seed: Sequence[tuple[Correct, Correct]], *, confidence: float = 0.95,
                               replicates: int = 10_000, rng_seed: int = 0) -> Interval:
    """Hierarchical bootstrap of the accuracy difference A - B.

    Each replicate draws as many seeds as there are, with replacement, and for each drawn seed
    resamples its test images with replacement (an image keeps its A and B outcomes together,
    so the pairing is kept); the replicate's value is the mean over the drawn seeds of A's
    accuracy minus B's. With one seed only the images are resampled. Resampling images only
    needs how many of them A alone, B alone, or both/neither got right, so each draw is one
    multinomial. ``rng_seed`` makes the interval a pure function of the outcomes.
    """
    if not per_seed:
        raise ValueError("need at least one seed's outcomes")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence}")
    counts, probabilities, differences = [], [], []
    for a, b in per_seed:
        a, b = _paired(a, b)
        diff = a.astype(np.int8) - b.astype(np.int8)
        tally = np.array([np.sum(diff == 1), np.sum(diff == -1), np.sum(diff == 0)])
        counts.append(diff.size)
        probabilities.append(tally / diff.size)
        differences.append(float(diff.mean()))
    rng = np.random.default_rng(rng_seed)
    seeds = len(per_seed)
    drawn = rng.integers(0, seeds, size=(replicates, seeds))
    total = np.zeros(replicates)
    for seed in range(seeds):
        picks = drawn == seed  # every (replicate, slot) that drew this seed gets its own image resample
        resampled = rng.multinomial(counts[seed], probabilities[seed], size=int(picks.sum()))
        values = np.zeros(drawn.shape)
        values[picks] = (resampled[:, 0] - resampled[:, 1]) / counts[seed]
        total += values.sum(axis=1)
    means = total / seeds
    tail = (1.0 - confidence) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return Interval(float(np.mean(differences)), float(low), float(high), seeds, confidence)


def mean_and_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (ddof 1; NaN for a single value: not measured)."""
    array = np.asarray(values, dtype=float)
    std = float(np.std(array, ddof=1)) if array.size > 1 else float("nan")
    return float(np.mean(array)), std
