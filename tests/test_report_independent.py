"""Report cells checked against an independent computation from the raw predictions.

A fake run (no training): 24 slices of 12 patients in 3 folds of unequal size (6, 8 and 10
slices, so the mean over all slices differs from the mean of the fold means), ground truth and
two joint models' predicted label maps written as NIfTI files the way nnU-Net writes them. The pipeline evaluates
the folders (``evaluate_trainer_dir``) and writes the report (``build_report``); this test reads
the NIfTI files back and recomputes Dice1, Dice2 and the lesion-type accuracy with numpy alone
(its own Dice, its own majority vote) and the paired tests from its own per-slice values. A bug
in :mod:`evaluation.metrics`, in the fold aggregation or in the report's cells shows up here,
which comparing ``summary.json`` with a fresh run of the same evaluator cannot catch.
"""

from __future__ import annotations

import itertools
import json
import math
import re

import numpy as np
import pytest
from report_helpers import cell, md_table, read_slice, write_joint_dataset, write_slice
from scipy import stats

from nnunet_joint.evaluation.evaluate import evaluate_trainer_dir
from nnunet_joint.evaluation.report import build_report

DATASET = "Dataset504_ShebaJoint"
N_FOLDS, SLICES_PER_PATIENT, SIZE = 3, 2, 16
PATIENTS_PER_FOLD = (3, 4, 5)
#: (trainer, init, probability the majority type is right, probability the lesion is missed, seed)
MODELS = (("nnUNetTrainerJoint_LiTS", "LiTS", 0.85, 0.05, 1), ("nnUNetTrainerJoint", "scratch", 0.4, 0.15, 2))


def make_cases() -> list[dict]:
    """Ground truth: a liver block with one square lesion of a known type; patients never span folds."""
    rng = np.random.default_rng(0)
    cases = []
    for fold in range(N_FOLDS):
        for p in range(PATIENTS_PER_FOLD[fold]):
            for s in range(SLICES_PER_PATIENT):
                index = len(cases)
                size = int(rng.integers(4, 7))
                row, col = (int(v) for v in rng.integers(3, 14 - size, 2))
                label = np.zeros((SIZE, SIZE), np.uint8)
                label[2:14, 2:14] = 1
                true_type = index % 3
                label[row:row + size, col:col + size] = 2 + true_type
                cases.append({"id": f"case{index:02d}", "patient": f"pat{fold}{p}", "fold": fold, "label": label,
                              "type": true_type, "square": (row, col, size)})
    return cases


def predict(cases: list[dict], p_right: float, p_miss: float, seed: int) -> dict[str, np.ndarray]:
    """A model's label maps: the lesion shifted and resized, typed by a clear majority with a minority row.

    The majority type covers (s-1) rows of an s x s square (s >= 3) and another type one row, so
    the vote never ties; a missed lesion leaves no lesion pixel (and no probabilities: no call).
    """
    rng = np.random.default_rng(seed)
    out = {}
    for case in cases:
        label = np.zeros((SIZE, SIZE), np.uint8)
        label[2:14, 2:14] = 1
        if rng.random() >= p_miss:
            row, col, size = case["square"]
            row, col = row + int(rng.integers(-1, 2)), col + int(rng.integers(-1, 2))
            size += int(rng.integers(-1, 2))
            others = [t for t in range(3) if t != case["type"]]
            majority = case["type"] if rng.random() < p_right else int(rng.choice(others))
            minority = int(rng.choice([t for t in range(3) if t != majority]))
            label[row:row + size, col:col + size] = 2 + majority
            label[row, col:col + size] = 2 + minority
        out[case["id"]] = label
    return out


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = tmp_path_factory.mktemp("independent")
    cases = make_cases()
    splits = [{"train": [c["id"] for c in cases if c["fold"] != f], "val": [c["id"] for c in cases if c["fold"] == f]}
              for f in range(N_FOLDS)]
    preprocessed = root / "nnUNet_preprocessed" / DATASET
    dataset_json = write_joint_dataset(preprocessed, cases, splits)
    entries = []
    for trainer, init, p_right, p_miss, seed in MODELS:
        trainer_dir = root / "nnUNet_results" / DATASET / f"{trainer}__nnUNetPlans__2d"
        trainer_dir.mkdir(parents=True)
        (trainer_dir / "dataset.json").write_text(json.dumps(dataset_json))
        for case_id, label in predict(cases, p_right, p_miss, seed).items():
            fold = next(c["fold"] for c in cases if c["id"] == case_id)
            write_slice(trainer_dir / f"fold_{fold}" / "validation" / f"{case_id}.nii.gz", label)
        entries.append({"row": "Joint", "framework": "joint", "init": init, "schedule": "NoFreeze", "trainer": trainer,
                        "dataset": DATASET, "trainer_dir": trainer_dir, "status": "done",
                        "summary": evaluate_trainer_dir(trainer_dir, preprocessed / "gt_segmentations"),
                        "budget": {"epochs": 1, "iterations": 1, "encoder": "seresnet18"}})
    result = build_report(entries, root / "report", {"profile": "test"})
    return {"root": root, "cases": cases, "markdown": result["report_md"].read_text(encoding="utf-8")}


