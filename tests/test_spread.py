"""The report's run-to-run spread: repeats of the central comparison beside the fold spread.

Each repeat's rows are evaluation summaries with per-slice values (what the evaluator writes);
every expected number is computed here from those values with numpy and from t / chi-square
table values, never by the module under test.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from nnunet_joint.evaluation.report import build_report
from nnunet_joint.evaluation.report.evidence import Evidence
from nnunet_joint.evaluation.report.experiments import Experiment
from nnunet_joint.evaluation.report.spread import floors, repeat_values, spread_blocks

#: t[1, 0.975] and t[2, 0.975] from a t table; chi-square quantiles with 1 degree of freedom
T_1, T_2 = 12.706205, 4.302653
CHI2_1 = (0.000982069, 5.023886)


def entry(init: str, right: list[int], dice: list[float], tmp_path, repeat: int, folds=(0, 0, 1, 1),
          status: str = "done") -> dict:
    """A report entry whose summary holds per-slice values: slice i of fold ``folds[i]``, typed right or wrong."""
    cases = [{"case_id": f"c{i}", "fold": f, "dice": d, "true_type": 0, "pred_type": 0 if r else 1}
             for i, (f, r, d) in enumerate(zip(folds, right, dice))]
    per_fold = []
    for f in sorted(set(folds)):
        mine = [c for c in cases if c["fold"] == f]
        per_fold.append({"fold": f, "metrics": {
            "cls_acc": {"value": float(np.mean([c["pred_type"] == 0 for c in mine])), "n": len(mine)},
            "dice": {"value": float(np.mean([c["dice"] for c in mine])), "n": len(mine)}}})
    aggregate = {m: {"mean": float(np.mean([f["metrics"][m]["value"] for f in per_fold])), "std": 0.0,
                     "n": len(cases), "n_folds": len(per_fold)} for m in ("cls_acc", "dice")}
    trainer = "nnUNetTrainerJoint" + ("_LiTS" if init == "LiTS" else "")
    return {"row": "Joint", "framework": "joint", "init": init, "schedule": "NoFreeze", "trainer": trainer,
            "dataset": "Dataset504_ShebaJoint", "trainer_dir": tmp_path / f"r{repeat}" / trainer,
            "status": status, "summary": None if status != "done" else {
                "folds": sorted(set(folds)), "aggregate": {
                    "metrics": aggregate, "n_slices": len(cases), "n_folds": len(per_fold), "no_call": [0, 0, 0],
                    "confusion_matrix": [[sum(right), len(right) - sum(right), 0], [0, 0, 0], [0, 0, 0]]},
                "per_fold": per_fold, "cases": cases}}


#: per repeat, the LiTS and scratch rows' right/wrong and Dice per slice (4 slices, folds 0, 0, 1, 1)
LITS = [([1, 1, 1, 0], [0.9, 0.8, 0.7, 0.6]), ([1, 0, 1, 0], [0.8, 0.8, 0.7, 0.5]), ([1, 1, 0, 0], [0.9, 0.7, 0.7, 0.7])]
SCRATCH = [([1, 0, 0, 0], [0.5, 0.6, 0.7, 0.6]), ([0, 0, 1, 0], [0.6, 0.6, 0.7, 0.5]), ([1, 0, 0, 0], [0.7, 0.5, 0.6, 0.6])]


def repeats(tmp_path, failed: int | None = None) -> list[dict]:
    return [{"repeat": r, "seed": r or None, "experiments": [
        entry("LiTS", *LITS[r], tmp_path, r),
        entry("scratch", *SCRATCH[r], tmp_path, r, status="failed: not every fold finished" if r == failed else "done")]}
        for r in range(3)]


def differences(metric: int, finished=(0, 1, 2)) -> np.ndarray:
    """LiTS − scratch per finished repeat: means over the four slices (metric 0: right/wrong, 1: Dice)."""
    return np.array([np.mean(LITS[r][metric]) - np.mean(SCRATCH[r][metric]) for r in finished])


def test_spread_section(tmp_path):
    values = repeat_values(repeats(tmp_path))
    assert [v.difference("cls_acc") for v in values] == pytest.approx([0.5, 0.25, 0.25])
    assert [v.difference("dice") for v in values] == pytest.approx(differences(1))
    main_rows = [Experiment.from_dict(entry("LiTS", *LITS[0], tmp_path, 0)),
                 Experiment.from_dict(entry("scratch", *SCRATCH[0], tmp_path, 0))]
    table, lines = spread_blocks(repeats(tmp_path), main_rows, Evidence({}, []))
    # repeat 0 (the main run): LiTS 3/4 right, scratch 1/4, over all four slices
    assert table.rows[0][:5] == ["0", "none (main run)", "0.750", "0.250", "+0.500"]
    section = "\n".join(lines.items)
    d = differences(0)
    sd = np.std(d, ddof=1)
    assert f"over the 3 repeats that finished (of 3): mean +{d.mean():.3f}, SD {sd:.3f}" in section
    assert "range +0.250 to +0.500" in section
    # fold spread of the main run: per fold LiTS 1, 0.5 vs scratch 0.5, 0 -> differences 0.5 and 0.5
    assert "over the main run's folds: fold SD 0.000" in section
    # the floor is the 95 % prediction half-width t[2] * sqrt(1 + 1/3) * SD = 4.97 SD
    half = T_2 * math.sqrt(4 / 3) * sd
    assert f"within ±{half:.3f} of the mean" in section and "= 4.97 × SD" in section
    assert "with 2 degrees of freedom" in section
    assert "Only joint (LiTS) vs joint (scratch) was repeated" in section


def test_a_failed_repeat_is_not_counted(tmp_path):
    # three repeats, the scratch row of repeat 2 failed: K = 2 finished repeats, for every number
    main = repeats(tmp_path, failed=2)[0]["experiments"]
    result = build_report(main, tmp_path / "report", {"profile": "demo", "repeats": repeats(tmp_path, failed=2)})
    spread = json.loads(result["summary_json"].read_text(encoding="utf-8"))["spread"]
    d = differences(0, finished=(0, 1))
    sd = float(np.std(d, ddof=1))
    accuracy = spread["metrics"]["cls_acc"]
    assert spread["repeats"] == 3 and accuracy["finished_repeats"] == 2 and accuracy["repeats"] == 3
    assert accuracy["differences"] == pytest.approx(d.tolist()) and accuracy["sd"] == pytest.approx(sd)
    assert accuracy["factor"] == pytest.approx(T_1 * math.sqrt(1.5), rel=1e-6)
    assert accuracy["half_width"] == pytest.approx(T_1 * math.sqrt(1.5) * sd, rel=1e-6)
    # the SD's interval from 1 degree of freedom: 0.45x to 31.9x (not 0.52x to 6.3x from the 3 rows listed)
    assert (accuracy["sd_low"], accuracy["sd_high"]) == (pytest.approx((1 / CHI2_1[1]) ** 0.5, rel=1e-5),
                                                         pytest.approx((1 / CHI2_1[0]) ** 0.5, rel=1e-5))
    md = result["report_md"].read_text(encoding="utf-8")
    section = md.split("## Run-to-run spread", 1)[1].split("\n## ", 1)[0]
    assert "over the 2 repeats that finished (of 3)" in section
    assert "its 95 % interval runs from 0.45× to 31.9× the estimate" in section
    assert "| 2 | 2 | – | – | – |" in section  # the failed repeat: no slices both rows evaluated
    # the floor applies to the comparison it was measured on, on its scale: the paired test's effect is
    # repeat 0's difference over the same slices
    assert accuracy["comparison"] == "joint (LiTS) vs joint (scratch)"
    assert accuracy["effect"] == pytest.approx(d[0])
    assert accuracy["within"] == (abs(d[0]) < T_1 * math.sqrt(1.5) * sd)
    assert (f"joint (LiTS) vs joint (scratch), type accuracy: +{d[0]:.3f} (the main run's difference, on the same "
            "slices) is within the run-to-run floor") in section
    paired = json.loads(result["summary_json"].read_text(encoding="utf-8"))["paired_tests"]
    lits_vs_scratch = next(t for t in paired if t["a"] == "joint (LiTS)" and t["b"] == "joint (scratch)"
                           and t["metric"] == "cls_acc")
    assert lits_vs_scratch["patient_test"]["effect"] == pytest.approx(d[0])


def test_one_finished_repeat_gives_no_floor(tmp_path):
    runs = repeats(tmp_path, failed=1)[:2]
    (floor, _) = floors(runs, [], Evidence({}, []))
    assert (floor.finished_repeats, floor.sd, floor.half_width) == (1, None, None)
    lines = spread_blocks(runs, [], Evidence({}, []))[1].items
    assert lines[0] == "type accuracy: 1 of 2 repeats finished, fewer than two, so no run-to-run spread"


def test_without_repeats_the_report_says_the_spread_is_unknown(tmp_path):
    result = build_report([], tmp_path / "report", {"profile": "demo"})
    assert "no --repeats" in result["report_md"].read_text(encoding="utf-8")
    assert result["summary"]["spread"] is None
