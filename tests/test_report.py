"""The experiment report on a fake run: tiny NIfTI fold folders evaluated by the real evaluator.

Cases (6 x 6 liver crops), two folds, fold 0 = {A, B}, fold 1 = {C, D}; patients P1 = {A, B},
P2 = {C}, P3 = {D}. Lesions are 2 x 2 except A's, 2 x 3:

* joint LiTS: A perfect cyst; B lesion found but typed hemangioma (true metastasis); C perfect
  hemangioma; D cyst, half the lesion found. Dice folds 1 and 5/6 -> 0.92 ± 0.08; accuracy folds
  0.5 and 1.0 -> 0.75 ± 0.25; Dice2 pooled: tp 6+4+4+2, fn 2 -> 32/34.
* Y-Net LiTS (segmentation dataset + head): A, B, D perfect, C missed; head says hemangioma for
  A (wrong), metastasis for B, hemangioma for C, cyst for D -> Dice 1.00 and 0.50, accuracy
  0.5 and 1.0.
* plain nnU-Net on the joint dataset: perfect (its dataset.json copy lists no patients).
* joint ImageNet: not run; segmentation scratch: failed.

The report shows the rows that ran: joint and Y-Net from LiTS, the failed segmentation baseline,
plain nnU-Net; the ImageNet row is named in one line, not drawn as "not run" cells.

Bootstrap intervals with three patients are known exactly: the joint model's accuracy per slice
is P1 (1, 0), P2 1, P3 1; a resample drawing P1 k times has mean 3 / (3 + k), so the lowest
mean, 0.5, has probability 1/27 (above 2.5 %) and mean 1 has 8/27: interval [0.50, 1.00]
(resampling the four slices instead gives [0.25, 1.00]). Dice: all-P3 resamples (1/27) give
2/3, P3-free ones (8/27) give 1: [0.67, 1.00].
"""

from __future__ import annotations

import csv
import dataclasses
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from report_helpers import cell, md_table, write_joint_config, write_learning_curve, write_slice

from nnunet_joint.evaluation import published
from nnunet_joint.evaluation.evaluate import evaluate_trainer_dir
from nnunet_joint.evaluation.report import Experiment, build_report
from nnunet_joint.evaluation.report.experiments import (
    FoldRecord,
    RecordError,
    read_fold_record,
    read_learning_curve,
    training_used,
)
from nnunet_joint.evaluation.report.figure_set import curve_panels
from nnunet_joint.evaluation.report.overlays import choose_overlay_cases, overlay_rows

JOINT_DS, SEG_DS = "Dataset504_ShebaJoint", "Dataset503_ShebaSeg"
JOINT_LABELS = {"background": 0, "liver": 1, "cyst": 2, "hemangioma": 3, "metastasis": 4}
SEG_LABELS = {"background": 0, "liver": 1, "lesion": 2}
TYPES = {"A": "cyst", "B": "metastasis", "C": "hemangioma", "D": "cyst"}
PATIENTS = {"A": "P1", "B": "P1", "C": "P2", "D": "P3"}
SPLITS = [{"train": ["C", "D"], "val": ["A", "B"]}, {"train": ["A", "B"], "val": ["C", "D"]}]
NO_IMAGENET = "not run: no ImageNet weights given"


def liver_with_lesion(label: int, lesion: slice = slice(2, 4)) -> np.ndarray:
    array = np.zeros((6, 6), np.uint8)
    array[1:5, 1:5] = 1
    array[2:4, lesion] = label
    return array


REFERENCE = {"A": liver_with_lesion(2, slice(2, 5)), "B": liver_with_lesion(4), "C": liver_with_lesion(3),
             "D": liver_with_lesion(2)}
JOINT_PRED = {"A": REFERENCE["A"], "B": liver_with_lesion(3), "C": liver_with_lesion(3),
              "D": liver_with_lesion(2, slice(2, 3))}
YNET_PRED = {"A": REFERENCE["A"], "B": liver_with_lesion(2), "C": liver_with_lesion(1), "D": liver_with_lesion(2)}
YNET_HEAD = {"A": [0.2, 0.7, 0.1], "B": [0.1, 0.1, 0.8], "C": [0.3, 0.6, 0.1], "D": [0.9, 0.05, 0.05]}


def seg_labels(joint: np.ndarray) -> np.ndarray:
    return np.minimum(joint, 2).astype(np.uint8)


def make_dataset(root: Path, name: str, labels: dict, to_labels) -> Path:
    """Preprocessed folder (gt, dataset.json with our lesion_types and patients, splits); returns its gt."""
    folder = root / "nnUNet_preprocessed" / name
    folder.mkdir(parents=True)
    (folder / "dataset.json").write_text(json.dumps({"labels": labels, "file_ending": ".nii.gz", "lesion_types": TYPES,
                                                     "patients": PATIENTS}))
    (folder / "splits_final.json").write_text(json.dumps(SPLITS))
    for case, array in REFERENCE.items():
        write_slice(folder / "gt_segmentations" / f"{case}.nii.gz", to_labels(array))
    return folder / "gt_segmentations"


def make_trainer(root: Path, dataset: str, trainer: str, predictions: dict, head: dict | None = None) -> Path:
    trainer_dir = root / "nnUNet_results" / dataset / f"{trainer}__nnUNetPlans__2d"
    trainer_dir.mkdir(parents=True)
    shutil.copy(root / "nnUNet_preprocessed" / dataset / "dataset.json", trainer_dir / "dataset.json")
    for fold, split in enumerate(SPLITS):
        validation = trainer_dir / f"fold_{fold}" / "validation"
        for case in split["val"]:
            write_slice(validation / f"{case}.nii.gz", predictions[case])
        if head is not None:
            (validation / "classification.json").write_text(
                json.dumps({c: {"probabilities": head[c]} for c in split["val"]}))
    return trainer_dir


