"""Fold evaluation on a fake nnU-Net results tree of tiny NIfTI files (nnU-Net 2.8's real layout)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_joint.evaluation.evaluate import evaluate_trainer_dir, main
from nnunet_joint.errors import InputError

JOINT_LABELS = {"background": 0, "liver": 1, "cyst": 2, "hemangioma": 3, "metastasis": 4}
SEG_LABELS = {"background": 0, "liver": 1, "lesion": 2}
DATASET = "Dataset504_ShebaJoint"
TRAINER = "nnUNetTrainerJoint__nnUNetPlans__2d"


def grid(rows: str) -> np.ndarray:
    return np.array([[int(c) for c in row] for row in rows.split()], dtype=np.uint8)


def write_label_map(path: Path, array: np.ndarray, spacing: tuple[float, ...] = (0.8, 0.8, 5.0)) -> None:
    """A 2-D slice stored as nnU-Net stores it: a 1 x H x W NIfTI volume."""
    image = sitk.GetImageFromArray(array[None].astype(np.uint8))
    image.SetSpacing(spacing)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path))


# Joint dataset, two folds of two cases:
#   A (cyst):       3 of 4 lesion px found (2 cyst + 1 hem)  -> dice 6/7, recall 3/4, vote cyst (right)
#   B (metastasis): no lesion predicted, .npz favours hemangioma in the liver -> dice 0, type hem (wrong)
#   C (hemangioma): perfect                                  -> dice 1, hem (right)
#   D (cyst):       no lesion predicted, no .npz             -> dice 0, no call (wrong)
REFERENCE = {
    "A": grid("1111 1221 1221 0000"),
    "B": grid("4411 1111 1111 0000"),
    "C": grid("1111 1331 1111 0000"),
    "D": grid("1111 1121 1111 0000"),
}
PREDICTION = {
    "A": grid("1111 1231 1211 0000"),
    "B": grid("0011 1111 1111 0000"),
    "C": REFERENCE["C"],
    "D": grid("1111 1111 1111 0000"),
}
TYPES = {"A": "cyst", "B": "metastasis", "C": "hemangioma", "D": "cyst"}
SPLITS = [{"train": ["C", "D"], "val": ["A", "B"]}, {"train": ["A", "B"], "val": ["C", "D"]}]


def build_tree(root: Path, labels: dict = JOINT_LABELS, splits: list | None = SPLITS) -> tuple[Path, Path]:
    """``nnUNet_results``/``nnUNet_preprocessed`` with a joint trainer's two finished folds."""
    preprocessed = root / "nnUNet_preprocessed" / DATASET
    trainer_dir = root / "nnUNet_results" / DATASET / TRAINER
    dataset_json = {"labels": labels, "file_ending": ".nii.gz", "channel_names": {"0": "CT"}, "lesion_types": TYPES}
    preprocessed.mkdir(parents=True)
    trainer_dir.mkdir(parents=True)
    for folder in (preprocessed, trainer_dir):
        (folder / "dataset.json").write_text(json.dumps(dataset_json))
    if splits is not None:
        (preprocessed / "splits_final.json").write_text(json.dumps(splits))
    for case, array in REFERENCE.items():
        write_label_map(preprocessed / "gt_segmentations" / f"{case}.nii.gz", array)
    for fold, split in enumerate(SPLITS):
        validation = trainer_dir / f"fold_{fold}" / "validation"
        for case in split["val"]:
            write_label_map(validation / f"{case}.nii.gz", PREDICTION[case])
        (validation / "summary.json").write_text("{}")  # nnU-Net's own summary: must be ignored
    probabilities = np.zeros((5, 1, 4, 4), np.float32)
    probabilities[4, 0, :2, :2] = 0.9  # metastasis outside the predicted liver: ignored
    probabilities[3, 0, :3, 2:] = 0.5  # hemangioma sum 3.0 inside the liver
    probabilities[4, 0, 1:3, :] = 0.3  # metastasis sum 2.4 inside the liver
    np.savez_compressed(trainer_dir / "fold_0" / "validation" / "B.npz", probabilities=probabilities)
    return trainer_dir, preprocessed / "gt_segmentations"


