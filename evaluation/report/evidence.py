"""The evidence behind the tables: a bootstrap interval per experiment, paired tests per compared pair.

Which pairs are compared is the papers' questions, as data (:func:`nnunet_joint.study.matrix.comparisons`):

* joint vs Y-Net, same initialisation (MIDL: does pixel-wise typing beat a classification head?);
* LiTS vs scratch, same framework (MIDL: does the LiTS initialisation help?);
* each fine-tuning schedule vs no freezing, joint model from LiTS (EMBC);
* the papers' SE-ResNet rows vs plain nnU-Net on the same labels, both from scratch.

Each pair is tested on the validation slices both rows evaluated (matched by case id; the
segmentation and joint datasets hold the same slices under the same ids). The test that decides
is at the patient level (:func:`evaluation.statistics.patient_paired_test`), Holm-corrected
across every pair and metric tested in the run; McNemar (type) and Wilcoxon (Dice1) per slice are
kept beside it, labelled as counting slices as independent. Intervals resample patients
(``dataset.json``'s ``patients``); without patients each slice is its own unit, the report says
so, and such a test gets no detected / not detected verdict.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

from nnunet_joint.study import matrix as vocabulary
from nnunet_joint.evaluation import published
from nnunet_joint.evaluation.report.experiments import NO_INIT, Experiment, find
from nnunet_joint.evaluation.statistics import (
    ALPHA,
    Interval,
    PairedTest,
    PatientTest,
    holm,
    mcnemar_exact,
    patient_bootstrap,
    patient_paired_test,
    settle_borderline,
    wilcoxon_signed_rank,
)

#: Metrics with a bootstrap interval and a paired test, and the per-slice test each also gets.
TESTED_METRICS: dict[str, str] = {"cls_acc": "McNemar", "dice": "Wilcoxon"}
#: Short metric names for sentences.
METRIC_WORDS = {"cls_acc": "type accuracy", "dice": "Dice1"}


@dataclasses.dataclass(frozen=True)
class Side:
    """One side of a comparison: the experiment fields it needs (and the experiment, if listed)."""

    framework: str
    init: str
    schedule: str
    experiment: Experiment | None
    dataset: str | None = None

    @property
    def label(self) -> str:
        if self.experiment is not None:
            return self.experiment.label
        if self.framework == "nnunet" and self.dataset is not None:
            return f"nnU-Net ({self.dataset.split('_', 1)[-1]})"
        schedule = "" if self.schedule == published.MIDL_SCHEDULE else f", {self.schedule}"
        name = vocabulary.FRAMEWORKS[self.framework].name if self.framework in vocabulary.FRAMEWORKS else self.framework
        return f"{name} ({self.init}{schedule})"

    def paper(self, source: str, metric: str) -> float | None:
        if source == "MIDL":
            return published.midl_value(self.framework, self.init, metric)
        if source == "EMBC":
            return published.embc_value(self.framework, self.init, self.schedule, metric)
        return None


@dataclasses.dataclass(frozen=True)
class Comparison:
    """A pair the papers compare: ``a`` vs ``b`` on ``metrics``, published in ``source``."""

    question: str
    a: Side
    b: Side
    metrics: tuple[str, ...]
    source: str


def comparisons(experiments: Sequence[Experiment]) -> list[Comparison]:
    """The papers' pairs (:func:`nnunet_joint.study.matrix.comparisons`), whether or not their experiments ran."""

    def side(key: tuple[str, str, str], dataset: int | None) -> Side:
        if dataset is None:
            return Side(*key, find(experiments, *key))
        folder = vocabulary.DATASET_FOLDERS[dataset]
        framework, init, schedule = key
        # an entry may give plain nnU-Net's initialisation as "-" (none of ours): it trains from scratch
        inits = (init, NO_INIT) if init == vocabulary.SCRATCH else (init,)
        return Side(*key, next((e for e in experiments if e.framework == framework and e.schedule == schedule
                                and e.init in inits and e.dataset == folder), None), folder)

    return [Comparison(c.name, side(c.better, c.dataset), side(c.baseline, c.dataset),
                       tuple(m for m in c.metrics if m in TESTED_METRICS), c.paper) for c in vocabulary.comparisons()]