def experiment(row, framework, init, schedule, trainer, dataset, trainer_dir, status="done", summary=None):
    return {"row": row, "framework": framework, "init": init, "schedule": schedule, "trainer": trainer,
            "dataset": dataset, "trainer_dir": trainer_dir, "status": status, "summary": summary,
            "budget": {"epochs": 2, "iterations": 5, "encoder": "seresnet18"}}


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("run")
    raw = root / "nnUNet_raw" / JOINT_DS
    rng = np.random.default_rng(0)
    for case, array in REFERENCE.items():
        ct = np.where(array >= 1, 100.0, -100.0) + np.where(array >= 2, -80.0, 0.0) + rng.normal(0, 5, array.shape)
        write_slice(raw / "imagesTr" / f"{case}_0000.nii.gz", ct.astype(np.float32))
        write_slice(raw / "labelsTr" / f"{case}.nii.gz", array)
    joint_gt = make_dataset(root, JOINT_DS, JOINT_LABELS, lambda a: a)
    seg_gt = make_dataset(root, SEG_DS, SEG_LABELS, seg_labels)
    joint_dir = make_trainer(root, JOINT_DS, "nnUNetTrainerJoint_LiTS", JOINT_PRED)
    ynet_dir = make_trainer(root, SEG_DS, "nnUNetTrainerYNet_LiTS", {c: seg_labels(a) for c, a in YNET_PRED.items()},
                            YNET_HEAD)
    nnunet_dir = make_trainer(root, JOINT_DS, "nnUNetTrainer", REFERENCE)
    # what the trainings used: the joint folds trained 3 x 4 (not the requested 2 x 5), the Y-Net's
    # fold 1 has no record; plain nnU-Net has only nnU-Net's plans.json, and no patients
    for fold in (0, 1):
        write_joint_config(joint_dir / f"fold_{fold}", 3, 4, "seresnet18", (32, 32))
        write_learning_curve(joint_dir / f"fold_{fold}", "joint", 4, [0.1, 0.3, 0.5 + 0.1 * fold], [0.3, 0.5, 0.6])
    write_joint_config(ynet_dir / "fold_0", 3, 4, "seresnet18", (32, 32))
    write_learning_curve(ynet_dir / "fold_0", "ynet", 4, [0.2, 0.4, 0.45], [0.33, 0.4, 0.5])
    (nnunet_dir / "plans.json").write_text(json.dumps({"configurations": {"2d": {
        "patch_size": [8, 8], "architecture": {
            "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet"}}}}))
    nnunet_json = json.loads((nnunet_dir / "dataset.json").read_text())
    del nnunet_json["patients"]
    (nnunet_dir / "dataset.json").write_text(json.dumps(nnunet_json))
    summaries = {
        "joint": evaluate_trainer_dir(joint_dir, joint_gt),
        "ynet": evaluate_trainer_dir(ynet_dir, seg_gt),
        "nnunet": evaluate_trainer_dir(nnunet_dir, joint_gt),
    }
    experiments = [
        experiment("Joint", "joint", "LiTS", "NoFreeze", "nnUNetTrainerJoint_LiTS", JOINT_DS, joint_dir,
                   summary=summaries["joint"]),
        experiment("Joint", "joint", "ImageNet", "NoFreeze", "nnUNetTrainerJoint_ImageNet", JOINT_DS,
                   root / "missing", status=NO_IMAGENET),
        experiment("Y-Net", "ynet", "LiTS", "NoFreeze", "nnUNetTrainerYNet_LiTS", SEG_DS, ynet_dir,
                   summary=summaries["ynet"]),
        experiment("Seg", "seg", "scratch", "NoFreeze", "nnUNetTrainerSeg_scratch", SEG_DS, root / "missing2",
                   status="failed: RuntimeError: boom | see log"),
        experiment("nnU-Net", "nnunet", "-", "NoFreeze", "nnUNetTrainer", JOINT_DS, nnunet_dir,
                   summary=summaries["nnunet"]),
    ]
    meta = {"commands": [["nnUNetv2_train", "504", "2d", "0", "-tr", "nnUNetTrainerJoint_LiTS"], "nnunet_joint_x y"],
            "versions": {"python": "3.11", "torch": "2.x", "nnunetv2": "2.8.1", "nnunet_joint": "0.1.0"},
            "profile": "demo", "wall_time_s": 3725.0, "phantom": {"seed": 7, "n_slices": 4, "difficulty": 0.5},
            "raw_root": root / "nnUNet_raw", "images_dataset": JOINT_DS}
    out = root / "report"
    result = build_report(experiments, out, meta)
    return {"out": out, "result": result, "summaries": summaries, "experiments": experiments}


