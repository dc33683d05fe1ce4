"""``nnunet_joint_reproduce`` end to end on the tiny phantom with a minimal budget (slow; CI runs it).

The report's tables and summary.json are checked against the fold folders, re-evaluated here
independently of the pipeline's own evaluation call.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from nnunet_joint.evaluation.evaluate import evaluate_trainer_dir
from nnunet_joint.evaluation.metrics import format_mean_std
from nnunet_joint.reproduce import DATASET_FOLDERS, PLAIN_TRAINER, PROFILES

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def run_dir(tiny_reproduced) -> Path:
    return tiny_reproduced.root


def experiments(run_dir: Path) -> dict[str, dict]:
    summary = json.loads((run_dir / "report" / "summary.json").read_text(encoding="utf-8"))
    return {e["key"]: e for e in summary["experiments"]}


def test_run_folder_is_self_contained(run_dir):
    for sub in ("phantom/LiTS", "phantom/Sheba", "nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results", "report"):
        assert (run_dir / sub).is_dir(), sub
    for name in ("report.md", "report.html", "summary.json", "summary.csv"):
        assert (run_dir / "report" / name).stat().st_size > 0
    # stage 1 and the LiTS lesion model where nnunet_joint_predict looks for them
    assert (run_dir / "nnUNet_results" / DATASET_FOLDERS[501] / f"{PLAIN_TRAINER}__nnUNetPlans__2d" / "fold_0"
            / "checkpoint_final.pth").is_file()
    assert (run_dir / "nnUNet_results" / DATASET_FOLDERS[502] / "nnUNetTrainerSEResNetSeg__nnUNetSEResNet18Plans__2d"
            / "fold_0" / "checkpoint_final.pth").is_file()


def test_summary_matches_the_fold_folders(run_dir):
    done = [e for e in experiments(run_dir).values() if e["status"] == "done"]
    trained = {e["trainer"] for e in done}
    assert set(PROFILES["tiny"].rows) <= trained  # every row of the profile ran
    for e in done:
        fresh = evaluate_trainer_dir(Path(e["trainer_dir"]), gt_dir=run_dir / "nnUNet_preprocessed" / e["dataset"]
                                     / "gt_segmentations", folds=[0])
        for metric, value in fresh["aggregate"]["metrics"].items():
            assert e["aggregate"]["metrics"][metric]["n"] == value["n"], (e["key"], metric)
            if value["mean"] is not None:
                assert e["aggregate"]["metrics"][metric]["mean"] == pytest.approx(value["mean"]), (e["key"], metric)


def test_report_tables_show_measured_cells_and_never_invent_numbers(run_dir):
    report = (run_dir / "report" / "report.md").read_text(encoding="utf-8")
    exps = experiments(run_dir)
    joint = next(e for e in exps.values() if e["trainer"] == "nnUNetTrainerJoint_LiTS")
    acc = joint["aggregate"]["metrics"]["cls_acc"]
    assert f"{format_mean_std(acc)} (n={acc['n']})" in report
    imagenet = [e for e in exps.values() if e["init"] == "ImageNet"]
    assert imagenet and all(e["status"] == "not run: no ImageNet weights given" for e in imagenet)
    assert all(e["aggregate"] is None for e in imagenet)
    assert "not run: no ImageNet weights given" in report
    with open(run_dir / "report" / "summary.csv") as f:
        rows = list(csv.DictReader(f))
    for row in rows:
        if row["status"] != "done":
            assert row["mean"] == "", row  # an experiment that did not run has no number


def test_report_states_the_stage1_liver_dice(run_dir):
    folder = run_dir / "nnUNet_results" / DATASET_FOLDERS[501] / f"{PLAIN_TRAINER}__nnUNetPlans__2d"
    fresh = evaluate_trainer_dir(folder, gt_dir=run_dir / "nnUNet_preprocessed" / DATASET_FOLDERS[501]
                                 / "gt_segmentations", folds=[0])
    dice = fresh["aggregate"]["metrics"]["liver_dice"]
    assert dice["n"] >= 1 and 0.0 <= dice["mean"] <= 1.0
    line = f"liver Dice per validation volume {format_mean_std(dice)} (n={dice['n']} volumes)"
    assert line in (run_dir / "report" / "report.md").read_text(encoding="utf-8")
    assert line in (run_dir / "report" / "report.html").read_text(encoding="utf-8")