@dataclasses.dataclass(frozen=True)
class ComparisonResult:
    """One metric of one comparison: the tests, or why there are none.

    Attributes:
        comparison: the pair.
        metric: ``cls_acc`` or ``dice``.
        patient: the patient-level test (the one that decides), ``None`` when not tested.
        per_slice: McNemar or Wilcoxon on the slices (slices not independent), ``None`` when not tested.
        p_holm: ``patient``'s p-value after Holm's correction across every test of the report.
        reason: why not tested (empty when tested).
        paper_effect: the paper's ``a - b`` for this metric, ``None`` where a paper lacks a cell.
        units: what the patient-level test resampled: ``"patients"``, or ``"slices"`` when neither
            row's ``dataset.json`` lists patients. With slices as units the test counts slices of one
            patient as independent, so its p-value is too small: it gets no verdict.
    """

    comparison: Comparison
    metric: str
    patient: PatientTest | None
    per_slice: PairedTest | None
    reason: str
    paper_effect: float | None
    p_holm: float | None = None
    units: str = "patients"

    @property
    def title(self) -> str:
        return f"{self.comparison.a.label} vs {self.comparison.b.label}"

    @property
    def tested(self) -> bool:
        return self.patient is not None

    @property
    def has_patients(self) -> bool:
        """The test's units are patients, so its p-value may decide (slices of one patient are not independent)."""
        return self.units == "patients"

    @property
    def detected(self) -> bool:
        """Whether the difference is detected at :data:`~evaluation.statistics.ALPHA` after Holm's correction
        (never with slices as units)."""
        return self.has_patients and self.p_holm is not None and self.p_holm < ALPHA

    def to_dict(self) -> dict:
        return {"question": self.comparison.question, "a": self.comparison.a.label, "b": self.comparison.b.label,
                "metric": self.metric, "patient_test": None if self.patient is None else self.patient.to_dict(),
                "p_holm": self.p_holm, "detected": self.detected if self.tested and self.has_patients else None,
                "units": self.units,
                "per_slice_test": None if self.per_slice is None else self.per_slice.to_dict(),
                "reason": self.reason, "paper_source": self.comparison.source, "paper_effect": self.paper_effect}


def paired_values(a: Experiment, b: Experiment, metric: str) -> tuple[list[str], list[float], list[float]]:
    """The slices both ``a`` and ``b`` have (sorted by case id), and each one's per-slice values on them."""
    values_a, values_b = a.per_slice(metric), b.per_slice(metric)
    common = sorted(set(values_a) & set(values_b))
    return common, [values_a[c] for c in common], [values_b[c] for c in common]


def run_comparison(comparison: Comparison, metric: str) -> ComparisonResult:
    """Test one metric of one pair on their common slices, or say why not (Holm comes later, in :func:`gather`)."""
    pa, pb = comparison.a.paper(comparison.source, metric), comparison.b.paper(comparison.source, metric)
    paper = None if pa is None or pb is None else round(pa - pb, 10)
    problems = [f"{side.label} not in the experiment list" if side.experiment is None
                else f"{side.label} {side.experiment.status}"
                for side in (comparison.a, comparison.b) if side.experiment is None or not side.experiment.done]
    if problems:  # a failure is named before a row that was not run: it is what the reader must see
        return ComparisonResult(comparison, metric, None, None,
                                next((p for p in problems if " failed" in p), problems[0]), paper)
    a, b = comparison.a.experiment, comparison.b.experiment
    cases, values_a, values_b = paired_values(a, b, metric)
    if not cases:
        return ComparisonResult(comparison, metric, None, None, "no validation slice evaluated by both", paper)
    # the two rows validate the same slices, so either row's patient list will do
    known = a if a.patients is not None else b
    patient = patient_paired_test(values_a, values_b, [known.patient_of(c) for c in cases])
    per_slice = (mcnemar_exact(values_a, values_b) if TESTED_METRICS[metric] == "McNemar"
                 else wilcoxon_signed_rank(values_a, values_b))
    return ComparisonResult(comparison, metric, patient, per_slice, "", paper,
                            units="patients" if known.patients is not None else "slices")


def patient_interval(e: Experiment, metric: str) -> Interval | None:
    """Bootstrap interval over patients of ``e``'s per-slice mean of ``metric`` (``None`` without values)."""
    values = e.per_slice(metric)
    if not values:
        return None
    cases = sorted(values)
    return patient_bootstrap([values[c] for c in cases], [e.patient_of(c) for c in cases])


@dataclasses.dataclass
class Evidence:
    """Intervals of every finished experiment and the results of every comparison."""

    intervals: dict[str, dict[str, Interval]]
    results: list[ComparisonResult]

    def interval(self, e: Experiment | None, metric: str) -> Interval | None:
        return None if e is None else self.intervals.get(e.key, {}).get(metric)

    @property
    def tested(self) -> list[ComparisonResult]:
        return [r for r in self.results if r.tested]

    @property
    def untested(self) -> list[ComparisonResult]:
        return [r for r in self.results if not r.tested]


def gather(experiments: Sequence[Experiment]) -> Evidence:
    """Compute every interval and every paired test the report shows."""
    intervals: dict[str, dict[str, Interval]] = {}
    for e in experiments:
        if e.done:
            found = {m: patient_interval(e, m) for m in TESTED_METRICS}
            intervals[e.key] = {m: i for m, i in found.items() if i is not None}
    results = [run_comparison(c, m) for c in comparisons(experiments) for m in c.metrics]
    tested = [i for i, r in enumerate(results) if r.tested]
    # one family: Monte Carlo p-values near their Holm threshold redrawn, then corrected together; each
    # test's smallest detectable difference at Holm's first step for this family
    settled = settle_borderline([results[i].patient for i in tested])
    for i, test, adjusted in zip(tested, settled, holm([t.p_value for t in settled])):
        results[i] = dataclasses.replace(results[i], patient=test.at_family(len(tested)), p_holm=adjusted)
    return Evidence(intervals, results)