def test_midl_table_cells(built):
    md = (built["out"] / "report.md").read_text(encoding="utf-8")
    rows = md_table(md, "Table 1 (MIDL)")
    joint = built["summaries"]["joint"]["aggregate"]["metrics"]
    # one number per cell: the mean over the four slices, its patient interval, then the fold SD (ddof 1):
    # accuracy folds 0.5 and 1.0 -> SD 0.5 / sqrt(2) = 0.35; Dice folds 1 and 5/6 -> SD (1/6) / sqrt(2) = 0.12
    assert cell(rows, "joint", "LiTS: ours", "cls acc") == "0.75 [0.50, 1.00] (n=4; fold SD 0.35)"
    assert f"{0.5 / 2**0.5:.2f} {(1 / 6) / 2**0.5:.2f}" == "0.35 0.12"
    assert cell(rows, "joint", "LiTS: ours", "Dice1 (seg Dice)") == f"{(3 + 2 / 3) / 4:.2f} [0.67, 1.00] (n=4; fold SD 0.12)"
    recall = [f["metrics"]["recall"] for f in built["summaries"]["joint"]["per_fold"]]
    pooled = sum(r["value"] * r["n"] for r in recall) / sum(r["n"] for r in recall)
    assert cell(rows, "joint", "LiTS: ours", "seg recall") == (  # no interval
        f"{pooled:.2f} (n=4; fold SD {np.std([r['value'] for r in recall], ddof=1):.2f})")
    assert joint["recall"]["n"] == 4
    assert cell(rows, "joint", "LiTS: paper", "cls acc") == "0.86"
    assert cell(rows, "Y-Net", "LiTS: ours", "Dice1 (seg Dice)") == "0.75 [0.00, 1.00] (n=4; fold SD 0.35)"
    assert cell(rows, "Y-Net", "LiTS: ours", "cls acc") == "0.75 [0.50, 1.00] (n=4; fold SD 0.35)"
    assert cell(rows, "Y-Net", "scratch: paper", "cls acc") == "0.43"
    # the rows and columns that ran; a failure shows its status, never a number
    assert rows[0] == ["framework", "metric", "scratch: ours", "scratch: paper", "LiTS: ours", "LiTS: paper"]
    assert [r[0] for r in rows[1:]] == ["segmentation baseline"] * 2 + ["Y-Net"] * 3 + ["joint"] * 3
    assert cell(rows, "segmentation baseline", "scratch: ours", "seg recall") == "failed: RuntimeError: boom | see log"
    assert cell(rows, "segmentation baseline", "LiTS: ours", "seg recall") == "–"  # not in the experiment list
    assert cell(rows, "joint", "scratch: paper", "cls acc") == "0.63"
    assert not any(c.startswith("not run") for r in rows for c in r)


def test_embc_and_baseline_tables(built):
    md = (built["out"] / "report.md").read_text(encoding="utf-8")
    embc = md_table(md, "Fine-tuning (EMBC)")
    row = "no freezing [joint, LiTS, NoFreeze]"
    assert cell(embc, row, "Dice1 (seg Dice): ours") == "0.92 [0.67, 1.00] (n=4; fold SD 0.12)"
    assert cell(embc, row, "Dice1 (seg Dice): paper") == "0.57"
    # Dice2 pooled over all four slices: tp 6 + 4 + 4 + 2, fn 2 -> 32/34 = 0.94; per fold 1 and 12/14
    assert cell(embc, row, "Dice2 (global): ours") == "0.94 (n=4; fold SD 0.10)"
    assert f"{32 / 34:.2f}" == "0.94" and f"{(1 - 12 / 14) / 2**0.5:.2f}" == "0.10"
    assert [r[0] for r in embc[1:]] == [row]  # only the strategy that ran

    base = md_table(md, "Plain nnU-Net baselines")
    assert cell(base, "plain nnU-Net (nnUNetTrainer)", "Dice1 (seg Dice)") == "1.00 [1.00, 1.00] (n=4; fold SD 0.00)"
    assert cell(base, "plain nnU-Net (nnUNetTrainer)", "cls acc") == "1.00 [1.00, 1.00] (n=4; fold SD 0.00)"
    assert cell(base, "plain nnU-Net (nnUNetTrainer)", "Dice2 (global)") == "1.00 (n=4; fold SD 0.00)"
    assert cell(base, "plain nnU-Net (nnUNetTrainer)", "dataset") == JOINT_DS
    assert cell(base, "ours for comparison: segmentation baseline (scratch)", "seg recall") == (
        "failed: RuntimeError: boom | see log")
    assert len(base) == 3


def test_intervals_table_says_what_was_resampled(built):
    md = (built["out"] / "report.md").read_text(encoding="utf-8")
    rows = md_table(md, "Bootstrap intervals")
    assert rows[1:] == [
        ["joint (LiTS)", JOINT_DS, "0.75 [0.50, 1.00]", f"{(3 + 2 / 3) / 4:.2f} [0.67, 1.00]", "4", "3 patients"],
        ["Y-Net (LiTS)", SEG_DS, "0.75 [0.50, 1.00]", "0.75 [0.00, 1.00]", "4", "3 patients"],
        ["nnU-Net (ShebaJoint)", JOINT_DS, "1.00 [1.00, 1.00]", "1.00 [1.00, 1.00]", "4",
         "4 slices (dataset.json lists no patients)"],
    ]
    notes = built["result"]["notes"]
    assert notes == ["nnU-Net (ShebaJoint): dataset.json lists no patients, so its intervals resample slices, "
                     "not patients"]


