"""Run-to-run spread: the central comparison trained several times, beside the spread over folds.

nnU-Net training is not deterministic, and on a validation set of a few patients two runs of one
row can differ by more than two methods do. ``nnunet_joint_reproduce --repeats K`` trains the
central comparison (joint model from LiTS vs from scratch) K times per fold; this module turns
those trainings into the numbers a reader needs to judge that comparison:

- per repeat, each row's mean over all validation slices and the difference LiTS − scratch on the
  slices both evaluated: the same number, on the same scale, as the paired test's effect (repeat 0
  is the main run, so its difference *is* that effect);
- the sample SD (ddof 1) of that difference over the K repeats that finished (a failed repeat is
  not counted) and, beside it, over the folds of the main run (the fold spread);
- the run-to-run floor: the 95 % prediction interval of one more run's difference,
  ``t[K-1] * sqrt(1 + 1/K) * SD`` (4.97 SD with K = 3: a 3-repeat SD is itself uncertain, which
  the chi-square interval of the SD shows). It is applied only to the comparison whose spread
  was measured; the other comparisons were not repeated, and the section says so.
"""

from __future__ import annotations

import dataclasses
import statistics
from typing import Any, Mapping, Sequence

from nnunet_joint.evaluation import published
from nnunet_joint.evaluation.report import document as doc
from nnunet_joint.evaluation.report.evidence import ComparisonResult, Evidence, paired_values
from nnunet_joint.evaluation.report.experiments import Experiment
from nnunet_joint.evaluation.statistics import CONFIDENCE, prediction_factor, sample_sd, sd_interval_factors

#: the metrics the spread is measured on (those the paired tests use)
SPREAD_METRICS = {"cls_acc": "type accuracy", "dice": "Dice1"}


@dataclasses.dataclass(frozen=True)
class RepeatValues:
    """One repeat: its number, seed (``None``: unseeded, the main run) and, per metric, the LiTS and
    scratch rows' means over the slices both evaluated (``None`` where a row did not finish)."""

    repeat: int
    seed: int | None
    values: dict[str, tuple[float | None, float | None]]

    def difference(self, metric: str) -> float | None:
        lits, scratch = self.values.get(metric, (None, None))
        return None if lits is None or scratch is None else lits - scratch


def _pair(experiments: Sequence[Experiment]) -> tuple[Experiment | None, Experiment | None]:
    """The central comparison's two rows: the joint model from LiTS and from scratch, no freezing."""
    lits, scratch = (next((e for e in experiments if e.framework == "joint" and e.init == init
                           and e.schedule == published.MIDL_SCHEDULE), None) for init in ("LiTS", "scratch"))
    return lits, scratch


def paired_means(lits: Experiment | None, scratch: Experiment | None,
                 metric: str) -> tuple[float | None, float | None]:
    """The two rows' means over the slices both evaluated (the paired test's A and B), ``None`` if either
    did not finish or they share no slice."""
    if lits is None or scratch is None or not lits.done or not scratch.done:
        return None, None
    cases, a, b = paired_values(lits, scratch, metric)
    return (None, None) if not cases else (statistics.fmean(a), statistics.fmean(b))


def repeat_values(repeats: Sequence[Mapping[str, Any]]) -> list[RepeatValues]:
    """Parse ``meta["repeats"]`` (per repeat: ``repeat``, ``seed``, ``experiments`` entries)."""
    out = []
    for entry in repeats:
        lits, scratch = _pair([Experiment.from_dict(e) for e in entry.get("experiments", [])])
        out.append(RepeatValues(int(entry["repeat"]), entry.get("seed"),
                                {m: paired_means(lits, scratch, m) for m in SPREAD_METRICS}))
    return out


def fold_differences(experiments: Sequence[Experiment], metric: str) -> list[float]:
    """Per fold of the main run, LiTS − scratch (folds both rows evaluated)."""
    lits, scratch = _pair(experiments)
    if lits is None or scratch is None or not lits.done or not scratch.done:
        return []

    def per_fold(e: Experiment) -> dict[int, float]:
        return {int(f["fold"]): f["metrics"][metric]["value"] for f in e.summary.get("per_fold", [])
                if f.get("metrics", {}).get(metric, {}).get("value") is not None}

    a, b = per_fold(lits), per_fold(scratch)
    return [a[f] - b[f] for f in sorted(set(a) & set(b))]


@dataclasses.dataclass(frozen=True)
class Floor:
    """The run-to-run spread of one metric's LiTS − scratch difference, and what it says of the tested one.

    Attributes:
        metric: ``cls_acc`` or ``dice``.
        repeats: repeats listed (the main run included).
        finished_repeats: K, the repeats whose two rows both finished: what every number below uses.
        differences: their differences, in repeat order.
        sd: sample SD (ddof 1) over the K differences (``None`` under two).
        fold_sd: sample SD of the per-fold differences of the main run (``None`` under two folds).
        factor: ``t[K-1] * sqrt(1 + 1/K)``; ``half_width``: ``factor * sd``, the floor.
        sd_low, sd_high: the SD's interval as factors of the estimate (chi-square, K - 1 degrees of freedom).
        comparison: the tested comparison the floor applies to (the central one), ``None`` if not tested.
        effect: that comparison's difference (the paired test's effect, the main run's difference).
    """

    metric: str
    repeats: int
    finished_repeats: int
    differences: tuple[float, ...]
    sd: float | None
    fold_sd: float | None
    factor: float | None = None
    half_width: float | None = None
    sd_low: float | None = None
    sd_high: float | None = None
    comparison: str | None = None
    effect: float | None = None

    @property
    def within(self) -> bool | None:
        """Whether the tested difference lies within the floor (``None``: no floor or no tested difference)."""
        return None if self.half_width is None or self.effect is None else abs(self.effect) < self.half_width

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "within": self.within, "confidence": CONFIDENCE}