def recompute(run: dict, trainer: str) -> dict:
    """Dice1, Dice2 and accuracy of one model from its NIfTI files, numpy only."""
    folder = run["root"] / "nnUNet_results" / DATASET / f"{trainer}__nnUNetPlans__2d"
    gt = run["root"] / "nnUNet_preprocessed" / DATASET / "gt_segmentations"
    dice, right, counts = {}, {}, {}
    for case in run["cases"]:
        truth = read_slice(gt / f"{case['id']}.nii.gz")
        pred = read_slice(folder / f"fold_{case['fold']}" / "validation" / f"{case['id']}.nii.gz")
        p, g = pred >= 2, truth >= 2
        tp, fp, fn = int((p & g).sum()), int((p & ~g).sum()), int((~p & g).sum())
        counts[case["id"]] = np.array([tp, fp, fn])
        dice[case["id"]] = 2 * tp / (2 * tp + fp + fn)  # the truth always has a lesion
        if p.any():
            votes = np.bincount(pred[p].astype(int) - 2, minlength=3)
            assert sorted(votes)[-1] > sorted(votes)[-2]  # the fixture never ties
            right[case["id"]] = int(np.argmax(votes)) == case["type"]
        else:
            right[case["id"]] = False  # no lesion pixel, no probabilities: no call, wrong
    folds = [[c["id"] for c in run["cases"] if c["fold"] == f] for f in range(N_FOLDS)]

    def over_slices(values: dict, per_fold: list[float]) -> tuple[float, float]:
        """The mean over all slices, and the sample SD (ddof 1) of the fold values."""
        return float(np.mean(list(values.values()))), float(np.std(per_fold, ddof=1))

    def pooled(ids: list[str]) -> float:
        tp, fp, fn = sum(counts[c] for c in ids)
        return 2 * tp / (2 * tp + fp + fn)

    return {"dice": dice, "right": right,
            "dice1": over_slices(dice, [np.mean([dice[c] for c in ids]) for ids in folds]),
            "acc": over_slices(right, [np.mean([right[c] for c in ids]) for ids in folds]),
            "acc_of_folds": float(np.mean([np.mean([right[c] for c in ids]) for ids in folds])),
            "dice2_pooled": pooled(list(counts)), "dice2_fold_sd": float(np.std([pooled(ids) for ids in folds], ddof=1))}


def test_dice1_and_accuracy_cells_match_an_independent_computation(run):
    lits = recompute(run, "nnUNetTrainerJoint_LiTS")
    rows = md_table(run["markdown"], "Table 1 (MIDL)")
    n = len(run["cases"])
    dice_cell = cell(rows, "joint", "LiTS: ours", "Dice1 (seg Dice)")
    acc_cell = cell(rows, "joint", "LiTS: ours", "cls acc")
    # one number: the mean over all slices, then its interval, then the fold SD (ddof 1) labelled as such
    assert re.fullmatch(rf"{lits['dice1'][0]:.2f} \[\d\.\d\d, \d\.\d\d\] \(n={n}; fold SD {lits['dice1'][1]:.2f}\)",
                        dice_cell), dice_cell
    assert re.fullmatch(rf"{lits['acc'][0]:.2f} \[\d\.\d\d, \d\.\d\d\] \(n={n}; fold SD {lits['acc'][1]:.2f}\)",
                        acc_cell), acc_cell
    scratch = recompute(run, "nnUNetTrainerJoint")
    assert cell(rows, "joint", "scratch: ours", "cls acc").startswith(f"{scratch['acc'][0]:.2f} [")
    # the folds are unequal, so the mean of the fold means is another number; the report never shows it
    assert f"{lits['acc_of_folds']:.2f}" != f"{lits['acc'][0]:.2f}"
    # the same row's number wherever the report shows it: intervals table, paired tests, findings
    intervals = md_table(run["markdown"], "Bootstrap intervals")
    assert cell(intervals, "joint (LiTS)", "cls acc (all slices)").startswith(f"{lits['acc'][0]:.2f} [")
    paired = md_table(run["markdown"], "Paired tests")
    assert cell(paired, "joint (LiTS) vs joint (scratch)", "A", "type accuracy") == f"{lits['acc'][0]:.2f}"
    assert cell(paired, "joint (LiTS) vs joint (scratch)", "B", "Dice1") == f"{scratch['dice1'][0]:.2f}"
    assert (f"type accuracy: joint (LiTS) {lits['acc'][0]:.2f} vs joint (scratch) {scratch['acc'][0]:.2f};"
            in run["markdown"])
    # the fixture is not degenerate: the two models differ and neither is perfect
    assert 0.5 < lits["acc"][0] < 1.0 and scratch["acc"][0] < lits["acc"][0] and 0.3 < lits["dice1"][0] < 0.95