def test_paired_tests_at_the_patient_level(built):
    md = (built["out"] / "report.md").read_text(encoding="utf-8")
    rows = md_table(md, "Paired tests")
    # typing: P1 joint (1, 0) vs Y-Net (0, 1), P2 and P3 both right: every patient's difference 0, p = 1;
    # with 3 patients no sign pattern reaches p < 0.05 (2/8), so nothing is detectable
    # every patient ties, so no sign pattern moves the statistic: p = 1 and nothing is detectable
    too_few = ("not detected; only 0 of 3 patients differ (the others tie), so the smallest possible p is 1, not "
               "below Holm's first step 0.05/2 = 0.025: no difference is detectable with so few")
    assert rows[0][10] == "smallest detectable (α 0.05/2 = 0.025, power 0.8)"
    assert rows[1] == ["joint (LiTS) vs Y-Net (LiTS)", "type accuracy", "3", "4", "0.75", "0.75",
                       "+0.00 [+0.00, +0.00]", "1.000", "exact (every patient's difference is 0)", "1.000", "none",
                       too_few, "McNemar (exact) p = 1.000", "+0.07"]
    # Dice per slice: A, B 1 vs 1 (P1), C 1 vs 0 (P2, Y-Net missed it), D 2/3 vs 1 (P3): mean difference
    # (1 - 1/3) / 4 = 1/6; the patients' sums 0, +1, -1/3 under the 8 sign patterns give |total| 2/3 or
    # 4/3, never below the observed 2/3, so p = 1; a bootstrap resample of P3 (P2) alone has probability
    # 1/27 > 2.5 %: interval [-1/3, 1]. P1 ties (0), so the smallest p of the two others is 2 / 2**2
    too_few = ("not detected; only 2 of 3 patients differ (the others tie), so the smallest possible p is 0.5, not "
               "below Holm's first step 0.05/2 = 0.025: no difference is detectable with so few")
    assert rows[2] == ["joint (LiTS) vs Y-Net (LiTS)", "Dice1", "3", "4", f"{(3 + 2 / 3) / 4:.2f}", "0.75",
                       f"+{1 / 6:.2f} [-0.33, +1.00]", "1.000", "exact (all 4 sign patterns; 1 tied patient left out)",
                       "1.000", "none", too_few, "Wilcoxon signed-rank p = 1.000", "+0.00"]
    assert len(rows) == 3  # no other pair has both rows finished
    saved = json.loads((built["out"] / "summary.json").read_text(encoding="utf-8"))
    tested = [t for t in saved["paired_tests"] if t["patient_test"] is not None]
    assert [(t["metric"], t["per_slice_test"]["detail"], t["p_holm"], t["detected"]) for t in tested] == [
        ("cls_acc", {"only_a": 1, "only_b": 1}, 1.0, False), ("dice", {"differing": 2}, 1.0, False)]
    assert tested[1]["patient_test"]["effect"] == pytest.approx(1 / 6)
    # beside each detectable difference, the level it was computed at: Holm's first step for the 2 tests
    assert [(t["patient_test"]["detectable"], t["patient_test"]["detectable_alpha"]) for t in tested] == [
        (None, 0.025), (None, 0.025)]
    assert tested[1]["patient_test"]["tied"] == 1 and tested[1]["patient_test"]["smallest_p"] == 0.5
    assert saved["statistics"]["bootstrap_resamples"] == 10_000 and saved["statistics"]["bootstrap_seed"] == 0
    assert "Holm" in saved["statistics"]["multiple_comparisons"]


def test_findings_lead_the_report(built):
    md = (built["out"] / "report.md").read_text(encoding="utf-8")
    findings = md.split("## What this run compared and found\n", 1)[1].split("\n## ", 1)[0]
    assert md.index("## What this run compared and found") < md.index("### Table 1 (MIDL)")
    assert ("- joint vs Y-Net, Dice1: joint (LiTS) 0.92 vs Y-Net (LiTS) 0.75; difference +0.17 [-0.33, +1.00], "
            "p = 1.000 (Holm-corrected over 2 tests; 3 patients): not detected; only 2 of 3 patients differ (the "
            "others tie), so the smallest possible p is 0.5, not below Holm's first step 0.05/2 = 0.025: no "
            "difference is detectable with so few; paper (MIDL): +0.00.") in findings
    assert "joint vs Y-Net, type accuracy: joint (LiTS) 0.75 vs Y-Net (LiTS) 0.75" in findings
    # the failed row is named with its failure; rows not run are named once, not tested
    assert ("Not tested: segmentation baseline (LiTS) vs segmentation baseline (scratch) "
            "(segmentation baseline (scratch) failed: RuntimeError: boom | see log); segmentation baseline (scratch) "
            "vs nnU-Net (ShebaSeg) (segmentation baseline (scratch) failed: RuntimeError: boom | see log).") in findings
    assert "Not addressed (a row this run did not train): joint (scratch) vs Y-Net (scratch); " in findings
    results = md.split("## Results", 1)[1].split("\n## ", 1)[0]
    assert ("The papers' rows this run did not train: joint (ImageNet) (not run: no ImageNet weights given; run "
            "when --imagenet-weights is given).") in results


def test_budgets_come_from_what_the_folds_recorded(built):
    md = (built["out"] / "report.md").read_text(encoding="utf-8")
    budgets = md_table(md, "Budgets per experiment")
    joint = ("joint (LiTS)", "epochs x iterations")
    assert cell(budgets, *joint) == "3 x 4"  # joint_config.json, not the requested 2 x 5
    assert cell(budgets, "joint (LiTS)", "budget from") == "joint_config.json"
    assert cell(budgets, "joint (LiTS)", "network") == "seresnet18, patch 32 x 32"
    assert cell(budgets, "joint (LiTS)", "iterations trained (curve)") == "12"
    assert cell(budgets, "Y-Net (LiTS)", "epochs x iterations") == "3 x 4 (fold 0); 2 x 5 (fold 1)"
    assert cell(budgets, "Y-Net (LiTS)", "budget from") == (
        "joint_config.json (fold 0); requested (no joint_config.json) (fold 1)")
    assert cell(budgets, "Y-Net (LiTS)", "iterations trained (curve)") == "12 (fold 0); no curve (fold 1)"
    assert cell(budgets, "nnU-Net (ShebaJoint)", "epochs x iterations") == "2 x 5"
    assert cell(budgets, "nnU-Net (ShebaJoint)", "budget from") == "requested (no joint_config.json)"
    assert cell(budgets, "nnU-Net (ShebaJoint)", "network") == "PlainConvUNet, patch 8 x 8 (plans.json)"
    assert cell(budgets, "joint (LiTS)", "slices") == "4"
    assert cell(budgets, "segmentation baseline (scratch)", "budget from") == "requested (not trained)"
    assert "joint (ImageNet)" not in [r[0] for r in budgets]  # only what trained (or tried to)


