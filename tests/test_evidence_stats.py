"""The statistics behind the verdict, on constructed outcomes with known answers."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import binomtest

from src.evidence.stats import mcnemar_exact, mean_and_std, paired_difference_interval


def _outcomes(only_a: int, only_b: int, both: int, neither: int) -> tuple[np.ndarray, np.ndarray]:
    a = np.array([True] * only_a + [False] * only_b + [True] * both + [False] * neither)
    b = np.array([False] * only_a + [True] * only_b + [True] * both + [False] * neither)
    return a, b


def test_mcnemar_is_the_exact_binomial_test_on_the_discordant_images() -> None:
    result = mcnemar_exact(*_outcomes(only_a=10, only_b=2, both=200, neither=30))
    assert (result.only_a, result.only_b) == (10, 2)
    # by hand: 2 * P(X <= 2), X ~ Binomial(12, 1/2) = 2 * (1 + 12 + 66) / 4096
    assert result.p_value == pytest.approx(158 / 4096, rel=1e-12)
    assert result.p_value == pytest.approx(binomtest(10, 12, 0.5).pvalue, rel=1e-12)
    assert mcnemar_exact(*_outcomes(2, 10, 0, 5)).p_value == pytest.approx(result.p_value)  # symmetric
    assert mcnemar_exact(*_outcomes(0, 0, 50, 5)).p_value == 1.0  # no discordant image: no evidence


def test_identical_outcomes_give_a_zero_width_interval_at_zero() -> None:
    a, _ = _outcomes(0, 0, 80, 20)
    interval = paired_difference_interval([(a, a.copy()), (a, a.copy())], replicates=500)
    assert (interval.estimate, interval.low, interval.high) == (0.0, 0.0, 0.0)
    assert interval.seeds == 2


def test_always_right_against_always_wrong_is_exactly_one() -> None:
    a, b = _outcomes(only_a=50, only_b=0, both=0, neither=0)
    interval = paired_difference_interval([(a, b)], replicates=500)
    assert (interval.estimate, interval.low, interval.high) == (1.0, 1.0, 1.0)


def test_estimate_is_the_mean_over_seeds_of_the_accuracy_difference() -> None:
    seed_1 = _outcomes(only_a=12, only_b=2, both=80, neither=6)  # +10 points
    seed_2 = _outcomes(only_a=3, only_b=3, both=90, neither=4)  # 0 points
    interval = paired_difference_interval([seed_1, seed_2], replicates=2000)
    assert interval.estimate == pytest.approx(0.05)
    assert interval.low < 0.05 < interval.high


def test_one_seed_interval_matches_the_normal_approximation_of_a_paired_difference() -> None:
    n, only_a, only_b = 1000, 60, 30
    interval = paired_difference_interval([_outcomes(only_a, only_b, 800, n - 890)], replicates=20_000)
    d = np.array([1] * only_a + [-1] * only_b + [0] * (n - only_a - only_b))
    half_width = 1.96 * d.std() / math.sqrt(n)
    assert interval.estimate == pytest.approx(0.03)
    assert interval.low == pytest.approx(0.03 - half_width, abs=0.002)
    assert interval.high == pytest.approx(0.03 + half_width, abs=0.002)


def _simulate_seed(rng: np.random.Generator, images: int, gain: float) -> tuple[np.ndarray, np.ndarray]:
    """Paired outcomes whose expected accuracy difference A - B is ``gain``: A alone right with
    0.1 + gain/2, B alone right with 0.1 - gain/2, both right 0.7, neither 0.1."""
    kind = rng.choice(4, size=images, p=[0.1 + gain / 2, 0.1 - gain / 2, 0.7, 0.1])
    return np.isin(kind, (0, 2)), np.isin(kind, (1, 2))


def test_the_interval_covers_the_true_gain_including_seed_to_seed_variation() -> None:
    """Seeds differ in their true gain (sd 4 points around +1): the hierarchical interval covers
    the mean gain about as often as it claims; pooling every image as if from one seed ignores
    the seed variation and covers it far less often."""
    rng = np.random.default_rng(7)
    trials, covered, covered_pooled = 150, 0, 0
    for trial in range(trials):
        seeds = [_simulate_seed(rng, 400, gain) for gain in rng.normal(0.01, 0.04, size=8)]
        interval = paired_difference_interval(seeds, replicates=1000, rng_seed=trial)
        covered += interval.low <= 0.01 <= interval.high
        pooled = paired_difference_interval([(np.concatenate([a for a, _ in seeds]),
                                              np.concatenate([b for _, b in seeds]))],
                                             replicates=1000, rng_seed=trial)
        covered_pooled += pooled.low <= 0.01 <= pooled.high
    assert covered / trials >= 0.85
    assert covered_pooled / trials <= covered / trials - 0.15


def test_mean_and_std_use_the_sample_std_and_say_when_it_was_not_measured() -> None:
    assert mean_and_std([0.9, 0.92, 0.94]) == pytest.approx((0.92, 0.02))
    mean, std = mean_and_std([0.9])
    assert mean == 0.9 and math.isnan(std)


def test_unpaired_or_empty_outcomes_are_refused() -> None:
    with pytest.raises(ValueError):
        mcnemar_exact(np.ones(3, bool), np.ones(4, bool))
    with pytest.raises(ValueError):
        paired_difference_interval([])
