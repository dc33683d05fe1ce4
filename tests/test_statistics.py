"""Bootstrap intervals and paired tests against values computed independently here.

Every expected value comes from a closed form or an enumeration written in this file (binomial
sums with ``math.comb``, all sign patterns of a signed-rank statistic, the exact distribution of
a two-patient bootstrap), never from the function under test.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
from scipy import stats

from nnunet_joint.evaluation.statistics import (
    ALPHA,
    BOOTSTRAP_RESAMPLES,
    BOOTSTRAP_SEED,
    format_p,
    mcnemar_exact,
    patient_bootstrap,
    wilcoxon_signed_rank,
)


def two_by_two(both: int, only_a: int, only_b: int, neither: int) -> tuple[list[bool], list[bool]]:
    """Per-slice right/wrong of models A and B with the given 2 x 2 table."""
    a = [True] * both + [True] * only_a + [False] * only_b + [False] * neither
    b = [True] * both + [False] * only_a + [True] * only_b + [False] * neither
    return a, b


def exact_mcnemar_by_hand(only_a: int, only_b: int) -> float:
    """Two-sided exact McNemar: 2 * P(X <= min) for X ~ Binomial(only_a + only_b, 1/2), capped at 1."""
    n = only_a + only_b
    tail = sum(math.comb(n, k) for k in range(min(only_a, only_b) + 1)) / 2**n
    return min(1.0, 2 * tail)


# ----------------------------------------------------------------------------- McNemar


def test_mcnemar_on_a_hand_computed_table():
    a, b = two_by_two(both=10, only_a=1, only_b=6, neither=3)
    test = mcnemar_exact(a, b)
    assert test.p_value == pytest.approx(2 * (1 + 7) / 2**7)  # = 0.125
    assert test.detail == {"only_a": 1, "only_b": 6}
    assert test.n == 20
    assert (test.mean_a, test.mean_b) == (pytest.approx(11 / 20), pytest.approx(16 / 20))
    assert test.effect == pytest.approx(-5 / 20)
    assert not test.supported


def test_mcnemar_supported_difference_and_concordant_slices_do_not_matter():
    a, b = two_by_two(both=5, only_a=12, only_b=2, neither=1)
    p = exact_mcnemar_by_hand(12, 2)
    assert p == pytest.approx(2 * (1 + 14 + 91) / 2**14)
    assert mcnemar_exact(a, b).p_value == pytest.approx(p)
    assert mcnemar_exact(a, b).supported and p < ALPHA
    more_a, more_b = two_by_two(both=105, only_a=12, only_b=2, neither=50)
    assert mcnemar_exact(more_a, more_b).p_value == pytest.approx(p)  # only discordant slices count


def test_mcnemar_without_discordant_slices_and_symmetric_table():
    a, b = two_by_two(both=4, only_a=0, only_b=0, neither=2)
    assert mcnemar_exact(a, b).p_value == 1.0 and mcnemar_exact(a, b).effect == 0.0
    a, b = two_by_two(both=0, only_a=3, only_b=3, neither=0)
    assert mcnemar_exact(a, b).p_value == 1.0


def test_mcnemar_agrees_with_scipy_binomtest_on_many_tables():
    for only_a, only_b in [(0, 5), (7, 2), (20, 9), (31, 30)]:
        a, b = two_by_two(3, only_a, only_b, 4)
        assert mcnemar_exact(a, b).p_value == pytest.approx(exact_mcnemar_by_hand(only_a, only_b))
        assert exact_mcnemar_by_hand(only_a, only_b) == pytest.approx(
            stats.binomtest(only_a, only_a + only_b, 0.5).pvalue)


def test_paired_tests_refuse_unpaired_input():
    with pytest.raises(ValueError, match="one length"):
        mcnemar_exact([True, False], [True])
    with pytest.raises(ValueError, match="no paired"):
        wilcoxon_signed_rank([], [])


# ----------------------------------------------------------------------------- Wilcoxon


def exact_signed_rank_p(differences: list[float]) -> float:
    """Two-sided exact p of the signed-rank statistic by enumerating all 2^n sign patterns.

    Differences must be distinct in absolute value and non-zero (no ties), so ranks are 1..n.
    """
    ranks = np.argsort(np.argsort(np.abs(differences))) + 1
    observed = ranks[np.asarray(differences) > 0].sum()
    centre = ranks.sum() / 2
    patterns = itertools.product([0, 1], repeat=len(differences))
    w = np.array([ranks[np.asarray(signs, bool)].sum() for signs in patterns])
    return float(np.mean(np.abs(w - centre) >= abs(observed - centre)))


def test_wilcoxon_by_hand_on_five_slices():
    a = [0.5, 0.6, 0.7, 0.8, 0.9]
    assert wilcoxon_signed_rank(a, [x - d for x, d in zip(a, [0.01, 0.02, 0.03, 0.04, 0.05])]).p_value == (
        pytest.approx(2 / 32))  # all five differences positive: 2 of 32 sign patterns as extreme
    one_negative = [x - d for x, d in zip(a, [-0.01, 0.02, 0.03, 0.04, 0.05])]
    assert wilcoxon_signed_rank(a, one_negative).p_value == pytest.approx(4 / 32)


def test_wilcoxon_matches_enumeration_and_drops_equal_slices():
    rng = np.random.default_rng(3)
    differences = [0.05, -0.11, 0.16, 0.22, 0.27, -0.33, 0.38, 0.41, 0.47, -0.52]
    b = rng.uniform(0.2, 0.4, len(differences))
    a = b + np.asarray(differences)
    test = wilcoxon_signed_rank(a, b)
    assert test.p_value == pytest.approx(exact_signed_rank_p(differences))
    assert test.effect == pytest.approx(np.mean(differences))
    assert test.detail == {"differing": 10} and test.n == 10
    # two slices where both models agree exactly (both missed the lesion): no information, same p
    with_ties = wilcoxon_signed_rank(np.append(a, [0.0, 0.7]), np.append(b, [0.0, 0.7]))
    assert with_ties.p_value == pytest.approx(test.p_value)
    assert with_ties.n == 12 and with_ties.detail == {"differing": 10}


def test_wilcoxon_identical_models_is_p_one():
    assert wilcoxon_signed_rank([0.3, 0.5], [0.3, 0.5]).p_value == 1.0


# ----------------------------------------------------------------------------- bootstrap


def test_bootstrap_resamples_patients_not_slices():
    # Two patients, ten slices each, one all right and one all wrong. Resampling the two patients
    # gives a mean of 0, 0.5 or 1 with probability 1/4, 1/2, 1/4, so the 95 % percentile interval
    # is exactly [0, 1]. Resampling the 20 slices instead would give about [0.28, 0.72].
    values = [1.0] * 10 + [0.0] * 10
    patients = ["p1"] * 10 + ["p2"] * 10
    interval = patient_bootstrap(values, patients)
    assert (interval.estimate, interval.low, interval.high) == (0.5, 0.0, 1.0)
    assert (interval.n, interval.n_patients) == (20, 2)
    assert (interval.resamples, interval.seed, interval.confidence) == (BOOTSTRAP_RESAMPLES, BOOTSTRAP_SEED, 0.95)
    slice_level = patient_bootstrap(values, [f"s{i}" for i in range(20)])
    assert 0.2 < slice_level.low < 0.35 and 0.65 < slice_level.high < 0.8


def test_bootstrap_of_constant_values_is_a_point():
    interval = patient_bootstrap([0.7] * 6, ["a", "a", "b", "c", "c", "c"])
    assert (interval.low, interval.high) == (pytest.approx(0.7), pytest.approx(0.7))


def test_bootstrap_matches_the_normal_interval_of_a_proportion():
    # 400 independent slices (one per patient), 120 right: the bootstrap distribution of the mean
    # is close to normal with sd sqrt(p(1-p)/n); the percentile interval is p +- 1.96 sd.
    values = np.array([1.0] * 120 + [0.0] * 280)
    interval = patient_bootstrap(values, list(range(400)))
    sd = math.sqrt(0.3 * 0.7 / 400)
    assert interval.estimate == pytest.approx(0.3)
    assert interval.low == pytest.approx(0.3 - 1.959964 * sd, abs=0.006)
    assert interval.high == pytest.approx(0.3 + 1.959964 * sd, abs=0.006)
    scipy_interval = stats.bootstrap((values,), np.mean, n_resamples=10_000, method="percentile",
                                     rng=np.random.default_rng(1)).confidence_interval
    assert interval.low == pytest.approx(scipy_interval.low, abs=0.006)
    assert interval.high == pytest.approx(scipy_interval.high, abs=0.006)


def test_bootstrap_is_reproducible_and_checks_its_input():
    rng = np.random.default_rng(0)
    values, patients = rng.uniform(size=50), rng.integers(0, 12, 50)
    assert patient_bootstrap(values, patients) == patient_bootstrap(values, patients)
    assert patient_bootstrap(values, patients, seed=1) != patient_bootstrap(values, patients)
    with pytest.raises(ValueError, match="3 values but 2 patient ids"):
        patient_bootstrap([1, 0, 1], ["a", "b"])
    with pytest.raises(ValueError, match="at least one"):
        patient_bootstrap([], [])


def test_format_p():
    assert (format_p(0.0004), format_p(0.0123), format_p(0.5), format_p(1.0)) == ("< 0.001", "0.012", "0.500", "1.000")