def test_requested_budget_of_rows_that_did_not_train(tmp_path):
    entry = experiment("nnU-Net", "nnunet", "-", "NoFreeze", "nnUNetTrainer_JointBudget", SEG_DS, tmp_path,
                       status="not run: not in the demo profile")
    entry["budget"] = {"epochs": "nnU-Net default", "iterations": "nnU-Net default", "encoder": "seresnet50"}
    used = training_used(Experiment.from_dict(entry))
    assert (used.budget, used.source, used.trained) == ("nnU-Net default", "requested", "–")
    assert used.network == "nnU-Net's planned U-Net (no plans.json found)"  # never our encoder setting
    entry.update(framework="joint", budget={"epochs": 30, "iterations": 20, "encoder": "seresnet18"})
    used = training_used(Experiment.from_dict(entry))
    assert (used.budget, used.network) == ("30 x 20", "seresnet18 (requested)")


def test_the_budget_table_names_each_rows_learning_rate_and_the_heads_share(tmp_path):
    """The learning rate the folds recorded; a head row recorded before the head had its own rate trained it at
    the recipe's (1x), and the report says so rather than passing it off as this build's row."""
    def head_row(fold_records):
        entry = experiment("Y-Net", "ynet", "LiTS", "NoFreeze", "nnUNetTrainerYNet_LiTS", SEG_DS, tmp_path)
        e = Experiment.from_dict(entry)
        return dataclasses.replace(e, records=[FoldRecord(f, c, None) for f, c in fold_records])

    recipe = {"recipe": "poly", "peak_lr": 0.01, "warmup_fraction": 0.0, "warmup_epochs": 0}
    this_build = {"learning_rate": {**recipe, "head_lr_scale": 0.1}}
    earlier = {"learning_rate": dict(recipe)}
    assert training_used(head_row([(0, this_build), (1, this_build)])).learning_rate == "poly 0.01; head 0.1x"
    assert training_used(head_row([(0, None)])).learning_rate == "not recorded"  # our trainer, its record lost
    assert training_used(head_row([(0, this_build), (1, earlier)])).learning_rate == (
        "poly 0.01; head 0.1x (fold 0); poly 0.01; head 1x (an earlier build: no own head rate) (fold 1)")
    warm = {"learning_rate": {**recipe, "recipe": "warmup-poly", "peak_lr": 0.001, "warmup_fraction": 0.1}}
    joint = dataclasses.replace(Experiment.from_dict(
        experiment("joint", "joint", "LiTS", "NoFreeze", "nnUNetTrainerJoint_LiTS", JOINT_DS, tmp_path)),
        records=[FoldRecord(0, warm, None)])
    assert training_used(joint).learning_rate == "warmup-poly 0.001, warm-up 0.1"  # no head, no head share
    plain = dataclasses.replace(Experiment.from_dict(
        experiment("nnU-Net", "nnunet", "-", "NoFreeze", "nnUNetTrainer", JOINT_DS, tmp_path)),
        records=[FoldRecord(0, None, None)])
    assert training_used(plain).learning_rate == "nnU-Net's"


def test_learning_curve_panels(built):
    parsed = [Experiment.from_dict(e) for e in built["experiments"]]
    panels = {p.title: p for p in curve_panels(parsed)}
    assert list(panels) == ["joint (LiTS)", "Y-Net (LiTS)", "nnU-Net (ShebaJoint)"]  # finished rows only
    joint = panels["joint (LiTS)"]
    assert [s.fold for s in joint.series] == [0, 1]
    assert list(joint.series[1].iterations) == [4, 8, 12]
    assert list(joint.series[1].lesion_dice) == [0.1, 0.3, pytest.approx(0.6)]
    assert list(joint.series[0].type_accuracy) == [0.3, 0.5, 0.6]
    assert [s.fold for s in panels["Y-Net (LiTS)"].series] == [0]
    nnunet = panels["nnU-Net (ShebaJoint)"]
    assert nnunet.series == [] and "no learning_curve.json in fold 0, 1" in nnunet.message
    md = (built["out"] / "report.md").read_text(encoding="utf-8")
    assert "Without a recorded curve: nnU-Net (ShebaJoint)." in md


def test_learning_curve_files_are_checked(tmp_path):
    write_learning_curve(tmp_path / "fold_0", "joint", 5, [0.2, None], [None, 0.4])
    curve = read_learning_curve(tmp_path / "fold_0" / "learning_curve.json", 0)
    assert (curve.iterations, curve.lesion_dice, curve.type_accuracy) == ((5, 10), (0.2, None), (None, 0.4))
    assert curve.final_iterations == 10
    bad = tmp_path / "fold_1" / "learning_curve.json"
    bad.parent.mkdir()
    bad.write_text(json.dumps({"framework": "joint", "epochs": [{"epoch": 0, "iterations": 1.5}]}))
    with pytest.raises(RecordError, match="epoch entry 0 has no integer 'iterations'"):
        read_learning_curve(bad, 1)
    bad.write_text('{"framework": "joint", "epochs": [')  # a half-written file
    with pytest.raises(RecordError, match="not readable JSON"):
        read_learning_curve(bad, 1)
    bad.write_text(json.dumps({"framework": "unet", "epochs": []}))
    with pytest.raises(RecordError, match="unknown framework 'unet'"):
        read_learning_curve(bad, 1)
    bad.write_text(json.dumps({"framework": "seg", "epochs": [{"epoch": 0, "iterations": 2, "lesion_dice": "high"}]}))
    notes: list[str] = []
    record = read_fold_record(tmp_path, 1, notes)  # a broken file is a note, not a crash
    assert record.curve is None and record.config is None
    assert notes == [f"{bad}: epoch 0 lesion_dice must be a number or null, got 'high'"]


