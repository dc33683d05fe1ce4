"""The evidence behind the tables: a bootstrap interval per experiment, paired tests per compared pair.

Which pairs are compared is the papers' questions, as data (:func:`nnunet_joint.experiments.comparisons`):

* joint vs Y-Net, same initialisation (MIDL: does pixel-wise typing beat a classification head?);
* LiTS vs scratch, same framework (MIDL: does the LiTS initialisation help?);
* each fine-tuning schedule vs no freezing, joint model from LiTS (EMBC).

Each pair is tested on the validation slices both rows evaluated (matched by case id; the
segmentation and joint datasets hold the same slices under the same ids): McNemar for the type,
Wilcoxon signed-rank for Dice1 (:mod:`evaluation.statistics`). Intervals resample patients
(``dataset.json``'s ``patients``); without patients each slice is its own unit, and the report
says so.
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

from nnunet_joint import experiments as vocabulary
from nnunet_joint.evaluation import published
from nnunet_joint.evaluation.report.experiments import Experiment, find
from nnunet_joint.evaluation.statistics import (
    Interval,
    PairedTest,
    mcnemar_exact,
    patient_bootstrap,
    wilcoxon_signed_rank,
)

#: Metrics with a bootstrap interval and a paired test, and the test each uses.
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

    @property
    def label(self) -> str:
        if self.experiment is not None:
            return self.experiment.label
        schedule = "" if self.schedule == published.MIDL_SCHEDULE else f", {self.schedule}"
        return f"{published.FRAMEWORKS.get(self.framework, self.framework)} ({self.init}{schedule})"

    def paper(self, source: str, metric: str) -> float | None:
        if source == "MIDL":
            return published.midl_value(self.framework, self.init, metric)
        return published.embc_value(self.framework, self.init, self.schedule, metric)


@dataclasses.dataclass(frozen=True)
class Comparison:
    """A pair the papers compare: ``a`` vs ``b`` on ``metrics``, published in ``source``."""

    question: str
    a: Side
    b: Side
    metrics: tuple[str, ...]
    source: str


def comparisons(experiments: Sequence[Experiment]) -> list[Comparison]:
    """The papers' pairs (:func:`nnunet_joint.experiments.comparisons`), whether or not their experiments ran."""

    def side(key: tuple[str, str, str]) -> Side:
        return Side(*key, find(experiments, *key))

    return [Comparison(c.name, side(c.better), side(c.baseline), tuple(m for m in c.metrics if m in TESTED_METRICS),
                       c.paper) for c in vocabulary.comparisons()]


@dataclasses.dataclass(frozen=True)
class ComparisonResult:
    """One metric of one comparison: the test, or why there is none.

    Attributes:
        comparison: the pair.
        metric: ``cls_acc`` or ``dice``.
        test: the paired test, ``None`` when not tested.
        reason: why not tested (empty when tested).
        paper_effect: the paper's ``a - b`` for this metric, ``None`` where a paper lacks a cell.
    """

    comparison: Comparison
    metric: str
    test: PairedTest | None
    reason: str
    paper_effect: float | None

    @property
    def title(self) -> str:
        return f"{self.comparison.a.label} vs {self.comparison.b.label}"

    def to_dict(self) -> dict:
        return {"question": self.comparison.question, "a": self.comparison.a.label, "b": self.comparison.b.label,
                "metric": self.metric, "test": None if self.test is None else self.test.to_dict(),
                "reason": self.reason, "paper_source": self.comparison.source, "paper_effect": self.paper_effect}


def paired_values(a: Experiment, b: Experiment, metric: str) -> tuple[list[float], list[float]]:
    """Per-slice values of ``a`` and ``b`` on the slices both have (sorted by case id)."""
    values_a, values_b = a.per_slice(metric), b.per_slice(metric)
    common = sorted(set(values_a) & set(values_b))
    return [values_a[c] for c in common], [values_b[c] for c in common]


def run_comparison(comparison: Comparison, metric: str) -> ComparisonResult:
    """Test one metric of one pair on their common slices, or say why not."""
    pa, pb = comparison.a.paper(comparison.source, metric), comparison.b.paper(comparison.source, metric)
    paper = None if pa is None or pb is None else round(pa - pb, 10)
    for side in (comparison.a, comparison.b):
        if side.experiment is None:
            return ComparisonResult(comparison, metric, None, f"{side.label} not in the experiment list", paper)
        if not side.experiment.done:
            return ComparisonResult(comparison, metric, None, f"{side.label} {side.experiment.status}", paper)
    a, b = paired_values(comparison.a.experiment, comparison.b.experiment, metric)
    if not a:
        return ComparisonResult(comparison, metric, None, "no validation slice evaluated by both", paper)
    test = mcnemar_exact(a, b) if TESTED_METRICS[metric] == "McNemar" else wilcoxon_signed_rank(a, b)
    return ComparisonResult(comparison, metric, test, "", paper)


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
        return [r for r in self.results if r.test is not None]

    @property
    def untested(self) -> list[ComparisonResult]:
        return [r for r in self.results if r.test is None]


def gather(experiments: Sequence[Experiment]) -> Evidence:
    """Compute every interval and every paired test the report shows."""
    intervals: dict[str, dict[str, Interval]] = {}
    for e in experiments:
        if e.done:
            found = {m: patient_interval(e, m) for m in TESTED_METRICS}
            intervals[e.key] = {m: i for m, i in found.items() if i is not None}
    results = [run_comparison(c, m) for c in comparisons(experiments) for m in c.metrics]
    return Evidence(intervals, results)
