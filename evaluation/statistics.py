"""Uncertainty of the report's numbers: bootstrap intervals over patients and paired tests.

Three folds give three numbers per metric, so "mean ± std over folds" alone cannot tell a real
difference between two methods from noise (so intervals and paired tests come
before any claim). This module holds the two tools the report uses, numpy/scipy only:

* :func:`patient_bootstrap`: a 95 % percentile interval of a per-slice mean (type accuracy,
  Dice1) when **patients** are resampled with replacement. Slices of one patient are not
  independent (same liver, same scanner, often the same lesion), so resampling slices would
  give intervals that are too narrow; resampling patients keeps each patient's slices together.
* :func:`mcnemar_exact` and :func:`wilcoxon_signed_rank`: paired tests of two models on the
  **same** validation slices, for typing (right/wrong per slice) and for per-slice Dice1.

Conventions (stated in the report): :data:`BOOTSTRAP_RESAMPLES` resamples drawn with numpy's
``default_rng(BOOTSTRAP_SEED)``, so a report is reproducible to the last digit; percentile
interval with numpy's default (linear) interpolation; a difference is called supported when
its two-sided p-value is below :data:`ALPHA`, with no correction for the number of tests.
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

    @property
    def supported(self) -> bool:
        """Whether the difference is supported at :data:`ALPHA` (two-sided, uncorrected)."""
        return self.p_value < ALPHA

    def to_dict(self) -> dict:
        return dataclasses.asdict(self) | {"supported": self.supported}


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


def definitions() -> dict:
    """The conventions above as data, for ``summary.json`` and the report's text."""
    return {"bootstrap_resamples": BOOTSTRAP_RESAMPLES, "bootstrap_seed": BOOTSTRAP_SEED, "confidence": CONFIDENCE,
            "alpha": ALPHA, "interval": "percentile, patients resampled with replacement",
            "typing_test": "McNemar, exact two-sided binomial test on the discordant slices",
            "dice_test": "Wilcoxon signed-rank (scipy.stats.wilcoxon defaults) on per-slice Dice1",
            "multiple_comparisons": "none (each p-value stands alone)"}


def format_p(p: float) -> str:
    """A p-value as text: three decimals, ``< 0.001`` below that (never a misleading ``0.000``)."""
    return "< 0.001" if p < 0.001 else f"{p:.3f}"