def test_provenance_section(built):
    md = (built["out"] / "report.md").read_text(encoding="utf-8")
    how = md.split("## How these numbers were made", 1)[1]
    assert "nnUNetv2_train 504 2d 0 -tr nnUNetTrainerJoint_LiTS" in how and "nnunet_joint_x y" in how
    assert "| nnunetv2 | 2.8.1 |" in how and '"difficulty": 0.5' in how
    assert "3725 s (1:02:05)" in how and "not comparable to the papers' numbers" in how
    assert "Dice2 (global): Dice of the lesion TP/FP/FN summed over all validation slices of all folds" in how
    assert "Bootstrap interval: 10,000 resamples (numpy default_rng, seed 0)" in how


def test_summary_json_and_csv_equal_inputs(built):
    out, summaries = built["out"], built["summaries"]
    saved = json.loads((out / "summary.json").read_text(encoding="utf-8"))
    records = {r["key"]: r for r in saved["experiments"]}
    joint = records[f"{JOINT_DS}/nnUNetTrainerJoint_LiTS"]
    assert joint["aggregate"] == summaries["joint"]["aggregate"]
    assert joint["per_fold"] == summaries["joint"]["per_fold"]
    assert joint["budget"] == {"epochs": 2, "iterations": 5, "encoder": "seresnet18"}
    assert joint["training"]["used"]["budget"] == "3 x 4"
    assert joint["training"]["folds"][1] == {"fold": 1, "joint_config": True, "epochs_iterations": [3, 4],
                                             "learning_curve_epochs": 3, "learning_curve_iterations": 12}
    assert (joint["intervals"]["cls_acc"]["low"], joint["intervals"]["cls_acc"]["high"]) == (0.5, 1.0)
    assert joint["intervals"]["cls_acc"]["n_patients"] == 3
    assert joint["paper"] == {"MIDL": {"cls_acc": 0.86, "dice": 0.71, "recall": 0.76},
                              "EMBC": published.EMBC_TABLE["NoFreeze"]}
    not_run = records[f"{JOINT_DS}/nnUNetTrainerJoint_ImageNet"]
    assert not_run["status"] == NO_IMAGENET and not_run["aggregate"] is None and not_run["intervals"] is None
    assert saved["published"] == json.loads(json.dumps(published.as_dict()))
    assert saved["published"]["midl_table1"]["seg"]["ImageNet"] == {"dice": 0.63, "recall": 0.67}
    assert saved["meta"]["raw_root"].endswith("nnUNet_raw")
    # the full tables stay in summary.json: every row, a row that did not run with its status
    midl = saved["tables"]["midl"]
    assert midl["header"][2:4] == ["scratch: ours", "scratch: paper"] and len(midl["header"]) == 8
    joint_cls = next(r for r in midl["rows"] if r[:2] == ["joint", "cls acc"])
    assert joint_cls[2] == "not run: not in the experiment list" and joint_cls[4] == NO_IMAGENET
    assert [r[0] for r in saved["tables"]["embc"]["rows"]][0] == "baseline (scratch) [joint, scratch, NoFreeze]"
    assert NO_IMAGENET in [r[10] for r in saved["tables"]["budgets"]["rows"]]

    rows = list(csv.DictReader((out / "summary.csv").open()))
    assert len(rows) == 5 * 10  # 10 metrics: Dice, Dice2, recall, precision, success, accuracy, 3 recalls, liver
    by = {(r["experiment"], r["dataset"], r["metric"]): r for r in rows}
    dice = by[("nnUNetTrainerJoint_LiTS", JOINT_DS, "dice")]
    expected = summaries["joint"]["aggregate"]["metrics"]["dice"]
    assert (float(dice["mean"]), float(dice["std"]), int(dice["n"]), int(dice["n_folds"])) == (
        expected["mean"], expected["std"], 4, 2)
    assert (float(dice["ci_low"]), float(dice["ci_high"]), dice["pooled"]) == (pytest.approx(2 / 3), 1.0, "")
    assert (dice["paper_midl"], dice["paper_embc"]) == ("0.71", "0.57")
    global_dice = by[("nnUNetTrainerJoint_LiTS", JOINT_DS, "global_dice")]
    assert float(global_dice["pooled"]) == pytest.approx(32 / 34) and global_dice["ci_low"] == ""
    imagenet = by[("nnUNetTrainerJoint_ImageNet", JOINT_DS, "cls_acc")]
    assert (imagenet["mean"], imagenet["ci_low"], imagenet["status"], imagenet["paper_midl"]) == (
        "", "", NO_IMAGENET, "0.74")
    assert by[("nnUNetTrainerYNet_LiTS", SEG_DS, "cls_acc")]["mean"] == "0.75"


