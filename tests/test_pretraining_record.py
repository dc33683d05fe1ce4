"""The report's pretraining section: source size against the target, CT window, the LiTS model's curve."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_joint.evaluation.pretraining import (ct_window, curve_flattened, lesion_cases, pretraining_record,
                                                 training_cases_per_fold, validation_dice)
from nnunet_joint.evaluation.report import build_report
from nnunet_joint.planning import set_ct_window


def write_label(path: Path, values: np.ndarray) -> None:
    sitk.WriteImage(sitk.GetImageFromArray(values.astype(np.uint8)), str(path))


@pytest.fixture()
def source(tmp_path: Path) -> Path:
    """Five liver slices, lesion label 2 on slices 0, 2 and 3 (one of them a single pixel)."""
    raw = tmp_path / "Dataset502_LiTSLesion"
    (raw / "labelsTr").mkdir(parents=True)
    (raw / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "liver": 1, "lesion": 2},
                                                  "file_ending": ".nii.gz"}))
    for i in range(5):
        label = np.zeros((1, 8, 8))
        label[0, 2:6, 2:6] = 1
        if i in (0, 2):
            label[0, 3:5, 3:5] = 2
        if i == 3:
            label[0, 7, 7] = 2
        write_label(raw / "labelsTr" / f"lits_{i:03d}.nii.gz", label)
    return raw


def test_lesion_slices_are_counted_from_the_label_files(source):
    assert lesion_cases(source) == {"cases": 5, "with_lesion": 3}


def test_training_slices_per_fold(tmp_path):
    splits = tmp_path / "splits_final.json"
    splits.write_text(json.dumps([{"train": ["a", "b", "c"], "val": ["d"]}, {"train": ["a", "d"], "val": ["b", "c"]}]))
    assert training_cases_per_fold(splits, [0, 1, 2]) == {0: 3, 1: 2}


def test_ct_window_is_read_from_the_plans(tmp_path):
    plans = tmp_path / "plans.json"
    plans.write_text(json.dumps({"configurations": {"2d": {"normalization_schemes": ["CTNormalization"]}},
                                 "foreground_intensity_properties_per_channel": {"0": {}}}))
    set_ct_window(plans, (-100.0, 200.0))
    assert ct_window(plans) == (-100.0, 200.0)
    plans.write_text(json.dumps({"configurations": {"2d": {"normalization_schemes": ["ZScoreNormalization"]}},
                                 "foreground_intensity_properties_per_channel": {"0": {}}}))
    assert ct_window(plans) is None


def test_flattened_curve_verdict():
    # last quarter (0.70, 0.80) against the one before (0.50, 0.60): a gain of 0.20, still rising
    assert curve_flattened([0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8]) is False
    # gain 0.01 (0.615 vs 0.605), below 0.02: flattened; the None epoch is skipped
    assert curve_flattened([0.1, 0.3, 0.5, None, 0.58, 0.60, 0.61, 0.61, 0.62]) is True
    assert curve_flattened([0.1, 0.2, 0.3]) is None


def test_record_and_report_section(tmp_path, source):
    target = tmp_path / "Dataset504_ShebaJoint"
    target.mkdir()
    (target / "splits_final.json").write_text(json.dumps([{"train": ["x"] * 2, "val": ["y"]}]))
    plans = target / "nnUNetSEResNet18Plans.json"
    plans.write_text(json.dumps({"configurations": {"2d": {"normalization_schemes": ["CTNormalization"]}},
                                 "foreground_intensity_properties_per_channel": {"0": {}}}))
    set_ct_window(plans, (-160.0, 240.0))
    fold = tmp_path / "lits" / "fold_0"
    (fold / "validation").mkdir(parents=True)
    (fold / "validation" / "summary.json").write_text(json.dumps({"mean": {"1": {"Dice": 0.9}, "2": {"Dice": 0.61}}}))
    dice = [0.1, 0.3, 0.5, 0.55, 0.6, 0.6, 0.61, 0.61]
    (fold / "learning_curve.json").write_text(json.dumps({"framework": "seg", "epochs": [
        {"epoch": e, "iterations": 10 * (e + 1), "lesion_dice": d, "type_accuracy": None} for e, d in enumerate(dice)]}))
    assert validation_dice(fold, 2) == 0.61

    record = pretraining_record(source, target / "splits_final.json", [0], plans, [("SE-ResNet LiTS", fold)], 2)
    assert record["ratio"] == pytest.approx(3 / 2)
    assert record["ct_window"] == [-160.0, 240.0]
    assert record["models"][0]["flattened"] is True  # 0.61 vs 0.60: gain 0.01
    assert record["models"][0]["validation_lesion_dice"] == 0.61

    result = build_report([], tmp_path / "report", {"profile": "demo", "pretraining": record})
    text = result["report_md"].read_text(encoding="utf-8")
    section = text[text.index("The pretraining source"):]
    assert "5 liver slices, 3 with lesion" in section
    assert "2 (fold 0)" in section
    assert "1.5x (below 10x" in section
    assert "-160 to 240 HU" in section
    assert "validation lesion Dice 0.610; its curve had flattened" in section
    assert (tmp_path / "report" / "figures" / "pretraining_curves.png").is_file()
