"""Run-to-run spread: the central comparison trained several times, beside the spread over folds.

nnU-Net training is not deterministic, and on a validation set of a few patients two runs of one
row can differ by more than two methods do. ``nnunet_joint_reproduce --repeats K`` trains the
central comparison (joint model from LiTS vs from scratch) K times per fold; this module turns
those trainings into the numbers a reader needs to judge any difference in the report:

- per repeat, each row's mean over folds and the difference LiTS − scratch;
- the standard deviation of that difference over repeats (the run-to-run spread) and, beside it,
  over the folds of the main run (the fold spread);
- the noise floor: a difference smaller than twice the run-to-run standard deviation is within
  what retraining the same row moves (about a 95 % band for a normal spread; with K = 3 the SD
  itself is uncertain, which the report says).
"""

from __future__ import annotations

import dataclasses
import statistics
from typing import Any, Mapping, Sequence

from nnunet_joint.evaluation.report import document as doc
from nnunet_joint.evaluation.report.evidence import Evidence
from nnunet_joint.evaluation.report.experiments import Experiment

#: the metrics the spread is measured on (those the paired tests use)
SPREAD_METRICS = {"cls_acc": "type accuracy", "dice": "Dice1"}
#: a difference under NOISE_FACTOR x the run-to-run SD is within run-to-run noise
NOISE_FACTOR = 2.0


@dataclasses.dataclass(frozen=True)
class RepeatValues:
    """One repeat: its number, seed (``None``: unseeded, the main run) and, per metric, the LiTS and
    scratch rows' means over folds (``None`` where a row did not finish)."""

    repeat: int
    seed: int | None
    values: dict[str, tuple[float | None, float | None]]

    def difference(self, metric: str) -> float | None:
        lits, scratch = self.values.get(metric, (None, None))
        return None if lits is None or scratch is None else lits - scratch


def _pair(experiments: Sequence[Experiment]) -> tuple[Experiment | None, Experiment | None]:
    lits = next((e for e in experiments if e.framework == "joint" and e.init == "LiTS"), None)
    scratch = next((e for e in experiments if e.framework == "joint" and e.init == "scratch"), None)
    return lits, scratch


def _mean(e: Experiment | None, metric: str) -> float | None:
    entry = None if e is None else e.metric(metric)
    return None if entry is None else float(entry["mean"])


def repeat_values(repeats: Sequence[Mapping[str, Any]]) -> list[RepeatValues]:
    """Parse ``meta["repeats"]`` (per repeat: ``repeat``, ``seed``, ``experiments`` entries)."""
    out = []
    for entry in repeats:
        lits, scratch = _pair([Experiment.from_dict(e) for e in entry.get("experiments", [])])
        out.append(RepeatValues(int(entry["repeat"]), entry.get("seed"),
                                {m: (_mean(lits, m), _mean(scratch, m)) for m in SPREAD_METRICS}))
    return out


def sd(values: Sequence[float]) -> float | None:
    """Sample standard deviation (n − 1), ``None`` under two values."""
    return statistics.stdev(values) if len(values) >= 2 else None


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


def spread_blocks(repeats: Sequence[Mapping[str, Any]] | None, experiments: Sequence[Experiment],
                  evidence: Evidence) -> list[doc.Block]:
    """The report's run-to-run section: the per-repeat table, the spreads, and which tested
    differences exceed the noise floor."""
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
    lines, floors = [], {}
    for m, label in SPREAD_METRICS.items():
        diffs = [d for d in (r.difference(m) for r in rows) if d is not None]
        run_sd, fold_sd = sd(diffs), sd(fold_differences(experiments, m))
        if run_sd is None:
            lines.append(f"{label}: fewer than two repeats finished, so no run-to-run spread")
            continue
        floors[m] = NOISE_FACTOR * run_sd
        lines.append(
            f"{label}, LiTS − scratch over {len(diffs)} repeats: mean {statistics.mean(diffs):+.3f}, SD {run_sd:.3f} "
            f"(range {min(diffs):+.3f} to {max(diffs):+.3f}); over the main run's folds: "
            + ("one fold, no fold spread" if fold_sd is None else f"SD {fold_sd:.3f}")
            + f". A difference under {floors[m]:.3f} ({NOISE_FACTOR:g} x the run-to-run SD) is within what "
            "retraining the same rows moves.")
    for r in evidence.tested:
        if r.metric in floors:
            within = abs(r.patient.effect) < floors[r.metric]
            lines.append(f"{r.title}, {SPREAD_METRICS[r.metric]}: {r.patient.effect:+.3f} is "
                         + ("within the run-to-run spread" if within else "larger than the run-to-run spread"))
    if len(rows) >= 2:
        low, high = sd_interval_factors(len(rows))
        lines.append(f"With {len(rows)} repeats the SD is itself uncertain: its 95 % interval runs from {low:.2f}x "
                     f"to {high:.1f}x the estimate (normal spread assumed).")
    table = doc.Table("spread", "Run-to-run spread of the central comparison",
                      "Each repeat trains the joint model from LiTS and from scratch on every fold again; values are "
                      "means over folds (repeat 0 is the main run, the one the tables above show).", header, table_rows)
    return [table, doc.BulletList(lines)]


def sd_interval_factors(n: int) -> tuple[float, float]:
    """95 % interval of a sample SD from ``n`` normal values, as factors of the estimate:
    sqrt((n − 1) / chi2 quantile) at 0.975 and 0.025."""
    from scipy.stats import chi2

    return (float(((n - 1) / chi2.ppf(0.975, n - 1)) ** 0.5), float(((n - 1) / chi2.ppf(0.025, n - 1)) ** 0.5))
