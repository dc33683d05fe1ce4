"""Uncertainty of the report's numbers: bootstrap intervals over patients and paired tests.

Three folds give three numbers per metric, so "mean ± std over folds" alone cannot tell a real
difference between two methods from noise (so intervals and paired tests come
before any claim). This module holds the tools the report uses, numpy/scipy only:

* :func:`patient_bootstrap`: a 95 % percentile interval of a per-slice mean (type accuracy,
  Dice1) when **patients** are resampled with replacement. Slices of one patient are not
  independent (same liver, same scanner, often the same lesion), so resampling slices would
  give intervals that are too narrow; resampling patients keeps each patient's slices together.
* :func:`patient_paired_test`: the comparison of two models at the unit of independence, the
  patient: the mean difference over the slices (as the tables show it), a permutation test that
  flips the sign of each patient's mean difference (weighted by its slices), a paired patient
  bootstrap interval, and the smallest difference this many patients could have detected at
  Holm's first step (:func:`detectable_difference`, from simulating the test itself).
* :func:`holm` and :func:`holm_thresholds`: Holm's step-down correction of the p-values of a
  family of comparisons, and the level each p-value is compared with (a Monte Carlo p near its
  level is redrawn with more sign patterns, :meth:`PatientTest.redrawn`).
* :func:`mcnemar_exact` and :func:`wilcoxon_signed_rank`: paired tests of two models on the
  **same** validation slices, for typing (right/wrong per slice) and for per-slice Dice1. They
  count slices as independent, so their p-values are too small when a patient gives several
  slices; the report shows them labelled "per slice (slices not independent)".
* :func:`sample_sd`, :func:`prediction_factor`, :func:`sd_interval_factors`: the fold and
  run-to-run spreads (ddof 1), the prediction interval of one more run, the uncertainty of an SD.

Conventions (stated in the report): :data:`BOOTSTRAP_RESAMPLES` resamples drawn with numpy's
``default_rng(BOOTSTRAP_SEED)``, so a report is reproducible to the last digit; percentile
interval with numpy's default (linear) interpolation; a difference is called detected when its
Holm-corrected two-sided patient-level p-value is below :data:`ALPHA`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Hashable, Iterator, Sequence

import numpy as np
from scipy import stats

#: Bootstrap resamples per interval.
BOOTSTRAP_RESAMPLES = 10_000
#: Seed of the bootstrap's random generator (``numpy.random.default_rng``).
BOOTSTRAP_SEED = 0
#: Coverage of the bootstrap interval.
CONFIDENCE = 0.95
#: Significance level of the paired tests (two-sided).
ALPHA = 0.05
#: Up to this many patients the sign-flip test enumerates all 2**n sign patterns (65,536 at 16).
EXACT_MAX_PATIENTS = 16
#: Random sign patterns of the Monte Carlo sign-flip test (more patients than EXACT_MAX_PATIENTS).
PERMUTATIONS = 20_000
#: Seed of the Monte Carlo sign-flip test's generator (``numpy.random.default_rng``).
PERMUTATION_SEED = 0
#: A Monte Carlo p-value within this many standard errors of the threshold it is compared with is redrawn
#: with ten times the sign patterns, up to MAX_PERMUTATIONS.
BORDERLINE_SE = 3.0
MAX_PERMUTATIONS = 2_000_000
#: Power at which the smallest detectable difference is stated.
POWER = 0.80
#: Simulated studies per power estimate, and the seed of their generator (``numpy.random.default_rng``).
POWER_SIMULATIONS = 1_000
POWER_SEED = 0

#: Resamples drawn per block, to bound memory (resamples x patients floats per block).
_BLOCK = 2_000


@dataclasses.dataclass(frozen=True)
class Interval:
    """A bootstrap interval of the mean over slices.

    Attributes:
        estimate: the mean over all slices (every fold together).
        low, high: percentile interval bounds.
        n: slices the mean stands on.
        n_patients: resampling units (patients; one per slice when patients are unknown).
        resamples, seed, confidence: how the interval was drawn.
    """

    estimate: float
    low: float
    high: float
    n: int
    n_patients: int
    resamples: int
    seed: int
    confidence: float

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def patient_bootstrap(values: Sequence[float], patients: Sequence[Hashable], resamples: int = BOOTSTRAP_RESAMPLES,
                      seed: int = BOOTSTRAP_SEED, confidence: float = CONFIDENCE) -> Interval:
    """Percentile bootstrap interval of the mean of ``values``, resampling patients with replacement.

    Each resample draws as many patients as there are, with replacement, and takes the mean over
    all slices of the drawn patients (a patient drawn twice counts twice). The interval is the
    ``(1 - confidence) / 2`` and ``(1 + confidence) / 2`` percentiles of those means.

    Args:
        values: one number per slice (1.0/0.0 for a right/wrong type, or the slice's Dice).
        patients: the patient of each slice, same length as ``values``.
        resamples: number of bootstrap resamples.
        seed: seed of ``numpy.random.default_rng``.
        confidence: coverage of the interval.

    Raises:
        ValueError: on no values, or lengths that differ.
    """
    values = np.asarray(values, dtype=np.float64)
    if values.ndim != 1 or values.size == 0:
        raise ValueError("patient_bootstrap needs at least one value")
    if len(patients) != values.size:
        raise ValueError(f"{values.size} values but {len(patients)} patient ids")
    _, unit = np.unique(np.asarray([str(p) for p in patients]), return_inverse=True)
    n_units = int(unit.max()) + 1
    sums = np.bincount(unit, weights=values, minlength=n_units)
    counts = np.bincount(unit, minlength=n_units).astype(np.float64)
    rng = np.random.default_rng(seed)
    means = np.empty(resamples)
    for start in range(0, resamples, _BLOCK):
        block = min(_BLOCK, resamples - start)
        drawn = rng.integers(0, n_units, size=(block, n_units))
        # times each patient is drawn in each resample of the block
        weights = np.bincount((drawn + n_units * np.arange(block)[:, None]).ravel(),
                              minlength=block * n_units).reshape(block, n_units)
        means[start:start + block] = (weights @ sums) / (weights @ counts)
    tail = (1.0 - confidence) / 2.0 * 100.0
    low, high = np.percentile(means, [tail, 100.0 - tail])
    return Interval(float(values.mean()), float(low), float(high), int(values.size), n_units, int(resamples),
                    int(seed), float(confidence))


@dataclasses.dataclass(frozen=True)
class PairedTest:
    """A paired comparison of model A with model B on the same slices.

    Attributes:
        test: ``"McNemar (exact)"`` or ``"Wilcoxon signed-rank"``.
        n: paired slices (present and defined in both models).
        mean_a, mean_b: the metric's mean over those slices for A and for B.
        effect: ``mean_a - mean_b`` (accuracy or Dice1 difference).
        p_value: two-sided p-value.
        detail: the counts behind the p-value (McNemar: slices only A / only B got right;
            Wilcoxon: slices whose Dice differs).
    """

    test: str
    n: int
    mean_a: float
    mean_b: float
    effect: float
    p_value: float
    detail: dict

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def _paired(a: Sequence, b: Sequence) -> tuple[np.ndarray, np.ndarray]:
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"paired samples must be two sequences of one length, got {a.shape} and {b.shape}")
    if a.size == 0:
        raise ValueError("no paired slices")
    return a, b


def mcnemar_exact(correct_a: Sequence[bool], correct_b: Sequence[bool]) -> PairedTest:
    """Exact McNemar test of two classifiers on the same slices.

    Only the discordant slices carry information: ``only_a`` (A right, B wrong) and ``only_b``.
    Under the null hypothesis (equal accuracy) each discordant slice is A's with probability
    1/2, so the p-value is the two-sided exact binomial test of ``only_a`` out of
    ``only_a + only_b`` (scipy's ``binomtest``); 1.0 when no slice is discordant.
    """
    a, b = _paired(correct_a, correct_b)
    a, b = a.astype(bool), b.astype(bool)
    only_a, only_b = int(np.sum(a & ~b)), int(np.sum(~a & b))
    discordant = only_a + only_b
    p = 1.0 if discordant == 0 else float(stats.binomtest(only_a, discordant, 0.5).pvalue)
    return PairedTest("McNemar (exact)", int(a.size), float(a.mean()), float(b.mean()), float(a.mean() - b.mean()),
                      min(1.0, p), {"only_a": only_a, "only_b": only_b})


def wilcoxon_signed_rank(values_a: Sequence[float], values_b: Sequence[float]) -> PairedTest:
    """Wilcoxon signed-rank test of per-slice values (Dice1) of two models on the same slices.

    scipy's ``wilcoxon`` with its defaults: slices with equal values are dropped ("wilcox"), the
    null distribution is exact for up to 50 differing slices without ties, else approximated.
    1.0 when no slice differs (scipy would warn and return NaN-derived values).
    """
    a, b = _paired(values_a, values_b)
    differing = int(np.count_nonzero(a != b))
    p = 1.0 if differing == 0 else float(stats.wilcoxon(a, b).pvalue)
    return PairedTest("Wilcoxon signed-rank", int(a.size), float(a.mean()), float(b.mean()), float(a.mean() - b.mean()),
                      p, {"differing": differing})


@dataclasses.dataclass(frozen=True)
class PatientTest:
    """A paired comparison of model A with model B at the patient level.

    The effect is the difference of the two models' means over the slices both evaluated (the
    numbers the tables show); what is resampled and sign-flipped is each patient's block of
    slices, so a patient counts as one observation (weighted by its slices), however many slices
    it gives.

    Attributes:
        n_slices: paired slices.
        n_patients: patients they come from (the test's sample size, ties included).
        mean_a, mean_b: the models' means over the paired slices.
        effect: ``mean_a - mean_b``.
        low, high: paired patient bootstrap percentile interval of ``effect``.
        p_value: two-sided patient-level sign-flip permutation p-value of ``effect`` (uncorrected).
        method: how the permutation distribution was obtained (exact, or Monte Carlo with its seed).
        permutations: random sign patterns drawn (0: exact enumeration).
        differences, slices: per patient (sorted by id), the mean difference A - B and its slices.
        detectable: the smallest mean difference this sample would detect with probability
            :data:`POWER` at ``detectable_alpha`` (:func:`detectable_difference`); ``None`` when no
            difference can reach that level (or before the family is known).
        detectable_alpha: the level it was computed at: Holm's first step, alpha / m.
    """

    n_slices: int
    n_patients: int
    mean_a: float
    mean_b: float
    effect: float
    low: float
    high: float
    p_value: float
    method: str
    permutations: int
    differences: tuple[float, ...]
    slices: tuple[int, ...]
    detectable: float | None = None
    detectable_alpha: float | None = None

    @property
    def tied(self) -> int:
        """Patients whose mean difference is exactly 0 (they add nothing to any sign pattern)."""
        return int(np.count_nonzero(np.asarray(self.differences) == 0))

    @property
    def smallest_p(self) -> float:
        return smallest_p_value(self.differences)

    @property
    def standard_error(self) -> float:
        """Monte Carlo standard error of ``p_value`` (0 when exact)."""
        return 0.0 if not self.permutations else math.sqrt(self.p_value * (1 - self.p_value) / self.permutations)

    def borderline(self, threshold: float) -> bool:
        """A Monte Carlo p within :data:`BORDERLINE_SE` standard errors of ``threshold``, with room to draw more."""
        return (0 < self.permutations < MAX_PERMUTATIONS
                and abs(self.p_value - threshold) < BORDERLINE_SE * self.standard_error)

    def redrawn(self, threshold: float) -> "PatientTest":
        """The same test with ten times the sign patterns (at most :data:`MAX_PERMUTATIONS`); the method says why."""
        drawn = min(MAX_PERMUTATIONS, 10 * self.permutations)
        p, method, _ = sign_flip_p_value(self.differences, self.slices, drawn)
        method += (f"; more than {PERMUTATIONS:,} because the p-value lay within {BORDERLINE_SE:g} standard errors "
                   f"of its Holm threshold {threshold:.4f}")
        return dataclasses.replace(self, p_value=p, method=method, permutations=drawn)

    def at_family(self, family: int, alpha: float = ALPHA) -> "PatientTest":
        """With its smallest detectable difference at Holm's first step for a family of ``family`` tests."""
        return dataclasses.replace(self, detectable_alpha=alpha / family,
                                   detectable=detectable_difference(self.differences, self.slices, alpha, family))

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "tied": self.tied, "smallest_p": self.smallest_p}


def per_patient_differences(values_a: Sequence[float], values_b: Sequence[float],
                            patients: Sequence[Hashable]) -> tuple[np.ndarray, np.ndarray]:
    """Per patient (sorted by id): the mean difference A - B over its slices, and its number of slices.

    Raises:
        ValueError: lengths that differ, or no slice.
    """
    a, b = _paired(values_a, values_b)
    if len(patients) != a.size:
        raise ValueError(f"{a.size} paired slices but {len(patients)} patient ids")
    _, unit = np.unique(np.asarray([str(p) for p in patients]), return_inverse=True)
    counts = np.bincount(unit).astype(np.float64)
    return np.bincount(unit, weights=a - b) / counts, counts


def smallest_p_value(differences: Sequence[float]) -> float:
    """The smallest two-sided p the sign-flip test can give: ``2 / 2**k`` for the ``k`` non-zero differences.

    A patient whose difference is 0 gives the same statistic under either sign, so only the
    others count (8 patients of which 3 tie: 2 / 2**5 = 0.0625, never below 0.05).
    """
    return min(1.0, 2.0 / 2.0 ** int(np.count_nonzero(np.asarray(differences, dtype=np.float64))))


def _informative_terms(differences: Sequence[float], weights: Sequence[float] | None) -> np.ndarray:
    """``w * d / sum(w)`` of the patients whose difference is not 0 (the rest never change the statistic)."""
    d = np.asarray(differences, dtype=np.float64)
    w = np.ones_like(d) if weights is None else np.asarray(weights, dtype=np.float64)
    return (w * d / w.sum())[d != 0]


def _sign_patterns(n: int, permutations: int, seed: int) -> Iterator[np.ndarray]:
    """Sign patterns as rows of +-1 in blocks: all ``2**n`` when ``permutations`` is 0, else that many random rows."""
    if not permutations:
        yield 1.0 - 2.0 * ((np.arange(2**n)[:, None] >> np.arange(n)) & 1)
        return
    rng = np.random.default_rng(seed)
    for start in range(0, permutations, _BLOCK):
        yield rng.choice([-1.0, 1.0], size=(min(_BLOCK, permutations - start), n))


def _patterns_for(n: int, permutations: int) -> int:
    """Random patterns to draw for ``n`` informative patients: 0 (enumerate all) up to :data:`EXACT_MAX_PATIENTS`."""
    return 0 if n <= EXACT_MAX_PATIENTS else permutations


def _p_values(hits: np.ndarray, n: int, permutations: int) -> np.ndarray:
    """Share of patterns at least as extreme; Monte Carlo counted as ``(1 + hits) / (1 + permutations)``."""
    return hits / 2.0**n if not permutations else (1.0 + hits) / (1.0 + permutations)


def sign_flip_p_value(differences: Sequence[float], weights: Sequence[float] | None = None,
                      permutations: int = PERMUTATIONS, seed: int = PERMUTATION_SEED) -> tuple[float, str, int]:
    """Two-sided p-value of a weighted mean of per-patient differences under patient-level sign flips.

    Under the null hypothesis (A and B exchangeable within each patient) each patient's mean
    difference ``d`` is as likely to have either sign. The statistic is ``sum(w * d) / sum(w)``
    (with the slices as weights: the mean difference over all slices); the p-value is the share
    of sign patterns whose statistic is at least as far from 0 as the observed one. Patients with
    ``d = 0`` are left out (either sign gives the same statistic, so the share is the same): all
    ``2**k`` patterns of the ``k`` others when ``k <=`` :data:`EXACT_MAX_PATIENTS`, else
    ``permutations`` random patterns, counted as ``(1 + hits) / (1 + permutations)`` so the
    p-value is never 0. It equals ``scipy.stats.permutation_test`` with
    ``permutation_type="samples"`` on the exact branch (tests/test_statistics.py).

    Returns:
        the p-value, a description of the method, and the random patterns drawn (0: exact).
    """
    terms = _informative_terms(differences, weights)
    n, tied = terms.size, len(differences) - terms.size
    drawn = _patterns_for(n, permutations)
    observed = abs(terms.sum())
    tolerance = 1e-12 * max(1.0, float(np.abs(terms).sum()))
    hits = sum(int(np.count_nonzero(np.abs(signs @ terms) >= observed - tolerance))
               for signs in _sign_patterns(n, drawn, seed))
    ties = f"; {tied} tied patient{'s' if tied != 1 else ''} left out" if tied else ""
    if not n:
        return 1.0, "exact (every patient's difference is 0)", 0
    if not drawn:
        return float(_p_values(np.asarray(hits), n, 0)), f"exact (all {2**n:,} sign patterns{ties})", 0
    return (float(_p_values(np.asarray(hits), n, drawn)),
            f"Monte Carlo ({drawn:,} sign patterns, seed {seed}{ties})", drawn)


def simulated_power(shift: float, differences: Sequence[float], weights: Sequence[float] | None = None,
                    alpha: float = ALPHA, family: int = 1, simulations: int = POWER_SIMULATIONS,
                    seed: int = POWER_SEED) -> float:
    """Share of simulated studies in which the sign-flip test detects a true mean difference ``shift``.

    The model behind :func:`detectable_difference`: the patients whose observed difference is 0
    stay tied; each other patient's difference is drawn from a normal distribution with the
    standard deviation (ddof 1) of the observed non-zero differences, shifted so that the
    expected mean over all slices (ties included) is ``shift``. Each simulated study is tested
    as the report tests (:func:`sign_flip_p_value`: all patterns up to
    :data:`EXACT_MAX_PATIENTS` informative patients, else :data:`PERMUTATIONS` random ones) and
    counts as detected when ``p * family < alpha`` (Holm's first step).
    """
    return float(np.mean(_critical_shifts(differences, weights, alpha, family, simulations, seed) < shift))


def _critical_shifts(differences: Sequence[float], weights: Sequence[float] | None, alpha: float, family: int,
                     simulations: int, seed: int) -> np.ndarray:
    """Per simulated study (:func:`simulated_power`), the mean difference over slices above which it is detected.

    A study's statistic under sign pattern k is ``x * a_k + b_k`` for the informative patients'
    shift ``x`` (``a_k``: the pattern applied to the slice shares, ``b_k``: to the drawn noise);
    pattern k is at least as extreme as the observed ``x * V + c`` exactly while ``x`` lies
    between the roots of ``(x (V - a_k) - (b_k - c)) (x (V + a_k) + (b_k + c))``. Above the
    (h+1)-th largest upper root at most h patterns can be as extreme, so the study is detected
    there for good when h patterns keep ``p * family < alpha``; that root is its critical shift
    (below it a study can at most be detected by the interval's lower end, which only counts
    against the power: the estimate errs on the side of a larger detectable difference).
    """
    d = np.asarray(differences, dtype=np.float64)
    w = np.ones_like(d) if weights is None else np.asarray(weights, dtype=np.float64)
    informative = d != 0
    v = w[informative] / w.sum()  # each informative patient's share of all slices
    n, total = v.size, float(v.sum())
    drawn = _patterns_for(n, PERMUTATIONS)
    hits = np.arange((2**n if not drawn else drawn) + 1)
    allowed = int(np.count_nonzero(_p_values(hits, n, drawn) * family < alpha)) - 1  # most hits still detected
    if not drawn:  # exact: a pattern and its mirror are equally extreme, so enumerate half and count in pairs
        allowed //= 2
    noise = np.random.default_rng(seed).standard_normal((simulations, n)) * float(np.std(d[informative], ddof=1))
    patterns = 2 ** (n - 1) if not drawn else drawn
    per_block = max(1, 2_000_000 // patterns)  # studies per block, to bound memory
    critical = np.empty(simulations)
    for start in range(0, simulations, per_block):
        z = noise[start:start + per_block] * v
        c = z.sum(axis=1)
        upper, fixed = [], 0
        for signs in _sign_patterns(n, drawn, PERMUTATION_SEED):
            if not drawn:
                signs = signs[signs[:, 0] > 0]
            a, b = signs @ v, signs @ z.T
            u, r = total - a, total + a
            trivial = (u < 1e-12 * total) | (r < 1e-12 * total)  # the observed pattern (and mirror): always hits
            fixed += int(np.count_nonzero(trivial))
            u, r, b = u[~trivial, None], r[~trivial, None], b[~trivial]
            upper.append(np.maximum((b - c) / u, -(b + c) / r))
        upper = np.concatenate(upper)
        rank = allowed - fixed  # patterns besides the trivial ones that may still be as extreme
        block = slice(start, start + z.shape[0])
        if rank < 0:
            critical[block] = np.inf
        elif rank >= upper.shape[0]:
            critical[block] = -np.inf
        else:
            critical[block] = -np.partition(-upper, rank, axis=0)[rank]
    return critical * total


def detectable_difference(differences: Sequence[float], weights: Sequence[float] | None = None,
                          alpha: float = ALPHA, family: int = 1, power: float = POWER,
                          simulations: int = POWER_SIMULATIONS, seed: int = POWER_SEED) -> float | None:
    """The smallest mean difference over the slices the sign-flip test detects with probability ``power``
    at Holm's first step, ``p < alpha / family``.

    Power comes from simulating the test itself (:func:`simulated_power`, seeded), not from a
    formula: at the corrected levels of a report the test's discreteness matters (10 patients at
    0.05 / 21 are detected only when all ten differences share a sign, which the paired t-test's
    formula does not know). The value is the ``power`` quantile of the studies' critical shifts.
    ``None`` when even the most extreme sign pattern cannot reach the level
    (``smallest_p_value * family >= alpha``: 9 patients in a family of 21, 2 / 2**9 * 21 = 0.08):
    no difference, however large, is detectable. Ties count: they raise the smallest p.
    """
    d = np.asarray(differences, dtype=np.float64)
    if smallest_p_value(d) * family >= alpha:
        return None
    if np.std(d[d != 0], ddof=1) == 0:  # no scatter: any shift in the observed direction reaches the level
        return 0.0
    critical = np.sort(_critical_shifts(d, weights, alpha, family, simulations, seed))
    value = float(critical[min(simulations - 1, math.ceil(power * simulations) - 1)])
    return None if not math.isfinite(value) else max(0.0, value)


def patient_paired_test(values_a: Sequence[float], values_b: Sequence[float],
                        patients: Sequence[Hashable], family: int | None = None) -> PatientTest:
    """Compare A and B on the same slices at the patient level (accuracy 0/1 or Dice alike).

    The effect is the mean difference over the slices; its p-value comes from
    :func:`sign_flip_p_value` on the per-patient mean differences weighted by their slices (which
    is the same statistic), its interval from :func:`patient_bootstrap` of the per-slice
    differences (patients resampled with all their slices). With ``family`` (the number of tests
    the p-value will be Holm-corrected with) it also carries :func:`detectable_difference` at
    ``ALPHA / family``; without, :meth:`PatientTest.at_family` adds it once the family is known.
    """
    a, b = _paired(values_a, values_b)
    d, slices = per_patient_differences(a, b, patients)
    p, method, drawn = sign_flip_p_value(d, slices)
    interval = patient_bootstrap(a - b, patients)
    test = PatientTest(int(a.size), int(d.size), float(a.mean()), float(b.mean()), float((a - b).mean()),
                       interval.low, interval.high, p, method, drawn, tuple(d.tolist()),
                       tuple(int(s) for s in slices))
    return test if family is None else test.at_family(family)
def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values of a family of tests, in the input's order.

    The k-th smallest p-value is multiplied by ``m - k + 1`` (m tests), capped at 1, and made
    non-decreasing along the sorted order; an adjusted p below ``alpha`` keeps the family-wise
    error rate at ``alpha``.
    """
    p = np.asarray(p_values, dtype=np.float64)
    adjusted = np.empty_like(p)
    running = 0.0
    for rank, index in enumerate(np.argsort(p, kind="stable")):
        running = max(running, min(1.0, (p.size - rank) * p[index]))
        adjusted[index] = running
    return adjusted.tolist()


def holm_thresholds(p_values: Sequence[float], alpha: float = ALPHA) -> list[float]:
    """The level each p-value is compared with in Holm's procedure, in the input's order: the k-th
    smallest of m against ``alpha / (m - k + 1)`` (ties in the order :func:`holm` sorts them)."""
    p = np.asarray(p_values, dtype=np.float64)
    thresholds = np.empty_like(p)
    for rank, index in enumerate(np.argsort(p, kind="stable")):
        thresholds[index] = alpha / (p.size - rank)
    return thresholds.tolist()


def settle_borderline(tests: Sequence[PatientTest], alpha: float = ALPHA) -> list[PatientTest]:
    """The family's tests with every Monte Carlo p-value that lies within :data:`BORDERLINE_SE` standard
    errors of its Holm threshold redrawn with ten times the sign patterns, until none does (or each
    such p reached :data:`MAX_PERMUTATIONS`): a call near the threshold then no longer hangs on the seed."""
    tests = list(tests)
    while True:
        thresholds = holm_thresholds([t.p_value for t in tests], alpha)
        near = [k for k, (t, level) in enumerate(zip(tests, thresholds)) if t.borderline(level)]
        if not near:
            return tests
        for k in near:
            tests[k] = tests[k].redrawn(thresholds[k])


def sample_sd(values: Sequence[float]) -> float | None:
    """Sample standard deviation (ddof 1), ``None`` under two values: the report's only SD (folds, repeats)."""
    return float(np.std(values, ddof=1)) if len(values) >= 2 else None


def prediction_factor(k: int, confidence: float = CONFIDENCE) -> float:
    """Half-width of the prediction interval of one more value from ``k`` normal ones, in sample SDs:
    ``t[k-1, (1 + confidence) / 2] * sqrt(1 + 1/k)`` (4.97 for k = 3)."""
    return float(stats.t.ppf((1 + confidence) / 2, k - 1) * math.sqrt(1 + 1 / k))


def sd_interval_factors(k: int, confidence: float = CONFIDENCE) -> tuple[float, float]:
    """Interval of the true SD from a sample SD of ``k`` normal values, as factors of the estimate:
    ``sqrt((k - 1) / chi2 quantile)`` at ``(1 + confidence) / 2`` and ``(1 - confidence) / 2``."""
    tail = (1 - confidence) / 2
    return (float(math.sqrt((k - 1) / stats.chi2.ppf(1 - tail, k - 1))),
            float(math.sqrt((k - 1) / stats.chi2.ppf(tail, k - 1))))


def definitions() -> dict:
    """The conventions above as data, for ``summary.json`` and the report's text."""
    return {"bootstrap_resamples": BOOTSTRAP_RESAMPLES, "bootstrap_seed": BOOTSTRAP_SEED, "confidence": CONFIDENCE,
            "alpha": ALPHA, "interval": "percentile, patients resampled with replacement",
            "estimate": "a row's value is its mean over all validation slices of all folds (Dice2: pooled TP/FP/FN); "
                        "fold SD: sample standard deviation (ddof 1) of the per-fold values",
            "patient_test": "paired permutation test flipping the sign of each patient's mean difference, weighted "
                            "by its slices, i.e. of the mean difference over slices (two-sided); patients whose "
                            f"difference is 0 left out; exact up to {EXACT_MAX_PATIENTS} other patients, else "
                            f"{PERMUTATIONS} random sign patterns (seed {PERMUTATION_SEED}), ten times more (up to "
                            f"{MAX_PERMUTATIONS}) while p lies within {BORDERLINE_SE:g} standard errors of its Holm "
                            "threshold",
            "difference_interval": "percentile bootstrap of the mean per-slice difference, patients resampled",
            "multiple_comparisons": "Holm step-down across every patient-level test the report makes",
            "detectable_difference": f"smallest mean difference over slices detected with probability {POWER:g} at "
                                     "Holm's first step (p < alpha / m, m tests in the report), from "
                                     f"{POWER_SIMULATIONS} simulated studies (seed {POWER_SEED}) tested by the same "
                                     "sign-flip test: tied patients stay tied, the others normal with the sd of the "
                                     "observed non-zero differences; none when 2 / 2**(non-tied patients) * m >= alpha",
            "power": POWER,
            "verdict_units": "a detected / not detected verdict only with patients as units; with slices as units "
                             "(dataset.json names no patients) the p-value is shown without a verdict",
            "per_slice_typing_test": "McNemar, exact two-sided binomial test on the discordant slices "
                                     "(slices not independent)",
            "per_slice_dice_test": "Wilcoxon signed-rank (scipy.stats.wilcoxon defaults) on per-slice Dice1 "
                                   "(slices not independent)",
            "run_to_run_floor": f"{CONFIDENCE * 100:g} % prediction interval of one more run's difference: "
                                "t[K-1] * sqrt(1 + 1/K) * SD over the K finished repeats; the SD's interval from "
                                "chi-square with K - 1 degrees of freedom"}


def format_p(p: float) -> str:
    """A p-value as text: three decimals, ``< 0.001`` below that (never a misleading ``0.000``)."""
    return "< 0.001" if p < 0.001 else f"{p:.3f}"