def test_dice2_cell_is_pooled_over_all_slices(run):
    lits = recompute(run, "nnUNetTrainerJoint_LiTS")
    rows = md_table(run["markdown"], "Fine-tuning (EMBC)")
    assert cell(rows, "no freezing [joint, LiTS, NoFreeze]", "Dice2 (global): ours") == (
        f"{lits['dice2_pooled']:.2f} (n={len(run['cases'])}; fold SD {lits['dice2_fold_sd']:.2f})")


def sign_flip_p(differences: list[float]) -> float:
    """Two-sided p of the mean of ``differences`` over all 2^n sign patterns, plain Python."""
    observed = abs(sum(differences)) / len(differences)
    patterns = list(itertools.product((1, -1), repeat=len(differences)))
    extreme = sum(abs(sum(s * d for s, d in zip(signs, differences))) / len(differences) >= observed - 1e-12
                  for signs in patterns)
    return extreme / len(patterns)


def test_paired_test_cells_match_an_independent_computation(run):
    lits, scratch = recompute(run, "nnUNetTrainerJoint_LiTS"), recompute(run, "nnUNetTrainerJoint")
    ids = sorted(lits["right"])
    only_lits = sum(lits["right"][c] and not scratch["right"][c] for c in ids)
    only_scratch = sum(scratch["right"][c] and not lits["right"][c] for c in ids)
    discordant = only_lits + only_scratch
    tail = sum(math.comb(discordant, k) for k in range(min(only_lits, only_scratch) + 1)) / 2**discordant
    p_type_slices = min(1.0, 2 * tail)  # exact McNemar: two-sided binomial on the discordant slices
    p_dice_slices = stats.wilcoxon([lits["dice"][c] for c in ids], [scratch["dice"][c] for c in ids]).pvalue
    # patient level: each patient's mean difference over its slices (2 slices each, so equal weights), all
    # 2^12 sign patterns
    patients = sorted({c["patient"] for c in run["cases"]})
    slices_of = {p: [c["id"] for c in run["cases"] if c["patient"] == p] for p in patients}

    def patient_differences(key: str) -> list[float]:
        return [float(np.mean([float(lits[key][c]) - float(scratch[key][c]) for c in slices_of[p]]))
                for p in patients]

    p_type, p_dice = sign_flip_p(patient_differences("right")), sign_flip_p(patient_differences("dice"))
    # Holm over the report's two tests: the smaller p doubled; the larger one, at least that
    low, high = sorted([p_type, p_dice])
    holm = {low: min(1.0, 2 * low), high: max(min(1.0, 2 * low), high)}
    rows = md_table(run["markdown"], "Paired tests")
    title = "joint (LiTS) vs joint (scratch)"

    def text(p: float) -> str:
        return "< 0.001" if p < 0.001 else f"{p:.3f}"

    acc_lits, acc_scratch = np.mean([lits["right"][c] for c in ids]), np.mean([scratch["right"][c] for c in ids])
    assert cell(rows, title, "A", "type accuracy") == f"{acc_lits:.2f}"
    assert cell(rows, title, "B", "type accuracy") == f"{acc_scratch:.2f}"
    assert cell(rows, title, "slices", "type accuracy") == str(len(ids))
    assert cell(rows, title, "patients", "type accuracy") == str(len(patients)) == "12"
    assert cell(rows, title, "A − B [95 % interval]", "type accuracy").startswith(
        f"{np.mean(patient_differences('right')):+.2f} [")
    assert cell(rows, title, "p (patients)", "type accuracy") == text(p_type)
    assert cell(rows, title, "p (Holm)", "type accuracy") == text(holm[p_type])
    assert cell(rows, title, "p (patients)", "Dice1") == text(p_dice)
    assert cell(rows, title, "p (Holm)", "Dice1") == text(holm[p_dice])
    assert cell(rows, title, "per slice (slices not independent)", "type accuracy") == (
        f"McNemar (exact) p = {text(p_type_slices)}")
    assert cell(rows, title, "per slice (slices not independent)", "Dice1") == (
        f"Wilcoxon signed-rank p = {text(p_dice_slices)}")
    expected = "detected: joint (LiTS) higher" if holm[p_type] < 0.05 else "not detected at this sample size"
    assert cell(rows, title, "verdict", "type accuracy").startswith(expected)
    assert cell(rows, title, "paper A − B", "type accuracy") == f"{0.86 - 0.63:+.2f}"  # MIDL Table 1
