"""``summary.json`` and ``summary.csv``: every number of the report as data.

``summary.json`` keeps, per experiment, its status, the budget it requested and the one it used,
aggregate and per-fold metrics, bootstrap intervals and the folds' learning-curve presence; then
the paired tests, the statistics' conventions, the papers' numbers and the tables' cell texts.
``summary.csv`` has one row per experiment x metric, with the papers' numbers beside ours.
"""

from __future__ import annotations

import csv
import io
import os
from typing import Any, Sequence

import numpy as np

from nnunet_joint.evaluation.metrics import METRIC_NAMES
from nnunet_joint.evaluation.report.evidence import Evidence
from nnunet_joint.evaluation.report.experiments import Experiment, training_used


def json_default(value: Any) -> Any:
    """``json.dumps`` fallback: paths as strings, numpy scalars and arrays as Python numbers and lists."""
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


def experiment_record(e: Experiment, evidence: Evidence) -> dict:
    """Everything ``summary.json`` keeps about one experiment."""
    record = {
        "key": e.key, "label": e.label, "row": e.row, "framework": e.framework, "init": e.init,
        "schedule": e.schedule, "trainer": e.trainer, "dataset": e.dataset, "trainer_dir": str(e.trainer_dir),
        "status": e.status, "budget": e.budget, "paper": e.paper(),
        "aggregate": None, "per_fold": None, "fold_kinds": None, "training": None, "intervals": None,
    }
    if e.done:
        record["aggregate"] = e.summary["aggregate"]
        record["per_fold"] = e.summary["per_fold"]
        record["fold_kinds"] = e.summary.get("fold_kinds")
        record["training"] = {
            "used": training_used(e).to_dict(),
            "folds": [{"fold": r.fold, "joint_config": r.config is not None,
                       "epochs_iterations": None if r.budget is None else list(r.budget),
                       "learning_curve_epochs": None if r.curve is None else len(r.curve.epochs),
                       "learning_curve_iterations": None if r.curve is None else r.curve.final_iterations}
                      for r in e.records],
            "patients_known": e.patients is not None,
        }
        record["intervals"] = {m: i.to_dict() for m, i in evidence.intervals.get(e.key, {}).items()}
    return record


CSV_HEADER = ("experiment", "dataset", "framework", "init", "schedule", "status", "metric", "mean", "std", "n",
              "n_folds", "pooled", "ci_low", "ci_high", "paper_midl", "paper_embc")


def _csv_number(value: float | int | None) -> str:
    return "" if value is None else repr(value)


def summary_csv(experiments: Sequence[Experiment], evidence: Evidence) -> str:
    """One row per experiment x metric; ``paper_midl``/``paper_embc`` where a paper reports that cell.

    ``mean``/``std`` are over folds; ``pooled`` is Dice2 over all slices of all folds (empty for
    other metrics); ``ci_low``/``ci_high`` the 95 % bootstrap interval over patients (accuracy
    and Dice1). Two paper columns, because for the joint model the two papers report different
    numbers for the same setting (e.g. scratch Dice1: MIDL 0.57, EMBC 0.49).
    """
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_HEADER)
    for e in experiments:
        paper = e.paper()
        for metric in METRIC_NAMES:
            entry = e.summary["aggregate"]["metrics"].get(metric, {}) if e.done else {}
            interval = evidence.interval(e, metric)
            writer.writerow([e.trainer, e.dataset, e.framework, e.init, e.schedule, e.status, metric,
                             _csv_number(entry.get("mean")), _csv_number(entry.get("std")),
                             _csv_number(entry.get("n")), _csv_number(entry.get("n_folds")),
                             _csv_number(entry.get("pooled")),
                             _csv_number(None if interval is None else interval.low),
                             _csv_number(None if interval is None else interval.high),
                             _csv_number(paper.get("MIDL", {}).get(metric)),
                             _csv_number(paper.get("EMBC", {}).get(metric))])
    return buffer.getvalue()