def central_result(evidence: Evidence, experiments: Sequence[Experiment], metric: str) -> ComparisonResult | None:
    """The tested comparison whose spread the repeats measured: joint from LiTS vs joint from scratch."""
    lits, scratch = _pair(experiments)
    return next((r for r in evidence.tested if r.metric == metric and lits is not None and scratch is not None
                 and r.comparison.a.experiment is lits and r.comparison.b.experiment is scratch), None)


def floors(repeats: Sequence[Mapping[str, Any]], experiments: Sequence[Experiment],
           evidence: Evidence) -> list[Floor]:
    """The spread of each metric, from the repeats that finished."""
    rows = repeat_values(repeats)
    out = []
    for m in SPREAD_METRICS:
        diffs = tuple(d for d in (r.difference(m) for r in rows) if d is not None)
        k, run_sd = len(diffs), sample_sd(diffs)
        floor = Floor(m, len(rows), k, diffs, run_sd, sample_sd(fold_differences(experiments, m)))
        if run_sd is not None:
            factor = prediction_factor(k)
            low, high = sd_interval_factors(k)
            central = central_result(evidence, experiments, m)
            floor = dataclasses.replace(floor, factor=factor, half_width=factor * run_sd, sd_low=low, sd_high=high,
                                        comparison=None if central is None else central.title,
                                        effect=None if central is None else central.patient.effect)
        out.append(floor)
    return out


def spread_summary(repeats: Sequence[Mapping[str, Any]] | None, experiments: Sequence[Experiment],
                   evidence: Evidence) -> dict | None:
    """``summary.json``'s ``spread``: per metric the floor and the number of finished repeats it used."""
    if not repeats:
        return None
    return {"repeats": len(repeats), "metrics": {f.metric: f.to_dict() for f in floors(repeats, experiments, evidence)}}


def spread_blocks(repeats: Sequence[Mapping[str, Any]] | None, experiments: Sequence[Experiment],
                  evidence: Evidence) -> list[doc.Block]:
    """The report's run-to-run section: the per-repeat table, the spreads, and whether the central
    comparison's tested difference exceeds the floor."""
    if not repeats:
        return [doc.Paragraph("Each row was trained once (no --repeats), so the run-to-run spread was not measured "
                              "here: a difference between two rows may be retraining noise.")]
    rows = repeat_values(repeats)
    header = ["repeat", "seed"]
    for label in SPREAD_METRICS.values():
        header += [f"{label} LiTS", f"{label} scratch", f"{label} LiTS − scratch"]

    def cell(v: float | None, signed: bool = False) -> str:
        return "–" if v is None else (f"{v:+.3f}" if signed else f"{v:.3f}")

    table_rows = []
    for r in rows:
        row = [str(r.repeat), "none (main run)" if r.seed is None else str(r.seed)]
        for m in SPREAD_METRICS:
            lits, scratch = r.values[m]
            row += [cell(lits), cell(scratch), cell(r.difference(m), True)]
        table_rows.append(row)
    lines = []
    for f in floors(repeats, experiments, evidence):
        label = SPREAD_METRICS[f.metric]
        if f.sd is None:
            lines.append(f"{label}: {f.finished_repeats} of {f.repeats} repeats finished, fewer than two, so no "
                         "run-to-run spread")
            continue
        k = f.finished_repeats
        lines.append(
            f"{label}, LiTS − scratch over the {k} repeats that finished (of {f.repeats}): mean "
            f"{statistics.fmean(f.differences):+.3f}, SD {f.sd:.3f} (range {min(f.differences):+.3f} to "
            f"{max(f.differences):+.3f}); over the main run's folds: "
            + ("one fold, no fold SD" if f.fold_sd is None else f"fold SD {f.fold_sd:.3f}")
            + f". One more run's difference would fall within ±{f.half_width:.3f} of the mean with "
            f"{CONFIDENCE * 100:g} % probability (prediction interval: t[{k - 1}] × √(1 + 1/{k}) × SD = "
            f"{f.factor:.2f} × SD); a difference under {f.half_width:.3f} is within what retraining these two rows "
            f"moves. With {k} repeats the SD is itself uncertain: its 95 % interval runs from {f.sd_low:.2f}× to "
            f"{f.sd_high:.1f}× the estimate (chi-square with {k - 1} degree{'s' if k > 2 else ''} of freedom, "
            "normal spread assumed).")
        if f.comparison is not None:
            lines.append(f"{f.comparison}, {label}: {f.effect:+.3f} (the main run's difference, on the same slices) is "
                         + ("within the run-to-run floor" if f.within else "larger than the run-to-run floor"))
    lines.append("Only joint (LiTS) vs joint (scratch) was repeated: the other comparisons' run-to-run spread was "
                 "not measured, and this floor says nothing about them.")
    table = doc.Table("spread", "Run-to-run spread of the central comparison",
                      "Each repeat trains the joint model from LiTS and from scratch on every fold again; values are "
                      "means over the validation slices both rows evaluated, all folds together (repeat 0 is the "
                      "main run: the numbers of the tables and the paired tests above); – : a row of that repeat "
                      "did not finish, and the repeat is not counted.", header, table_rows)
    return [table, doc.BulletList(lines)]
