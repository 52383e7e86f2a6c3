"""The statistics behind the verdict, on constructed outcomes with known answers."""
from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import binomtest, t

from src.evidence.stats import (
    difference_bounds,
    holm,
    mcnemar_exact,
    mean_and_std,
    paired_difference_interval,
)


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
    interval = paired_difference_interval([(a, a.copy()), (a, a.copy())])
    assert (interval.estimate, interval.low, interval.high) == (0.0, 0.0, 0.0)
    assert interval.seeds == 2 and interval.per_seed == (0.0, 0.0)


def test_always_right_against_always_wrong_is_exactly_one() -> None:
    a, b = _outcomes(only_a=50, only_b=0, both=0, neither=0)
    interval = paired_difference_interval([(a, b)])
    assert (interval.estimate, interval.low, interval.high) == (1.0, 1.0, 1.0)


def test_estimate_is_the_mean_over_seeds_of_the_accuracy_difference() -> None:
    seed_1 = _outcomes(only_a=12, only_b=2, both=80, neither=6)  # +10 points
    seed_2 = _outcomes(only_a=3, only_b=3, both=90, neither=4)  # 0 points
    interval = paired_difference_interval([seed_1, seed_2])
    assert interval.estimate == pytest.approx(0.05)
    assert interval.per_seed == pytest.approx((0.10, 0.0))
    assert interval.low < 0.05 < interval.high


def test_one_seed_interval_is_the_t_interval_of_the_paired_differences() -> None:
    n, only_a, only_b = 1000, 60, 30
    interval = paired_difference_interval([_outcomes(only_a, only_b, 800, n - 890)])
    d = np.array([1] * only_a + [-1] * only_b + [0] * (n - only_a - only_b))
    low, high = t.interval(0.95, n - 1, loc=d.mean(), scale=d.std(ddof=1) / math.sqrt(n))
    assert interval.estimate == pytest.approx(0.03)
    assert (interval.low, interval.high) == pytest.approx((low, high), rel=1e-12)
    assert interval.degrees_of_freedom == n - 1 and interval.seed_variance == 0.0


def test_seeds_whose_images_all_agree_give_the_t_interval_over_the_seeds() -> None:
    """No image effect at all (each seed's difference is the same on every image): the interval
    is exactly Student's t over the per-seed differences, n - 1 degrees of freedom."""
    per_seed = np.array([0.03, -0.01, 0.02, 0.05])
    bounds = difference_bounds(np.repeat(per_seed[:, None], 300, axis=1))
    low, high = t.interval(0.95, 3, loc=per_seed.mean(), scale=per_seed.std(ddof=1) / 2)
    assert (float(bounds.low), float(bounds.high)) == pytest.approx((low, high), rel=1e-12)
    assert float(bounds.image_variance) == pytest.approx(0.0, abs=1e-15)
    assert float(bounds.degrees_of_freedom) == pytest.approx(3)


def test_a_repeated_seed_adds_no_information_about_the_images() -> None:
    """Three seeds with identical outcomes carry only one seed's evidence about the shared test
    images: the interval is the one-seed interval, not one that pretends three test sets."""
    a, b = _outcomes(only_a=40, only_b=15, both=300, neither=45)
    once = paired_difference_interval([(a, b)])
    thrice = paired_difference_interval([(a, b)] * 3)
    assert (thrice.low, thrice.high) == pytest.approx((once.low, once.high), rel=1e-9)
    assert thrice.seed_variance == 0.0 and thrice.image_variance == pytest.approx(once.image_variance)


def test_holm_multiplies_the_kth_smallest_p_by_m_minus_k_plus_1_and_keeps_the_order() -> None:
    # by hand: sorted 0.005, 0.01, 0.03, 0.04 -> 4x, 3x, 2x, 1x = 0.02, 0.03, 0.06, 0.04 -> cumulative max
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])  # capped at 1
    assert holm([0.04]) == pytest.approx([0.04])  # one test: nothing to adjust
    assert holm([]) == []


def test_mean_and_std_use_the_sample_std_and_say_when_it_was_not_measured() -> None:
    assert mean_and_std([0.9, 0.92, 0.94]) == pytest.approx((0.92, 0.02))
    mean, std = mean_and_std([0.9])
    assert mean == 0.9 and math.isnan(std)


def test_unpaired_or_empty_outcomes_are_refused() -> None:
    with pytest.raises(ValueError):
        mcnemar_exact(np.ones(3, bool), np.ones(4, bool))
    with pytest.raises(ValueError):
        paired_difference_interval([])
    with pytest.raises(ValueError, match="same test images"):
        paired_difference_interval([_outcomes(1, 1, 5, 5), _outcomes(1, 1, 5, 4)])
    with pytest.raises(ValueError, match="at least two images"):
        difference_bounds(np.ones((3, 1)))
