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
  bootstrap interval, and for a difference the test does not detect, the smallest difference
  this many patients could have detected (:func:`detectable_difference`).
* :func:`holm`: Holm's step-down correction of the p-values of a family of comparisons.
* :func:`mcnemar_exact` and :func:`wilcoxon_signed_rank`: paired tests of two models on the
  **same** validation slices, for typing (right/wrong per slice) and for per-slice Dice1. They
  count slices as independent, so their p-values are too small when a patient gives several
  slices; the report shows them labelled "per slice (slices not independent)".

Conventions (stated in the report): :data:`BOOTSTRAP_RESAMPLES` resamples drawn with numpy's
``default_rng(BOOTSTRAP_SEED)``, so a report is reproducible to the last digit; percentile
interval with numpy's default (linear) interpolation; a difference is called detected when its
Holm-corrected two-sided patient-level p-value is below :data:`ALPHA`.
"""

from __future__ import annotations

import dataclasses
from typing import Hashable, Sequence

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
#: Power at which the smallest detectable difference is stated.
POWER = 0.80
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
        n_patients: patients they come from (the test's sample size).
        mean_a, mean_b: the models' means over the paired slices.
        effect: ``mean_a - mean_b``.
        low, high: paired patient bootstrap percentile interval of ``effect``.
        p_value: two-sided patient-level sign-flip permutation p-value of ``effect`` (uncorrected).
        method: how the permutation distribution was obtained (exact, or Monte Carlo with its seed).
        detectable: the smallest difference this sample could have detected
            (:func:`detectable_difference`); ``None`` when no difference could reach :data:`ALPHA`.
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
    detectable: float | None

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


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


def sign_flip_p_value(differences: Sequence[float], weights: Sequence[float] | None = None,
                      permutations: int = PERMUTATIONS, seed: int = PERMUTATION_SEED) -> tuple[float, str]:
    """Two-sided p-value of a weighted mean of per-patient differences under patient-level sign flips.

    Under the null hypothesis (A and B exchangeable within each patient) each patient's mean
    difference ``d`` is as likely to have either sign. The statistic is ``sum(w * d) / sum(w)``
    (with the slices as weights: the mean difference over all slices); the p-value is the share
    of sign patterns whose statistic is at least as far from 0 as the observed one: all ``2**n``
    patterns when ``n <=`` :data:`EXACT_MAX_PATIENTS`, else ``permutations`` random patterns,
    counted as ``(1 + hits) / (1 + permutations)`` so the p-value is never 0.

    Returns:
        the p-value and a description of the method.
    """
    d = np.asarray(differences, dtype=np.float64)
    w = np.ones_like(d) if weights is None else np.asarray(weights, dtype=np.float64)
    terms = w * d / w.sum()
    n = d.size
    observed = abs(terms.sum())
    tolerance = 1e-12 * max(1.0, float(np.abs(terms).sum()))
    if n <= EXACT_MAX_PATIENTS:
        signs = 1.0 - 2.0 * ((np.arange(2**n)[:, None] >> np.arange(n)) & 1)
        hits = np.count_nonzero(np.abs(signs @ terms) >= observed - tolerance)
        return float(hits / 2**n), f"exact (all {2**n:,} sign patterns of {n} patients)"
    rng = np.random.default_rng(seed)
    hits = 0
    for start in range(0, permutations, _BLOCK):
        signs = rng.choice([-1.0, 1.0], size=(min(_BLOCK, permutations - start), n))
        hits += int(np.count_nonzero(np.abs(signs @ terms) >= observed - tolerance))
    return (1 + hits) / (1 + permutations), f"Monte Carlo ({permutations:,} sign patterns, seed {seed})"


def detectable_difference(differences: Sequence[float], weights: Sequence[float] | None = None,
                          alpha: float = ALPHA, power: float = POWER) -> float | None:
    """The smallest mean difference this many patients would detect with probability ``power``.

    The paired-design formula ``(t[n-1, 1 - alpha/2] + t[n-1, power]) * sd * sqrt(sum(v**2))``
    with ``sd`` the standard deviation (ddof 1) of the ``n`` per-patient differences and ``v`` the
    weights normalised to sum 1 (equal weights: ``sd / sqrt(n)``, the textbook form): a true
    difference this large would give p < ``alpha`` (two-sided) in about ``power`` of repeated
    studies of the same size and spread (the sign-flip test has about the paired t-test's power).
    ``None`` when even the most extreme sign pattern cannot reach ``alpha`` (``2 / 2**n >= alpha``,
    five patients or fewer at 0.05): no difference, however large, is detectable.
    """
    d = np.asarray(differences, dtype=np.float64)
    n = d.size
    if n < 2 or 2.0 / 2**n >= alpha:
        return None
    v = np.ones(n) / n if weights is None else np.asarray(weights, dtype=np.float64) / np.sum(weights)
    spread = float(d.std(ddof=1) * np.sqrt(np.sum(v**2)))
    return float((stats.t.ppf(1 - alpha / 2, n - 1) + stats.t.ppf(power, n - 1)) * spread)


def patient_paired_test(values_a: Sequence[float], values_b: Sequence[float],
                        patients: Sequence[Hashable]) -> PatientTest:
    """Compare A and B on the same slices at the patient level (accuracy 0/1 or Dice alike).

    The effect is the mean difference over the slices; its p-value comes from
    :func:`sign_flip_p_value` on the per-patient mean differences weighted by their slices (which
    is the same statistic), its interval from :func:`patient_bootstrap` of the per-slice
    differences (patients resampled with all their slices), and :func:`detectable_difference`
    from the per-patient differences' spread.
    """
    a, b = _paired(values_a, values_b)
    d, slices = per_patient_differences(a, b, patients)
    p, method = sign_flip_p_value(d, slices)
    interval = patient_bootstrap(a - b, patients)
    return PatientTest(int(a.size), int(d.size), float(a.mean()), float(b.mean()), float((a - b).mean()),
                       interval.low, interval.high, p, method, detectable_difference(d, slices))


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


def definitions() -> dict:
    """The conventions above as data, for ``summary.json`` and the report's text."""
    return {"bootstrap_resamples": BOOTSTRAP_RESAMPLES, "bootstrap_seed": BOOTSTRAP_SEED, "confidence": CONFIDENCE,
            "alpha": ALPHA, "interval": "percentile, patients resampled with replacement",
            "patient_test": "paired permutation test flipping the sign of each patient's mean difference, weighted "
                            "by its slices, i.e. of the mean difference over slices (two-sided); "
                            f"exact up to {EXACT_MAX_PATIENTS} patients, else {PERMUTATIONS} random sign patterns "
                            f"(seed {PERMUTATION_SEED})",
            "difference_interval": "percentile bootstrap of the mean per-slice difference, patients resampled",
            "multiple_comparisons": "Holm step-down across every patient-level test the report makes",
            "detectable_difference": f"(t[n-1, 1-alpha/2] + t[n-1, {POWER:g}]) * sd(per-patient differences) * "
                                     "sqrt(sum of squared slice weights, normalised to sum 1); none when "
                                     "2 / 2**n >= alpha",
            "power": POWER,
            "per_slice_typing_test": "McNemar, exact two-sided binomial test on the discordant slices "
                                     "(slices not independent)",
            "per_slice_dice_test": "Wilcoxon signed-rank (scipy.stats.wilcoxon defaults) on per-slice Dice1 "
                                   "(slices not independent)"}


def format_p(p: float) -> str:
    """A p-value as text: three decimals, ``< 0.001`` below that (never a misleading ``0.000``)."""
    return "< 0.001" if p < 0.001 else f"{p:.3f}"