def test_html_and_figures(built):
    out, result = built["out"], built["result"]
    page = (out / "report.html").read_text(encoding="utf-8")
    for key in ("midl", "embc", "nnunet", "intervals", "paired", "budgets", "versions"):
        assert f'<table class="{key}">' in page
    assert "<td>0.92 [0.67, 1.00] (n=4; fold SD 0.12)</td>" in page
    assert "not run" not in page.split('id="provenance"')[0].split("rows this run did not train")[0]
    assert '<td class="status">failed: RuntimeError: boom | see log</td>' in page
    assert "http://" not in page and "https://" not in page and "<script" not in page  # self-contained
    names = sorted(p.name for p in (out / "figures").iterdir())
    assert names == ["bars_framework_init.png", "confusion_matrices.png", "learning_curves.png", "overlay_grid.png",
                     "per_class_recall.png"]
    assert page.count("data:image/png;base64,") == 5
    md = (out / "report.md").read_text(encoding="utf-8")
    # the two renderings walk one document: the same headings in the same order
    md_headings = [line.lstrip("#").strip() for line in md.splitlines() if line.startswith("#")]
    html_headings = [h.split(">", 1)[1].split("</h", 1)[0] for h in page.split("<h")[1:]
                     if h[:1] in "123456" and not h.startswith("ead")]
    assert [h.replace("&#x27;", "'") for h in html_headings] == md_headings
    for path in result["figures"]:
        assert f"]({Path(path).relative_to(out).as_posix()})" in md
        with Image.open(path) as image:
            image.verify()
        with Image.open(path) as image:
            pixels = np.asarray(image.convert("L"))
            assert image.size[0] > 300 and image.size[1] > 200 and pixels.std() > 10
    assert sorted(p.name for p in out.iterdir()) == ["figures", "report.html", "report.md", "summary.csv", "summary.json"]


def test_overlay_cases_and_titles(built):
    summary = built["summaries"]["joint"]
    experiments = built["experiments"]
    joint, ynet = Experiment.from_dict(experiments[0]), Experiment.from_dict(experiments[2])
    # cysts A (Dice 1) and D (2/3): median 5/6 is equally near both -> lower id A
    assert [c["case_id"] for c in choose_overlay_cases(joint)] == ["A", "C", "B"]
    notes: list[str] = []
    rows = overlay_rows(joint, ynet, built["out"].parent / "nnUNet_raw", JOINT_DS, notes)
    assert notes == [] and [r.case_id for r in rows] == ["A", "C", "B"]
    a = rows[0]
    assert a.titles == ("input: A (fold 0)", "ground truth: cyst", "joint (LiTS): cyst, Dice 1.00",
                        "Y-Net (LiTS): hemangioma (p=0.70), Dice 1.00")
    assert np.array_equal(a.ground_truth, REFERENCE["A"]) and a.ct.shape == (6, 6)
    assert len(a.predictions) == 2 and np.array_equal(a.predictions[0], REFERENCE["A"])
    assert set(np.unique(a.predictions[1]).tolist()) == {0, 1, 3}  # Y-Net lesion coloured by its head's type
    without_ynet = overlay_rows(joint, None, built["out"].parent / "nnUNet_raw", JOINT_DS, notes)
    assert [len(r.predictions) for r in without_ynet] == [1, 1, 1]  # no Y-Net column when no Y-Net ran
    assert without_ynet[0].titles == a.titles[:3]
    assert rows[1].titles[3] == "Y-Net (LiTS): hemangioma (p=0.60), Dice 0.00"
    assert rows[2].titles[2] == "joint (LiTS): hemangioma, Dice 1.00"
    assert summary["cases"]  # the evaluator's per-case list is what the grid is chosen from


# The papers' tables, copied verbatim: the published numbers are typed twice, so a typo in one copy fails.
PAPER_MIDL = """
| classification baseline | scratch / ImageNet / LiTS | 0.55 / 0.63 / 0.76 | – | – |
| segmentation baseline | scratch / ImageNet / LiTS | – | 0.59 / 0.63 / 0.71 | 0.59 / 0.67 / 0.72 |
| Y-Net | scratch / ImageNet / LiTS | 0.43 / 0.68 / 0.79 | 0.49 / 0.67 / 0.71 | 0.43 / 0.65 / 0.68 |
| joint | scratch / ImageNet / LiTS | 0.63 / 0.74 / 0.86 | 0.57 / 0.64 / 0.71 | 0.60 / 0.70 / 0.76 |
"""
PAPER_EMBC = """baseline 0.49 / 0.44 / 0.89 / 0.56; no freezing
0.57 / 0.55 / 0.94 / 0.64; hierarchical freezing 0.65 / 0.60 / 0.93 / 0.68; freeze encoder
0.57 / 0.54 / 0.94 / 0.63; hierarchical unfreezing 0.64 / 0.60 / 0.94 / 0.73"""


def test_published_numbers_match_the_papers_tables():
    names = {v: k for k, v in published.FRAMEWORKS.items()}
    midl: dict = {}
    for line in PAPER_MIDL.strip().splitlines():
        framework, _, *columns = [c.strip() for c in line.strip("|").split("|")]
        for metric, column in zip(published.MIDL_METRICS, columns):
            if column != "–":
                for init, value in zip(published.INITS, column.split(" / ")):
                    midl.setdefault(names[framework], {}).setdefault(init, {})[metric] = float(value)
    assert midl == published.MIDL_TABLE1
    text = " ".join(PAPER_EMBC.split())
    embc = {}
    for key, (row, _, _) in published.EMBC_STRATEGIES.items():
        name = row.split(" (")[0]
        numbers = re.search(rf"{name} ([0-9. /]+)", text).group(1).strip(" ;").split(" / ")
        embc[key] = dict(zip(published.EMBC_METRICS, map(float, numbers)))
    assert embc == published.EMBC_TABLE


def test_bad_experiment_lists_are_refused(tmp_path, built):
    entry = dict(built["experiments"][1])
    with pytest.raises(ValueError, match="listed twice"):
        build_report([entry, entry], tmp_path / "r", {})
    del entry["status"]
    with pytest.raises(ValueError, match="lacks status"):
        build_report([entry], tmp_path / "r", {})
    assert not (tmp_path / "r").exists()  # refused before anything was written


def test_done_without_summary_is_shown_as_failed(tmp_path, built):
    entry = dict(built["experiments"][1], status="done", summary=None)
    result = build_report([entry], tmp_path / "r", {"profile": "demo"})
    rows = md_table(result["report_md"].read_text(encoding="utf-8"), "Table 1 (MIDL)")
    assert cell(rows, "joint", "ImageNet: ours", "cls acc") == "failed: finished but has no evaluation summary"
    assert "overlay grid: no joint experiment finished, so there is none" in result["notes"]


