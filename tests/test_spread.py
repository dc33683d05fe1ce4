"""The report's run-to-run spread: repeats of the central comparison beside the fold spread."""

from __future__ import annotations

import numpy as np
import pytest

from nnunet_joint.evaluation.report import build_report
from nnunet_joint.evaluation.report.evidence import Evidence
from nnunet_joint.evaluation.report.experiments import Experiment
from nnunet_joint.evaluation.report.spread import repeat_values, sd_interval_factors, spread_blocks


def entry(init: str, acc: float, dice: float, tmp_path, repeat: int, per_fold=None) -> dict:
    folds = per_fold or [(0, acc, dice)]
    summary = {"folds": [f for f, _, _ in folds],
               "aggregate": {"metrics": {"cls_acc": {"mean": acc, "std": 0.0, "n": 30, "n_folds": len(folds)},
                                         "dice": {"mean": dice, "std": 0.0, "n": 30, "n_folds": len(folds)}}},
               "per_fold": [{"fold": f, "metrics": {"cls_acc": {"value": a}, "dice": {"value": d}}}
                            for f, a, d in folds], "cases": []}
    trainer = "nnUNetTrainerJoint" + ("_LiTS" if init == "LiTS" else "")
    return {"row": "Joint", "framework": "joint", "init": init, "schedule": "NoFreeze", "trainer": trainer,
            "dataset": "Dataset504_ShebaJoint", "trainer_dir": tmp_path / f"r{repeat}" / trainer,
            "status": "done", "summary": summary}


def test_sd_interval_factors_match_the_chi_square_table():
    # chi2 quantiles with 2 degrees of freedom: 0.025 -> 0.0506356, 0.975 -> 7.377759
    low, high = sd_interval_factors(3)
    assert low == pytest.approx((2 / 7.377759) ** 0.5, rel=1e-5)
    assert high == pytest.approx((2 / 0.0506356) ** 0.5, rel=1e-5)


def test_spread_section(tmp_path):
    lits, scratch = [0.8, 0.7, 0.75], [0.6, 0.65, 0.7]
    repeats = [{"repeat": r, "seed": r or None,
                "experiments": [entry("LiTS", lits[r], 0.5, tmp_path, r), entry("scratch", scratch[r], 0.4, tmp_path, r)]}
               for r in range(3)]
    values = repeat_values(repeats)
    assert [v.difference("cls_acc") for v in values] == pytest.approx([0.2, 0.05, 0.05])
    main_rows = [Experiment.from_dict(entry("LiTS", 0.8, 0.5, tmp_path, 0, [(0, 0.9, 0.5), (1, 0.7, 0.5)])),
                 Experiment.from_dict(entry("scratch", 0.6, 0.4, tmp_path, 0, [(0, 0.6, 0.4), (1, 0.6, 0.45)]))]
    table, lines = spread_blocks(repeats, main_rows, Evidence({}, []))
    assert table.rows[0][:5] == ["0", "none (main run)", "0.800", "0.600", "+0.200"]
    section = "\n".join(lines.items)
    differences = np.array(lits) - np.array(scratch)
    sd = np.std(differences, ddof=1)
    assert f"mean +{differences.mean():.3f}, SD {sd:.3f}" in section
    assert "range +0.050 to +0.200" in section
    # fold spread of the main run: differences 0.3 and 0.1 -> SD 0.141
    assert f"over the main run's folds: SD {np.std([0.3, 0.1], ddof=1):.3f}" in section
    assert f"under {2 * sd:.3f}" in section


def test_without_repeats_the_report_says_the_spread_is_unknown(tmp_path):
    result = build_report([], tmp_path / "report", {"profile": "demo"})
    assert "no --repeats" in result["report_md"].read_text(encoding="utf-8")