def test_joint_folds_exact(tmp_path, monkeypatch):
    trainer_dir, _ = build_tree(tmp_path)
    monkeypatch.setenv("nnUNet_preprocessed", str(tmp_path / "nnUNet_preprocessed"))
    summary = evaluate_trainer_dir(trainer_dir)  # every default: gt, dataset.json copy, splits, folds
    json.dumps(summary)

    assert summary["folds"] == [0, 1] and summary["fold_kinds"] == {"0": "joint", "1": "joint"}
    cases = {c["case_id"]: c for c in summary["cases"]}
    assert cases["A"]["dice"] == pytest.approx(6 / 7) and cases["A"]["recall"] == pytest.approx(0.75)
    assert [cases[c]["pred_type"] for c in "ABCD"] == [0, 1, 1, -1]
    assert [cases[c]["true_type"] for c in "ABCD"] == [0, 2, 1, 0]
    assert cases["B"]["liver_dice"] == pytest.approx(2 * 10 / (10 + 12))

    fold0, fold1 = (f["metrics"] for f in summary["per_fold"])
    assert fold0["dice"]["value"] == pytest.approx(3 / 7)
    assert fold0["global_dice"]["value"] == pytest.approx(6 / (6 + 3))  # tp 3, fn 1 + 2
    assert fold1["dice"]["value"] == pytest.approx(0.5)
    assert fold0["success_rate"]["value"] == 0.5
    agg = summary["aggregate"]
    assert agg["metrics"]["dice"]["mean"] == pytest.approx((3 / 7 + 0.5) / 2)
    assert agg["metrics"]["dice"]["std"] == pytest.approx((0.5 - 3 / 7) / np.sqrt(2))  # two folds, ddof 1
    assert agg["metrics"]["cls_acc"] == {"mean": 0.5, "std": 0.0, "n": 4, "n_folds": 2}
    assert agg["confusion_matrix"] == [[1, 0, 0], [0, 1, 0], [0, 1, 0]]
    assert agg["no_call"] == [1, 0, 0]