def test_our_rows_are_compared_with_plain_nnunet_on_the_same_labels(tmp_path, built):
    # a joint-from-scratch row (the LiTS row's folder under another trainer name) beside plain nnU-Net on
    # the joint dataset: per slice joint (1, 0, 1, 1) vs nnU-Net (1, 1, 1, 1) in type, Dice (1, 1, 1, 2/3)
    # vs 1; only P1 (type) and P3 (Dice) differ, so every sign pattern is as extreme: p = 1
    joint = built["experiments"][0]
    scratch = dict(joint, init="scratch", trainer="nnUNetTrainerJoint")
    result = build_report([*built["experiments"], scratch], tmp_path / "r", {"profile": "demo"})
    md = result["report_md"].read_text(encoding="utf-8")
    rows = md_table(md, "Paired tests")
    title = "joint (scratch) vs nnU-Net (ShebaJoint)"  # the plain row on the same (joint) labels
    assert cell(rows, title, "A − B [95 % interval]", "type accuracy").startswith("-0.25 [")
    assert cell(rows, title, "A − B [95 % interval]", "Dice1").startswith(f"{-1 / 12:+.2f} [")
    assert cell(rows, title, "p (patients)", "Dice1") == "1.000"
    assert cell(rows, title, "paper A − B", "Dice1") == "–"  # the papers did not ask
    assert "SE-ResNet vs plain nnU-Net, type accuracy: joint (scratch) 0.75 vs nnU-Net (ShebaJoint) 1.00" in md
    assert "which the papers did not test" in md
    assert "Holm-corrected over 6 tests" in md  # joint vs Y-Net, LiTS vs scratch, joint vs nnU-Net: 2 metrics each


def test_plain_nnunet_from_lits_is_compared_with_plain_nnunet_from_scratch_on_the_joint_labels(tmp_path):
    """The transfer question asked of nnU-Net's own U-Net: the pair is the two plain rows on Dataset504
    (not the plain row on Dataset503), and the two rows read differently in the tables."""
    from nnunet_joint.evaluation.report.evidence import comparisons
    from nnunet_joint.evaluation.report.experiments import Experiment

    def plain(init: str, folder: str) -> Experiment:
        trainer = "nnUNetTrainer_JointBudget" + ("_LiTS" if init == "LiTS" else "")
        return Experiment("plain nnU-Net", "nnunet", init, "NoFreeze", trainer, folder, tmp_path / trainer, "done")

    rows = [plain("scratch", "Dataset503_ShebaSeg"), plain("scratch", "Dataset504_ShebaJoint"),
            plain("LiTS", "Dataset504_ShebaJoint")]
    pairs = [c for c in comparisons(rows) if c.a.framework == c.b.framework == "nnunet"]
    assert len(pairs) == 1
    assert pairs[0].a.experiment is rows[2] and pairs[0].b.experiment is rows[1]
    assert {r.label for r in rows} == {"nnU-Net (ShebaSeg)", "nnU-Net (ShebaJoint)", "nnU-Net (ShebaJoint, LiTS)"}


def test_without_patients_a_test_gives_no_verdict():
    """Slices as units (dataset.json names no patients): the p-value is shown, but never "detected" or "replicates"."""
    from nnunet_joint.evaluation.report.evidence import ComparisonResult, comparisons
    from nnunet_joint.evaluation.report.tables import finding_sentence, verdict
    from nnunet_joint.evaluation.statistics import patient_paired_test

    # 40 slices, A right on 36, B on 4, each slice its own unit: p far below any level
    a, b = [1.0] * 36 + [0.0] * 4, [0.0] * 36 + [1.0] * 4
    test = patient_paired_test(a, b, [f"s{k}" for k in range(40)], family=1)
    pair = next(c for c in comparisons([]) if c.question == "LiTS vs scratch")
    slices = ComparisonResult(pair, "cls_acc", test, None, "", 0.23, p_holm=test.p_value, units="slices")
    assert test.p_value < 0.001 and not slices.detected
    assert verdict(slices).startswith("no verdict: patients missing (dataset.json names none, so each slice counted "
                                      "as a patient")
    assert "replicates" not in finding_sentence(slices, 1) and "detected" not in finding_sentence(slices, 1)
    assert slices.to_dict()["detected"] is None
    patients = dataclasses.replace(slices, units="patients")
    assert patients.detected and verdict(patients).startswith("detected: ")
    assert "the claim replicates in this run" in finding_sentence(patients, 1)


def test_report_shows_what_each_row_predicts(built):
    """The predictions table counts each row's own slices (recounted here from the evaluated cases)."""
    from nnunet_joint import LESION_TYPES

    out, summaries = built["out"], built["summaries"]
    report = (out / "report.md").read_text(encoding="utf-8")
    section = report[report.index("### What each row predicts"):]
    rows = [line for line in section.splitlines() if line.startswith("| ")][1:]  # the header left out
    for key, label in (("joint", "joint (LiTS)"), ("nnunet", "nnU-Net")):
        cases = [c for c in summaries[key]["cases"] if c["true_type"] is not None and c["pred_type"] is not None]
        true = [sum(c["true_type"] == k for c in cases) for k in range(len(LESION_TYPES))]
        called = [sum(c["pred_type"] == k for c in cases) for k in range(len(LESION_TYPES))]
        line = next(r for r in rows if r.startswith(f"| {label}"))
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[2] == " / ".join(map(str, true)) and cells[3].startswith(" / ".join(map(str, called)))
