"""Bootstrap intervals and paired tests against values computed independently here.

Every expected value comes from a closed form or an enumeration written in this file (binomial
sums with ``math.comb``, all sign patterns of a signed-rank statistic or of per-patient
differences, scipy's paired permutation test, the exact distribution of a two-patient bootstrap,
Holm by hand, power from a sign-flip simulation written here, t and chi-square quantiles from
tables), never from the function under test.
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
    EXACT_MAX_PATIENTS,
    PERMUTATIONS,
    detectable_difference,
    format_p,
    holm,
    holm_thresholds,
    mcnemar_exact,
    patient_bootstrap,
    patient_paired_test,
    prediction_factor,
    sample_sd,
    sd_interval_factors,
    settle_borderline,
    sign_flip_p_value,
    simulated_power,
    smallest_p_value,
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


def test_mcnemar_supported_difference_and_concordant_slices_do_not_matter():
    a, b = two_by_two(both=5, only_a=12, only_b=2, neither=1)
    p = exact_mcnemar_by_hand(12, 2)
    assert p == pytest.approx(2 * (1 + 14 + 91) / 2**14)
    assert mcnemar_exact(a, b).p_value == pytest.approx(p)
    assert p < ALPHA
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


def test_patient_bootstrap_agrees_with_scipys_paired_bootstrap():
    # scipy.stats.bootstrap with paired=True resamples patients and keeps each patient's slice sum and slice
    # count together; the ratio of their totals is the mean over the drawn slices: our resampling scheme
    rng = np.random.default_rng(6)
    slices = rng.integers(1, 7, 30)
    patients = np.repeat(np.arange(30), slices)
    values = rng.normal(0.6, 0.2, patients.size) + 0.1 * rng.normal(size=30)[patients]
    sums, counts = np.bincount(patients, weights=values), slices.astype(float)

    def ratio(s, c, axis=-1):
        return np.sum(s, axis=axis) / np.sum(c, axis=axis)

    scipy_interval = stats.bootstrap((sums, counts), ratio, paired=True, vectorized=True, n_resamples=10_000,
                                     method="percentile", rng=np.random.default_rng(2)).confidence_interval
    interval = patient_bootstrap(values, patients)
    assert interval.estimate == pytest.approx(sums.sum() / counts.sum())
    width = scipy_interval.high - scipy_interval.low
    assert interval.low == pytest.approx(scipy_interval.low, abs=0.05 * width)
    assert interval.high == pytest.approx(scipy_interval.high, abs=0.05 * width)


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


# ----------------------------------------------------------------------------- patient level


def patient_sums_by_hand(differences: list[float], patients: list[str]) -> dict[str, float]:
    """Each patient's sum of per-slice differences, with a plain loop."""
    sums: dict[str, float] = {}
    for value, patient in zip(differences, patients):
        sums[patient] = sums.get(patient, 0.0) + value
    return sums


def sign_flip_p_by_enumeration(patient_sums: list[float]) -> float:
    """Two-sided p: share of all 2^n patient sign patterns whose total is at least as far from 0 as observed.

    Flipping a patient flips all its slices' differences at once, so the total over slices is the
    sum of signed per-patient sums.
    """
    observed = abs(sum(patient_sums))
    extreme = 0
    patterns = list(itertools.product((1, -1), repeat=len(patient_sums)))
    for signs in patterns:
        if abs(sum(s * d for s, d in zip(signs, patient_sums))) >= observed - 1e-12:
            extreme += 1
    return extreme / len(patterns)