def test_cli_writes_summary_files_and_table(tmp_path, capsys):
    trainer_dir, gt_dir = build_tree(tmp_path)
    out = tmp_path / "out"
    assert main([str(trainer_dir), "--gt", str(gt_dir), "--folds", "1", "-o", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert [c["case_id"] for c in summary["cases"]] == ["C", "D"]
    rows = list(csv.DictReader((out / "summary.csv").open()))
    assert [r["fold"] for r in rows] == ["1", "mean", "std", "n"]
    assert float(rows[1]["dice"]) == pytest.approx(0.5) and rows[2]["dice"] == "" and rows[3]["dice"] == "2"  # 1 fold: no SD
    assert rows[0]["liver_dice"] != "" and rows[0]["recall_metastasis"] == ""  # no metastasis in fold 1
    printed = capsys.readouterr().out
    assert "cls_acc" in printed and "0.500 (1 fold)" in printed
    assert sorted(p.name for p in out.iterdir()) == ["summary.csv", "summary.json"]  # no temporaries left


def test_head_types_come_from_classification_json(tmp_path):
    trainer_dir, gt_dir = build_tree(tmp_path)
    validation = trainer_dir / "fold_1" / "validation"
    (validation / "classification.json").write_text(
        json.dumps({"C": {"probabilities": [0.1, 0.2, 0.7], "predicted": "metastasis"},
                    "D": {"probabilities": [0.6, 0.3, 0.1], "predicted": "cyst"}})
    )
    summary = evaluate_trainer_dir(trainer_dir, gt_dir, folds=[1])
    cases = {c["case_id"]: c for c in summary["cases"]}
    assert (cases["C"]["pred_type"], cases["D"]["pred_type"]) == (2, 0)  # head, not the vote
    assert cases["C"]["type_probs"] == [0.1, 0.2, 0.7]
    assert summary["fold_kinds"] == {"1": "segmentation+head"}
    assert summary["aggregate"]["metrics"]["dice"]["mean"] == pytest.approx(0.5)


def test_classifier_fold_without_segmentations(tmp_path):
    trainer_dir, gt_dir = build_tree(tmp_path)
    validation = trainer_dir / "fold_1" / "validation"
    for case in ("C", "D"):
        (validation / f"{case}.nii.gz").unlink()
    (validation / "classification.json").write_text(
        json.dumps({"C": {"probabilities": [0.2, 0.5, 0.3]}, "D": {"predicted": "hemangioma"}})
    )
    summary = evaluate_trainer_dir(trainer_dir, gt_dir, folds=[1])
    metrics = summary["aggregate"]["metrics"]
    assert summary["fold_kinds"] == {"1": "classification"}
    assert metrics["cls_acc"]["mean"] == 0.5
    assert metrics["dice"]["mean"] is None and metrics["liver_dice"]["n"] == 0


def test_segmentation_dataset_has_no_types_without_lesion_types(tmp_path):
    trainer_dir, gt_dir = build_tree(tmp_path, labels=SEG_LABELS)
    for case, array in REFERENCE.items():  # a seg dataset: every lesion is label 2
        write_label_map(gt_dir / f"{case}.nii.gz", np.minimum(array, 2))
    for fold, split in enumerate(SPLITS):
        for case in split["val"]:
            write_label_map(trainer_dir / f"fold_{fold}" / "validation" / f"{case}.nii.gz", np.minimum(PREDICTION[case], 2))
    data = json.loads((trainer_dir / "dataset.json").read_text())
    del data["lesion_types"]
    (trainer_dir / "dataset.json").write_text(json.dumps(data))
    summary = evaluate_trainer_dir(trainer_dir, gt_dir)
    assert summary["fold_kinds"] == {"0": "segmentation", "1": "segmentation"}
    assert summary["aggregate"]["metrics"]["dice"]["mean"] == pytest.approx((3 / 7 + 0.5) / 2)
    assert summary["aggregate"]["metrics"]["cls_acc"]["mean"] is None


def _error(call) -> str:
    with pytest.raises(InputError) as info:
        call()
    message = str(info.value)
    assert "\n" not in message
    return message


def test_bad_inputs_are_one_line_errors(tmp_path):
    trainer_dir, gt_dir = build_tree(tmp_path)
    assert "results folder not found" in _error(lambda: evaluate_trainer_dir(tmp_path / "nope", gt_dir))
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "no fold_N folder" in _error(lambda: evaluate_trainer_dir(empty, gt_dir))
    assert "fold_3: fold folder not found" in _error(lambda: evaluate_trainer_dir(trainer_dir, gt_dir, folds=[3]))

    (trainer_dir / "fold_1" / "validation" / "D.nii.gz").unlink()
    message = _error(lambda: evaluate_trainer_dir(trainer_dir, gt_dir, folds=[1]))
    assert "D.nii.gz: missing: no prediction for validation case D of fold 1" in message

    write_label_map(trainer_dir / "fold_0" / "validation" / "A.nii.gz", grid("7000 0000 0000 0000"))
    assert "label values [7] are not in dataset.json labels [0, 1, 2, 3, 4]" in _error(
        lambda: evaluate_trainer_dir(trainer_dir, gt_dir, folds=[0])
    )

    write_label_map(trainer_dir / "fold_0" / "validation" / "A.nii.gz", grid("111 122 122"))
    assert "size (3, 3, 1) differs from the ground truth's (4, 4, 1)" in _error(
        lambda: evaluate_trainer_dir(trainer_dir, gt_dir, folds=[0])
    )


def test_missing_validation_folder_and_cli_exit_code(tmp_path, capsys):
    trainer_dir, gt_dir = build_tree(tmp_path)
    for f in (trainer_dir / "fold_0" / "validation").iterdir():
        f.unlink()
    (trainer_dir / "fold_0" / "validation").rmdir()
    with pytest.raises(SystemExit) as exit_info:
        main([str(trainer_dir), "--gt", str(gt_dir)])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "validation: not found" in err and "\n" not in err
    assert not (trainer_dir / "summary.json").exists()


def test_bad_probabilities_shape_and_unknown_type(tmp_path):
    trainer_dir, gt_dir = build_tree(tmp_path)
    np.savez_compressed(trainer_dir / "fold_0" / "validation" / "B.npz", probabilities=np.zeros((5, 1, 3, 3)))
    assert "B.npz: probabilities of shape (5, 1, 3, 3)" in _error(
        lambda: evaluate_trainer_dir(trainer_dir, gt_dir, folds=[0])
    )
    data = json.loads((trainer_dir / "dataset.json").read_text())
    data["lesion_types"]["A"] = "adenoma"
    (trainer_dir / "dataset.json").write_text(json.dumps(data))
    assert "unknown lesion type 'adenoma'" in _error(lambda: evaluate_trainer_dir(trainer_dir, gt_dir))


def test_2d_nifti_with_nnunet_probabilities_layout(tmp_path):
    """nnU-Net writes 2-D inputs back as 2-D images but saves probabilities as C x 1 x H x W."""
    trainer_dir, gt_dir = build_tree(tmp_path)
    for path, array in ((gt_dir / "B.nii.gz", REFERENCE["B"]), (trainer_dir / "fold_0/validation/B.nii.gz", PREDICTION["B"])):
        image = sitk.GetImageFromArray(array)
        image.SetSpacing((0.8, 0.8))
        sitk.WriteImage(image, str(path))
    summary = evaluate_trainer_dir(trainer_dir, gt_dir, folds=[0])
    case_b = next(c for c in summary["cases"] if c["case_id"] == "B")
    assert case_b["pred_type"] == 1 and case_b["liver_dice"] == pytest.approx(20 / 22)


def build_full_slices(root: Path, lost: dict[str, tuple[int, int, int]]) -> Path:
    """The converter's full-slice files for ``build_tree``'s cases: each 4 x 4 crop sits at rows 1..4,
    cols 2..5 of a 6 x 8 slice; ``lost`` adds a reference lesion (row, col, label) outside the crop."""
    raw = root / "nnUNet_raw" / DATASET
    crops = {}
    for case, crop_ref in REFERENCE.items():
        full = np.zeros((6, 8), np.uint8)
        full[1:5, 2:6] = crop_ref
        if case in lost:
            r, c, label = lost[case]
            full[r, c:c + 2] = label
        write_label_map(raw / "labelsFull" / f"{case}.nii.gz", full)
        write_label_map(raw / "roiFull" / f"{case}.nii.gz", (full >= 1).astype(np.uint8))
        crops[case] = {"crop": {"start": [0, 1, 2], "stop": [1, 5, 6], "original_size": [1, 6, 8],
                                "original_spacing": [0.8, 0.8, 5.0], "original_origin": [0.0, 0.0, 0.0],
                                "original_direction": [1, 0, 0, 0, 1, 0, 0, 0, 1]}}
    (raw / "crops.json").write_text(json.dumps({"crop_mode": "cascade", "cases": crops}))
    return raw


def test_full_slice_scoring_counts_a_lesion_the_crop_lost(tmp_path):
    """C is perfect on its crop, but its slice holds a second lesion (2 px) outside the crop: a miss."""
    trainer_dir, gt_dir = build_tree(tmp_path)
    on_crops = evaluate_trainer_dir(trainer_dir, gt_dir=gt_dir, raw_dataset=tmp_path / "nowhere")
    raw = build_full_slices(tmp_path, lost={"C": (5, 0, 3)})
    full = evaluate_trainer_dir(trainer_dir, gt_dir=gt_dir, raw_dataset=raw)
    assert on_crops["scored_on"] != full["scored_on"] == "full slices" and full["crop_mode"] == "cascade"
    crop_c = next(c for c in on_crops["cases"] if c["case_id"] == "C")
    full_c = next(c for c in full["cases"] if c["case_id"] == "C")
    assert crop_c["dice"] == 1.0 and crop_c["recall"] == 1.0
    # by hand on the full slice: tp 2 (the cropped lesion), fn 2 (the lost one), fp 0
    assert (full_c["tp"], full_c["fp"], full_c["fn"]) == (2, 0, 2)
    assert full_c["dice"] == pytest.approx(2 * 2 / (2 * 2 + 0 + 2)) and full_c["recall"] == pytest.approx(0.5)
    assert full_c["pred_type"] == 1  # typing of the cropped lesion is unaffected
    full_a = next(c for c in full["cases"] if c["case_id"] == "A")
    assert full_a["dice"] == pytest.approx(6 / 7)  # nothing lost: the same as on the crop


def test_full_slice_scoring_keeps_stage2_lesions_and_takes_the_liver_from_stage1(tmp_path):
    """Stage 2's lesions stay even outside the stage-1 liver; the liver label is stage 1's region."""
    trainer_dir, gt_dir = build_tree(tmp_path)
    raw = build_full_slices(tmp_path, lost={})
    roi = np.zeros((6, 8), np.uint8)
    roi[1:5, 2:6] = REFERENCE["B"] >= 1
    roi[2, 4] = 0  # a hole in stage 1's liver where B's reference has liver
    roi[0, 0] = 1  # and stage-1 liver outside the crop
    write_label_map(raw / "roiFull" / "B.nii.gz", roi)
    write_label_map(raw / "roiFull" / "A.nii.gz", np.zeros((6, 8), np.uint8))  # stage 1 found no liver for A
    full = evaluate_trainer_dir(trainer_dir, gt_dir=gt_dir, raw_dataset=raw)
    cases = {c["case_id"]: c for c in full["cases"]}
    assert (cases["A"]["tp"], cases["A"]["fp"], cases["A"]["fn"]) == (3, 0, 1)  # A's 3 found lesion px all kept
    # B: reference liver (label >= 1) 12 px in the crop; predicted liver = stage 1's region: 11 of them + (0, 0)
    assert cases["B"]["liver_dice"] == pytest.approx(2 * 11 / (12 + 12))


def test_cascade_labels_by_hand():
    from nnunet_joint.crops import cascade_labels

    stage2 = np.array([[0, 1, 3], [4, 1, 0]])
    liver = np.array([[True, False, False], [False, True, True]])
    np.testing.assert_array_equal(cascade_labels(stage2, liver), [[1, 0, 3], [4, 1, 1]])
    with pytest.raises(ValueError, match="differ in shape"):
        cascade_labels(stage2, liver[:1])