def test_many_slices_of_one_patient_are_one_unit():
    # Patient P1 gives 12 slices that A types right and B wrong; five other patients one slice each
    # that both type right. Counted per slice, 12 discordant slices all for A: McNemar p = 2/2^12.
    # Per patient, one patient differs and five do not: every sign pattern moves the total by P1's
    # sign only, so |total| is always 12 and p = 1 -- one patient's liver is one observation,
    # however many slices it gives.
    a = [1.0] * 12 + [1.0] * 5
    b = [0.0] * 12 + [1.0] * 5
    patients = ["P1"] * 12 + [f"P{k}" for k in range(2, 7)]
    assert mcnemar_exact(a, b).p_value == pytest.approx(2 / 2**12)
    sums = patient_sums_by_hand([x - y for x, y in zip(a, b)], patients)
    assert sums == {"P1": 12.0, "P2": 0.0, "P3": 0.0, "P4": 0.0, "P5": 0.0, "P6": 0.0}
    assert sign_flip_p_by_enumeration(list(sums.values())) == 1.0
    test = patient_paired_test(a, b, patients)
    assert test.p_value == 1.0
    assert (test.n_slices, test.n_patients) == (17, 6)
    assert test.effect == pytest.approx(12 / 17)  # the slice means the tables show: 17/17 vs 5/17
    assert (test.mean_a, test.mean_b) == (pytest.approx(1.0), pytest.approx(5 / 17))
    assert "exact" in test.method and "5 tied patients left out" in test.method
    # one patient differs: the smallest possible p is 2 / 2**1 = 1, so no difference is detectable
    assert test.tied == 5 and test.smallest_p == 1.0
    assert patient_paired_test(a, b, patients, family=1).detectable is None


def test_patient_test_on_dice_matches_enumeration_of_all_sign_patterns():
    # Seven patients with 1-4 slices each, Dice per slice for two models.
    rng = np.random.default_rng(5)
    patients = [f"p{k}" for k, n in enumerate([1, 3, 2, 4, 1, 2, 3]) for _ in range(n)]
    a = rng.uniform(0.3, 0.9, len(patients)).round(3).tolist()
    b = [x - shift for x, shift in zip(a, rng.normal(0.08, 0.1, len(patients)).round(3))]
    differences = [x - y for x, y in zip(a, b)]
    sums = list(patient_sums_by_hand(differences, patients).values())
    test = patient_paired_test(a, b, patients)
    assert test.p_value == pytest.approx(sign_flip_p_by_enumeration(sums))
    assert test.effect == pytest.approx(sum(differences) / len(differences))
    assert test.mean_a == pytest.approx(sum(a) / len(a))
    assert test.low < test.effect < test.high
    # the per-slice Wilcoxon answers a different question on these numbers
    assert wilcoxon_signed_rank(a, b).p_value != pytest.approx(test.p_value)


def test_monte_carlo_sign_flips_approach_the_exact_p_value():
    n = EXACT_MAX_PATIENTS + 4  # 20 patients: Monte Carlo; the test below enumerates 2^20 patterns itself
    differences = np.random.default_rng(2).normal(0.1, 0.3, n)
    signs = 1 - 2 * ((np.arange(2**n)[:, None] >> np.arange(n)) & 1).astype(np.int8)
    exact = float(np.mean(np.abs(signs @ differences) >= abs(differences.sum()) - 1e-9))  # one slice per patient
    test = patient_paired_test(differences, np.zeros(n), [f"p{k}" for k in range(n)])
    assert "Monte Carlo" in test.method
    assert test.p_value == pytest.approx(exact, abs=0.01)
    assert patient_paired_test(differences, np.zeros(n), list(range(n))) == test  # fixed seed: reproducible


def test_difference_interval_resamples_patients():
    # Two patients: x with three slices differing by 1, y with one slice differing by 0. Resamples
    # {x, x}, {x, y}, {y, y} (probability 1/4, 1/2, 1/4) give mean differences 1, 3/4, 0, so the
    # 95 % percentile interval is [0, 1]; resampling the four slices would give a narrower one.
    test = patient_paired_test([1, 1, 1, 0.5], [0, 0, 0, 0.5], ["x", "x", "x", "y"])
    assert (test.effect, test.low, test.high) == (0.75, 0.0, 1.0)


def test_sign_flip_p_equals_scipys_paired_permutation_test():
    # scipy.stats.permutation_test with permutation_type="samples" swaps A and B within each pair, i.e. flips the
    # sign of each patient's difference; with the slices as weights its statistic is our mean over slices.
    # Below 2**n resamples scipy enumerates every pattern, as we do; ties (difference 0) included.
    rng = np.random.default_rng(4)
    for n, zeros in [(5, 0), (9, 2), (12, 4)]:
        differences = rng.normal(0.1, 0.3, n)
        differences[:zeros] = 0.0
        weights = rng.integers(1, 6, n).astype(float)

        def weighted_mean(x, y, axis=-1):
            return np.sum(weights * (x - y), axis=axis) / weights.sum()

        scipy_p = stats.permutation_test((differences, np.zeros(n)), weighted_mean, permutation_type="samples",
                                         vectorized=True, n_resamples=10**6).pvalue
        p, method, drawn = sign_flip_p_value(differences, weights)
        assert p == pytest.approx(scipy_p) and drawn == 0 and method.startswith("exact")
        terms = weights * differences
        assert p == pytest.approx(sign_flip_p_by_enumeration(list(terms)))


def test_ties_raise_the_smallest_p_value():
    # 8 patients, 3 of whom tie (difference 0): only 5 carry a sign, so the most extreme pattern has
    # p = 2 / 2**5 = 0.0625 (every pattern of the tied three gives the same total), never below 0.05
    differences = [0.3, 0.2, 0.4, 0.1, 0.25, 0.0, 0.0, 0.0]
    assert sign_flip_p_by_enumeration(differences) == pytest.approx(0.0625)
    p, method, _ = sign_flip_p_value(differences)
    assert p == pytest.approx(0.0625) and "3 tied patients left out" in method
    assert smallest_p_value(differences) == 0.0625
    assert detectable_difference(differences) is None
    assert detectable_difference(differences[:5] + [0.15, 0.35, 0.05]) is not None  # no tie: 2 / 256


def test_nothing_is_detectable_with_9_patients_in_a_family_of_21():
    differences = np.random.default_rng(1).normal(0.0, 1.0, 10)
    # 2 / 2**9 = 0.0039 is the smallest p of 9 patients; Holm's first step in a family of 21 is 0.05 / 21 = 0.0024
    assert 2 / 2**9 * 21 >= ALPHA
    assert detectable_difference(differences[:9], family=21) is None
    assert detectable_difference(differences[:9], family=1) is not None  # uncorrected, 9 patients would do
    assert 2 / 2**10 * 21 < ALPHA and detectable_difference(differences, family=21) is not None


def monte_carlo_sign_flip_power(shift: float, sd: float, weights: np.ndarray, tied: int, level: float,
                                studies: int, seed: int) -> float:
    """Power of the two-sided sign-flip test at ``p < level``, simulated here with numpy alone.

    Each study: ``tied`` patients with difference 0, the others normal(delta, sd) with delta chosen so the
    expected mean over all slices is ``shift``; the p-value from 20,000 random sign patterns of its own
    generator, (1 + hits) / (1 + 20,000), or all patterns when there are at most 16 informative patients.
    """
    rng = np.random.default_rng(seed)
    informative = weights[tied:]
    delta = shift * weights.sum() / informative.sum()
    n = informative.size
    if n <= 16:
        signs = np.array(list(itertools.product((1.0, -1.0), repeat=n)))
    else:
        signs = rng.choice([-1.0, 1.0], size=(20_000, n))
    detected = 0
    for _ in range(studies // 100):
        d = rng.normal(delta, sd, (100, n)) * informative
        observed = np.abs(d.sum(axis=1))
        hits = np.zeros(100)
        for start in range(0, len(signs), 4_000):
            hits += np.sum(np.abs(signs[start:start + 4_000] @ d.T) >= observed - 1e-9, axis=0)
        p = hits / len(signs) if n <= 16 else (1 + hits) / (1 + len(signs))
        detected += int(np.sum(p < level))
    return detected / studies


def test_detectable_difference_has_the_stated_power_at_holms_first_step():
    # 38 patients, one slice each, in a family of 21 tests: power 0.8 at 0.05 / 21 under the sign-flip test,
    # checked by a simulation written here (its own generator, its own sign patterns)
    differences = np.random.default_rng(1).normal(0.0, 1.0, 38)
    mde = detectable_difference(differences, family=21)
    sd = float(np.std(differences, ddof=1))
    power = monte_carlo_sign_flip_power(mde, sd, np.ones(38), 0, ALPHA / 21, 2_000, seed=7)
    assert power == pytest.approx(0.80, abs=0.05)
    # the paired t-test's formula at the uncorrected level (what the report printed before) has far less power
    t_formula = (stats.t.ppf(0.975, 37) + stats.t.ppf(0.8, 37)) * sd / math.sqrt(38)
    assert mde > 1.4 * t_formula
    assert monte_carlo_sign_flip_power(t_formula, sd, np.ones(38), 0, ALPHA / 21, 1_000, seed=8) < 0.5


def test_detectable_difference_with_ties_and_unequal_slices():
    # 12 patients with 1-5 slices, 2 of them tied: the 10 others carry the test (exact, 2**10 patterns)
    rng = np.random.default_rng(3)
    weights = np.array([2, 3, 1, 4, 2, 5, 1, 3, 2, 4, 1, 2], dtype=float)
    differences = rng.normal(0.1, 0.2, 12)
    differences[:2] = 0.0
    mde = detectable_difference(differences, weights, family=2)
    sd = float(np.std(differences[2:], ddof=1))
    power = monte_carlo_sign_flip_power(mde, sd, weights, 2, ALPHA / 2, 2_000, seed=9)
    assert power == pytest.approx(0.80, abs=0.05)
    assert simulated_power(mde * 1.001, differences, weights, family=2) >= 0.8 > simulated_power(
        mde * 0.95, differences, weights, family=2)


def test_monte_carlo_p_near_its_holm_threshold_is_redrawn():
    # 20 patients (Monte Carlo); the exact p by enumerating all 2**20 patterns here
    n = EXACT_MAX_PATIENTS + 4
    differences = np.random.default_rng(12).normal(0.25, 1.0, n)
    signs = 1 - 2 * ((np.arange(2**n)[:, None] >> np.arange(n)) & 1).astype(np.int8)
    exact = float(np.mean(np.abs(signs @ differences) >= abs(differences.sum()) - 1e-9))
    test = patient_paired_test(differences, np.zeros(n), [f"p{k}" for k in range(n)])
    assert test.permutations == PERMUTATIONS
    # a family whose threshold sits at the first estimate: within 3 standard errors, so redrawn (x10, x100)
    far = patient_paired_test(differences * 0, np.zeros(n), [f"q{k}" for k in range(n)])  # p = 1
    alpha = 2 * test.p_value  # two tests: the smaller p is compared with alpha / 2 = its own value
    settled = settle_borderline([test, far], alpha)
    assert settled[1] == far
    redrawn = settled[0]
    assert redrawn.permutations >= 10 * PERMUTATIONS and "within 3 standard errors" in redrawn.method
    assert f"{redrawn.permutations:,} sign patterns" in redrawn.method
    assert abs(redrawn.p_value - exact) < 4 * math.sqrt(exact * (1 - exact) / redrawn.permutations)
    # far from every threshold: nothing is redrawn
    assert settle_borderline([test], alpha=0.5) == [test]
    assert holm_thresholds([0.03, 0.01, 0.2]) == pytest.approx([0.05 / 2, 0.05 / 3, 0.05])


def test_spread_factors_match_t_and_chi_square():
    # 95 % prediction interval of one more value from K = 3: t[2, 0.975] = 4.302653 times sqrt(1 + 1/3)
    assert prediction_factor(3) == pytest.approx(4.302653 * math.sqrt(4 / 3), rel=1e-6)
    assert prediction_factor(3) == pytest.approx(4.97, abs=0.005)
    assert prediction_factor(2) == pytest.approx(12.706205 * math.sqrt(1.5), rel=1e-6)
    # chi-square quantiles, 1 degree of freedom: 0.025 -> 0.000982069, 0.975 -> 5.023886 (K = 2 finished repeats)
    low, high = sd_interval_factors(2)
    assert (low, high) == (pytest.approx((1 / 5.023886) ** 0.5, rel=1e-5), pytest.approx((1 / 0.000982069) ** 0.5,
                                                                                            rel=1e-5))
    assert f"{low:.2f}-{high:.1f}" == "0.45-31.9"
    low, high = sd_interval_factors(3)  # 2 degrees of freedom: 0.025 -> 0.0506356, 0.975 -> 7.377759
    assert (low, high) == (pytest.approx((2 / 7.377759) ** 0.5, rel=1e-5), pytest.approx((2 / 0.0506356) ** 0.5,
                                                                                          rel=1e-5))
    assert sample_sd([0.2, 0.05, 0.05]) == pytest.approx(math.sqrt(((0.1) ** 2 + 2 * 0.05**2) / 2))
    assert sample_sd([0.3]) is None


def test_holm_on_a_hand_computed_family():
    # sorted: 0.005 x 4 = 0.02; 0.01 x 3 = 0.03; 0.03 x 2 = 0.06; 0.04 x 1 = 0.04 -> raised to 0.06
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])  # capped at 1
    assert holm([0.02]) == pytest.approx([0.02])  # a family of one is not corrected
    assert holm([]) == []
