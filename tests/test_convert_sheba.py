"""Sheba raw format -> Dataset503/504: outputs, crops, folds, and every bad input refused cleanly."""

from __future__ import annotations

import csv
import errno
import gzip
import json
import os
import re
import shutil
import struct
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_joint.dataset_conversion import convert_sheba as cs
from nnunet_joint.dataset_conversion.common import lesion_placement_problem
from nnunet_joint.dataset_conversion.convert_sheba import convert_sheba, main
from nnunet_joint.names import SLICE_AXIS_SPACING_2D
from nnunet_joint import LESION_TYPES

SPACING = (0.75, 0.75, 5.0)
ORIGIN = (-24.0, -24.0, 100.0)
SIZE = 64
LIVER_CENTRE, LIVER_RADIUS = (30, 26), 12  # rows 18..42, cols 14..38
COLUMNS = ["case_id", "patient_id", "lesion_type", "image", "mask", "liver_mask"]


def _disc(centre: tuple[int, int], radius: float) -> np.ndarray:
    rr, cc = np.mgrid[:SIZE, :SIZE]
    return (rr - centre[0]) ** 2 + (cc - centre[1]) ** 2 <= radius**2


def _nifti(array2d: np.ndarray, path: Path, spacing=SPACING, origin=ORIGIN) -> None:
    image = sitk.GetImageFromArray(array2d[None])
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path), True)


def slice_arrays(index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(HU slice, lesion mask, liver mask) with air, a body, a liver disc and a small lesion."""
    liver = _disc(LIVER_CENTRE, LIVER_RADIUS)
    lesion = _disc((28 + index % 5, 24 + index % 4), 3)
    hu = np.full((SIZE, SIZE), -1000, dtype=np.int16)
    hu[_disc((32, 32), 30)] = 40
    hu[liver] = 100
    hu[lesion] = 10 + index
    return hu, lesion.astype(np.uint8), liver.astype(np.uint8)


def make_raw(root: Path, patients: dict[str, list[str]] | None = None) -> Path:
    """Write a raw folder; ``patients`` maps patient id -> lesion type of each of its slices."""
    if patients is None:  # 9 patients, 2 slices each, one type per patient: 6 slices per type
        patients = {f"p{p}": [LESION_TYPES[p % 3]] * 2 for p in range(9)}
    rows = []
    for patient, types in patients.items():
        for k, lesion_type in enumerate(types):
            case = f"{patient}s{k}"
            hu, lesion, liver = slice_arrays(len(rows))
            _nifti(hu, root / "slices" / f"{case}.nii.gz")
            _nifti(lesion, root / "masks" / f"{case}_lesion.nii.gz")
            _nifti(liver, root / "masks" / f"{case}_liver.nii.gz")
            rows.append([case, patient, lesion_type, f"slices/{case}.nii.gz",
                         f"masks/{case}_lesion.nii.gz", f"masks/{case}_liver.nii.gz"])
    write_csv(root, COLUMNS, rows)
    return root


def write_csv(root: Path, header: list[str], rows: list[list[str]]) -> None:
    with open(root / "cases.csv", "w", newline="") as f:
        w = csv.writer(f)
        w.writerow(header)
        w.writerows(rows)


def read_csv(root: Path) -> tuple[list[str], list[list[str]]]:
    with open(root / "cases.csv", newline="") as f:
        header, *rows = list(csv.reader(f))
    return header, rows


@pytest.fixture
def dirs(tmp_path: Path) -> dict[str, Path]:
    return {"raw": make_raw(tmp_path / "sheba"), "out": tmp_path / "nnUNet_raw", "pre": tmp_path / "nnUNet_preprocessed"}


def _array(path: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


# ----------------------------------------------------------------------------- good input


@pytest.fixture
def converted(dirs) -> dict:
    result = convert_sheba(dirs["raw"], raw_root=dirs["out"], preprocessed_root=dirs["pre"])
    return {**dirs, "result": result}


def test_outputs_labels_images_and_crop_geometry(converted):
    seg_dir = converted["out"] / "Dataset503_ShebaSeg"
    joint_dir = converted["out"] / "Dataset504_ShebaJoint"
    assert converted["result"]["seg_dataset"] == seg_dir
    cases = sorted(f"p{p}s{k}" for p in range(9) for k in range(2))
    for d in (seg_dir, joint_dir):
        assert sorted(p.name for p in (d / "imagesTr").iterdir()) == [f"{c}_0000.nii.gz" for c in cases]
        assert sorted(p.name for p in (d / "labelsTr").iterdir()) == [f"{c}.nii.gz" for c in cases]
    assert sorted(converted["result"]["cases"]) == cases

    # Liver disc rows 18..42, cols 14..38; 10 mm at 0.75 mm is ceil(13.33) = 14 pixels, clipped at col 0.
    crops = json.loads((seg_dir / "crops.json").read_text())
    assert crops == json.loads((joint_dir / "crops.json").read_text())
    assert crops["margin_mm"] == 10.0
    box = crops["cases"]["p4s1"]
    assert box["image"] == "slices/p4s1.nii.gz"
    assert box["crop"]["start"] == [0, 4, 0] and box["crop"]["stop"] == [1, 57, 53]
    assert box["crop"]["original_size"] == [1, 64, 64]

    for case_index, case in enumerate(f"p{p}s{k}" for p in range(9) for k in range(2)):
        lesion_type = LESION_TYPES[int(case[1]) % 3]
        image = sitk.ReadImage(str(seg_dir / "imagesTr" / f"{case}_0000.nii.gz"))
        assert image.GetSize() == (53, 53, 1)
        assert image.GetPixelID() == sitk.sitkInt16
        # in-plane spacing kept; the slice axis gets nnU-Net's 2-D spacing so its 2d config cuts the right axis
        np.testing.assert_allclose(image.GetSpacing(), (SPACING[0], SPACING[1], SLICE_AXIS_SPACING_2D))
        # origin moves by index * spacing: 0 columns, 4 rows
        np.testing.assert_allclose(image.GetOrigin(), (ORIGIN[0], ORIGIN[1] + 4 * 0.75, ORIGIN[2]))
        hu, lesion, liver = slice_arrays(case_index)
        np.testing.assert_array_equal(sitk.GetArrayFromImage(image)[0], hu[4:57, 0:53])
        np.testing.assert_array_equal(_array(joint_dir / "imagesTr" / f"{case}_0000.nii.gz"), sitk.GetArrayFromImage(image))

        seg = _array(seg_dir / "labelsTr" / f"{case}.nii.gz")[0]
        joint = _array(joint_dir / "labelsTr" / f"{case}.nii.gz")[0]
        assert seg.dtype == np.uint8 and joint.dtype == np.uint8
        assert set(np.unique(seg)) == {0, 1, 2}
        assert set(np.unique(joint)) == {0, 1, 2 + LESION_TYPES.index(lesion_type)}
        expected = np.where(lesion[4:57, 0:53] > 0, 2, liver[4:57, 0:53]).astype(np.uint8)
        np.testing.assert_array_equal(seg, expected)
        np.testing.assert_array_equal(joint > 1, seg == 2)
        label_image = sitk.ReadImage(str(seg_dir / "labelsTr" / f"{case}.nii.gz"))
        assert label_image.GetOrigin() == image.GetOrigin()


def test_dataset_json(converted):
    seg = json.loads((converted["out"] / "Dataset503_ShebaSeg" / "dataset.json").read_text())
    joint = json.loads((converted["out"] / "Dataset504_ShebaJoint" / "dataset.json").read_text())
    assert seg["labels"] == {"background": 0, "liver": 1, "lesion": 2}
    assert joint["labels"] == {"background": 0, "liver": 1, "cyst": 2, "hemangioma": 3, "metastasis": 4}
    for d in (seg, joint):
        assert d["channel_names"] == {"0": "CT"}
        assert d["numTraining"] == 18 and d["file_ending"] == ".nii.gz"
        assert d["lesion_type_order"] == ["cyst", "hemangioma", "metastasis"]
        assert d["lesion_types"]["p5s0"] == "metastasis" and d["lesion_types"]["p3s1"] == "cyst"
        assert d["patients"]["p7s1"] == "p7"
        assert d["source"]["margin_mm"] == 10.0


def test_splits_patient_disjoint_stratified_and_everywhere_identical(converted):
    raw_split = json.loads((converted["out"] / "Dataset503_ShebaSeg" / "splits_final.json").read_text())
    for f in (
        converted["out"] / "Dataset504_ShebaJoint" / "splits_final.json",
        converted["pre"] / "Dataset503_ShebaSeg" / "splits_final.json",
        converted["pre"] / "Dataset504_ShebaJoint" / "splits_final.json",
    ):
        assert json.loads(f.read_text()) == raw_split
    assert len(raw_split) == 3
    all_cases = {f"p{p}s{k}" for p in range(9) for k in range(2)}
    val_cases = [c for fold in raw_split for c in fold["val"]]
    assert sorted(val_cases) == sorted(all_cases)  # every case exactly once in val
    for fold in raw_split:
        assert set(fold["train"]) | set(fold["val"]) == all_cases
        train_patients = {c.split("s")[0] for c in fold["train"]}
        val_patients = {c.split("s")[0] for c in fold["val"]}
        assert not train_patients & val_patients
        # 3 patients per type and 3 folds: each fold validates on one patient (2 slices) of each type
        types = Counter(LESION_TYPES[int(c[1]) % 3] for c in fold["val"])
        assert types == {"cyst": 2, "hemangioma": 2, "metastasis": 2}


def test_seed_changes_folds_and_same_seed_repeats(dirs, tmp_path):
    a = convert_sheba(dirs["raw"], raw_root=tmp_path / "a", preprocessed_root=None, seed=0)["splits"]
    b = convert_sheba(dirs["raw"], raw_root=tmp_path / "b", preprocessed_root=None, seed=0)["splits"]
    c = convert_sheba(dirs["raw"], raw_root=tmp_path / "c", preprocessed_root=None, seed=3)["splits"]
    assert a == b
    assert a != c


def test_patient_with_two_types_stays_in_one_fold(tmp_path, capsys):
    patients = {f"p{p}": [LESION_TYPES[p % 3]] for p in range(6)}
    patients["mixed"] = ["cyst", "metastasis", "hemangioma"]
    raw = make_raw(tmp_path / "sheba", patients)
    splits = convert_sheba(raw, raw_root=tmp_path / "out")["splits"]
    folds_with_mixed = [i for i, f in enumerate(splits) if any(c.startswith("mixed") for c in f["val"])]
    assert len(folds_with_mixed) == 1
    assert sorted(c for c in splits[folds_with_mixed[0]]["val"] if c.startswith("mixed")) == ["mixeds0", "mixeds1", "mixeds2"]
    # A split validating every type in every fold exists (mixed | p0 p1 p2 | p3 p4 p5) but scikit-learn's
    # heuristic does not find it: the folds are kept and one warning line says exactly what they lack.
    err = capsys.readouterr().err
    assert err.startswith(f"warning: {raw / 'cases.csv'}: no split by patient found in which every fold validates "
                          "every lesion type") and len(err.splitlines()) == 1
    type_of = {f"{p}s0": t[0] for p, t in patients.items() if p != "mixed"}
    type_of.update({f"mixeds{k}": t for k, t in enumerate(patients["mixed"])})
    lacking = [f"fold {i} validates no {' or '.join(sorted(set(LESION_TYPES) - {type_of[c] for c in f['val']}))}"
               for i, f in enumerate(splits) if set(LESION_TYPES) - {type_of[c] for c in f["val"]}]
    assert lacking and err.rstrip().endswith("; ".join(lacking))


def test_folds_are_retried_until_every_fold_validates_every_type(tmp_path, capsys):
    """Types spread over enough patients: every fold validates every type, with no warning."""
    patients = {f"p{p}": [LESION_TYPES[p % 3]] * (1 + p % 2) for p in range(12)}
    for seed in range(6):
        splits = convert_sheba(make_raw(tmp_path / f"s{seed}", patients), raw_root=tmp_path / f"o{seed}",
                               seed=seed)["splits"]
        for fold in splits:
            assert {LESION_TYPES[int(c[1:].split("s")[0]) % 3] for c in fold["val"]} == set(LESION_TYPES)
    assert capsys.readouterr().err == ""


# ----------------------------------------------------------------------------- warnings: converted, with one line each


def _convert_and_warnings(raw: Path, tmp_path: Path, capsys) -> list[str]:
    """Run the console script's main; the datasets must be written; returns the stderr lines."""
    assert main([str(raw), "--raw-root", str(tmp_path / "out")]) == 0
    for name in ("Dataset503_ShebaSeg", "Dataset504_ShebaJoint"):
        assert len(list((tmp_path / "out" / name / "imagesTr").iterdir())) == len(read_csv(raw)[1])
    return capsys.readouterr().err.splitlines()


def test_good_slices_convert_without_a_warning(dirs, tmp_path, capsys):
    assert _convert_and_warnings(dirs["raw"], tmp_path, capsys) == []


def test_a_lesion_type_without_cases_is_warned_naming_its_empty_cells(tmp_path, capsys):
    patients = {f"p{p}": [("cyst", "hemangioma")[p % 2]] * 2 for p in range(6)}  # 3 patients per type, no metastasis
    raw = make_raw(tmp_path / "sheba", patients)
    (line,) = _convert_and_warnings(raw, tmp_path, capsys)
    assert line.startswith(f"warning: {raw / 'cases.csv'}: no metastasis case: ")
    assert "recall_metastasis" in line and "metastasis row of every confusion matrix" in line


def test_a_lesion_mask_equal_to_the_liver_mask_is_warned(dirs, tmp_path, capsys):
    header, rows = read_csv(dirs["raw"])
    case, lesion_type, mask, liver = rows[4][0], rows[4][2], rows[4][4], rows[4][5]
    shutil.copyfile(dirs["raw"] / liver, dirs["raw"] / mask)
    (line,) = _convert_and_warnings(dirs["raw"], tmp_path, capsys)
    assert line.startswith(f"warning: {dirs['raw'] / mask}: lesion mask is identical to the liver mask "
                           f"{Path(liver).name}: ")
    # converted as given: every liver pixel carries the slice's type in the full-slice labels
    joint = _array(tmp_path / "out" / "Dataset504_ShebaJoint" / "labelsFull" / f"{case}.nii.gz")
    liver_pixels = _array(dirs["raw"] / liver).astype(bool)
    assert (joint[liver_pixels] == 2 + LESION_TYPES.index(lesion_type)).all() and not joint[~liver_pixels].any()


# ----------------------------------------------------------------------------- lesion inside its liver


def _refusal(raw: Path, tmp_path: Path, capsys) -> str:
    """Run the console script's main; it must refuse with one line and write nothing; returns the line."""
    with pytest.raises(SystemExit) as e:
        main([str(raw), "--raw-root", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert e.value.code == 2 and len(err.splitlines()) == 1 and err.startswith("error: ")
    assert not (tmp_path / "out").exists() or list((tmp_path / "out").iterdir()) == []
    return err


def _share_outside(err: str) -> tuple[int, int]:
    """(outside, total) from "<share>% of it (<outside> of <total> pixels)"; the share must be their ratio."""
    found = re.search(r"([\d.]+)% of it \((\d+) of (\d+) pixels\)", err)
    assert found, err
    outside, total = int(found[2]), int(found[3])
    assert found[1] == f"{100 * outside / total:.1f}"
    return outside, total


def test_swapped_lesion_and_liver_masks_are_refused(dirs, tmp_path, capsys):
    """Row 3 (case p0s1) with its masks exchanged: the "lesion" is the liver disc (radius 12), the "liver" the
    lesion disc (radius 3 at (29, 25)), whose convex outline holds at most the pixels within 3.5 of its centre."""
    _edit_csv(dirs["raw"], 1, "mask", "masks/p0s1_liver.nii.gz")
    _edit_csv(dirs["raw"], 1, "liver_mask", "masks/p0s1_lesion.nii.gz")
    err = _refusal(dirs["raw"], tmp_path, capsys)
    assert err.startswith(f"error: {dirs['raw'] / 'masks/p0s1_liver.nii.gz'}: lesion mask is not mostly inside its "
                          "liver: ")
    assert "outline of the liver mask p0s1_lesion.nii.gz, more than 50%" in err and "case 'p0s1'" in err
    liver, lesion = _disc(LIVER_CENTRE, LIVER_RADIUS), _disc((29, 25), 3)
    outside, total = _share_outside(err)
    assert total == liver.sum()
    assert (liver & ~_disc((29, 25), 3.5)).sum() <= outside <= (liver & ~lesion).sum()


def test_swapped_masks_of_a_lesion_covering_most_of_its_liver_are_refused(dirs, tmp_path, capsys):
    """A 16 x 16 lesion (256 pixels) inside the liver disc: swapped, under half of the "lesion" lies outside
    the "liver" (a square is its own outline), but the lesion is larger than its liver."""
    liver = _disc(LIVER_CENTRE, LIVER_RADIUS)
    square = np.zeros_like(liver)
    square[22:38, 18:34] = True
    assert not (square & ~liver).any() and (liver.sum() - 256) < liver.sum() / 2
    _rewrite_nifti(_mask(dirs["raw"]), square.astype(np.uint8)[None])
    _edit_csv(dirs["raw"], 1, "mask", "masks/p0s1_liver.nii.gz")
    _edit_csv(dirs["raw"], 1, "liver_mask", "masks/p0s1_lesion.nii.gz")
    err = _refusal(dirs["raw"], tmp_path, capsys)
    total = int(liver.sum())
    assert err.startswith(f"error: {dirs['raw'] / 'masks/p0s1_liver.nii.gz'}: lesion mask is larger than its liver: "
                          f"{total} pixels against 256 inside the outline of the liver mask p0s1_lesion.nii.gz")
    assert _share_outside(err) == (total - 256, total)


def test_a_lesion_mask_covering_the_whole_slice_is_refused(dirs, tmp_path, capsys):
    """Every pixel lesion: outside is the slice less the liver disc's outline (within 12.5 pixels of its centre)."""
    _rewrite_nifti(_mask(dirs["raw"]), np.ones((1, SIZE, SIZE), dtype=np.uint8))
    err = _refusal(dirs["raw"], tmp_path, capsys)
    assert err.startswith(f"error: {_mask(dirs['raw'])}: lesion mask is not mostly inside its liver: ")
    outside, total = _share_outside(err)
    assert total == SIZE * SIZE
    assert SIZE * SIZE - _disc(LIVER_CENTRE, 12.5).sum() <= outside <= SIZE * SIZE - _disc(LIVER_CENTRE, 12).sum()


def test_a_lesion_crossing_the_liver_edge_by_a_few_pixels_is_converted_as_drawn(dirs, tmp_path, capsys):
    """A radius-3 lesion centred 11 pixels right of the liver's centre reaches 2 pixels beyond its edge."""
    liver = _disc(LIVER_CENTRE, LIVER_RADIUS)
    lesion = _disc((LIVER_CENTRE[0], LIVER_CENTRE[1] + 11), 3)
    beyond = lesion & ~liver
    assert beyond.any() and np.nonzero(beyond)[1].max() == LIVER_CENTRE[1] + 14
    _rewrite_nifti(_mask(dirs["raw"]), lesion.astype(np.uint8)[None])
    assert _convert_and_warnings(dirs["raw"], tmp_path, capsys) == []
    seg = _array(tmp_path / "out" / "Dataset503_ShebaSeg" / "labelsFull" / "p0s1.nii.gz")[0]
    assert (seg[lesion] == 2).all() and (seg[liver & ~lesion] == 1).all()  # the lesion as drawn, edge pixels kept


@pytest.mark.parametrize("outside_columns,refused", [(5, False), (6, True)])
def test_more_than_half_outside_is_the_limit(outside_columns, refused):
    """A 10 x 10 liver square and a 4 x 10 lesion across its right edge: 5 of 10 columns outside is half
    (accepted), 6 is more than half (refused); squares are their own outlines. Also as a 3-D volume (LiTS)."""
    liver = np.zeros((2, 30, 40), dtype=bool)
    liver[:, 10:20, 10:20] = True
    lesion = np.zeros_like(liver)
    lesion[1, 12:16, 20 - (10 - outside_columns):30 - (10 - outside_columns)] = True
    assert (lesion & ~liver).sum() == 4 * outside_columns and lesion.sum() == 40
    problem = lesion_placement_problem(lesion, liver, "lesion", "liver", "voxels")
    if refused:
        assert problem.startswith("lesion is not mostly inside its liver: 60.0% of it (24 of 40 voxels) outside")
    else:
        assert problem is None


def test_a_slice_with_doubled_hu_is_warned_by_its_air(dirs, tmp_path, capsys):
    """Doubled, the liver (100 -> 200 HU) still looks like a liver; the air (-1000 -> -2000 HU) does not."""
    header, rows = read_csv(dirs["raw"])
    hu, _, liver = slice_arrays(3)
    _nifti(hu.astype(np.int32) * 2, dirs["raw"] / rows[3][3])
    (line,) = _convert_and_warnings(dirs["raw"], tmp_path, capsys)
    assert line.startswith(f"warning: {dirs['raw'] / rows[3][3]}: air is at -2000 HU, not about -1000 HU")
    assert f"case {rows[3][0]!r}" in line


def test_a_liver_mask_over_a_non_liver_intensity_is_warned(dirs, tmp_path, capsys):
    header, rows = read_csv(dirs["raw"])
    hu, _, liver = slice_arrays(2)
    hu[liver.astype(bool)] = 700  # bone under the liver mask: the mask of another structure
    _nifti(hu, dirs["raw"] / rows[2][3])
    (line,) = _convert_and_warnings(dirs["raw"], tmp_path, capsys)
    assert line.startswith(f"warning: {dirs['raw'] / rows[2][3]}: median inside the liver mask "
                           f"{Path(rows[2][5]).name} is 700 HU; a liver has -70..300 HU")


def test_a_refused_conversion_prints_only_its_error_line(tmp_path, capsys):
    """Warnings are found before the folds are made but printed once the datasets are written."""
    patients = {f"p{p}": [LESION_TYPES[p % 3]] for p in range(8)}  # metastasis: 2 patients, 3 folds: refused
    raw = make_raw(tmp_path / "sheba", patients)
    header, rows = read_csv(raw)
    shutil.copyfile(raw / rows[0][5], raw / rows[0][4])  # would be warned
    with pytest.raises(SystemExit):
        main([str(raw), "--raw-root", str(tmp_path / "out")])
    (line,) = capsys.readouterr().err.splitlines()
    assert line.startswith(f"error: {raw / 'cases.csv'}: lesion type 'metastasis' has 2 case(s)")


def test_png_and_dicom_slices(tmp_path):
    raw = make_raw(tmp_path / "sheba")
    header, rows = read_csv(raw)
    hu0, lesion0, liver0 = slice_arrays(0)
    # case 0 as 16-bit PNG with HU + 1024, masks as 8-bit PNG
    sitk.WriteImage(sitk.GetImageFromArray((hu0.astype(np.int32) + 1024).astype(np.uint16)), str(raw / "slices/p0s0.png"))
    sitk.WriteImage(sitk.GetImageFromArray(lesion0), str(raw / "masks/p0s0_lesion.png"))
    sitk.WriteImage(sitk.GetImageFromArray(liver0), str(raw / "masks/p0s0_liver.png"))
    rows[0][3:] = ["slices/p0s0.png", "masks/p0s0_lesion.png", "masks/p0s0_liver.png"]
    # case 1 as a DICOM file (HU stored through RescaleIntercept)
    hu1, _, _ = slice_arrays(1)
    dcm = sitk.GetImageFromArray(hu1[None])
    dcm.SetSpacing(SPACING)
    dcm.SetOrigin(ORIGIN)
    tags = {"0008|0060": "CT", "0020|0032": "-24\\-24\\100", "0028|0030": "0.75\\0.75",
            "0028|1052": "-1024", "0028|1053": "1"}
    for tag, value in tags.items():
        dcm.SetMetaData(tag, value)
    sitk.WriteImage(dcm, str(raw / "slices/p0s1.dcm"))
    import pydicom

    assert pydicom.dcmread(raw / "slices/p0s1.dcm").pixel_array.min() == -1000 + 1024  # stored without HU
    rows[1][3] = "slices/p0s1.dcm"
    write_csv(raw, header, rows)

    out = tmp_path / "out"
    assert main([str(raw), "--raw-root", str(out), "--png-hu-offset", "1024", "--png-spacing", "0.6"]) == 0
    png_case = sitk.ReadImage(str(out / "Dataset503_ShebaSeg/imagesTr/p0s0_0000.nii.gz"))
    np.testing.assert_allclose(png_case.GetSpacing()[:2], (0.6, 0.6))
    # at 0.6 mm the 10 mm margin is 17 pixels: rows 18-17=1 .. 42+1+17=60, cols 0 .. 56
    np.testing.assert_array_equal(sitk.GetArrayFromImage(png_case)[0], hu0[1:60, 0:56])
    dicom_case = sitk.GetArrayFromImage(sitk.ReadImage(str(out / "Dataset503_ShebaSeg/imagesTr/p0s1_0000.nii.gz")))
    np.testing.assert_array_equal(dicom_case[0], hu1[4:57, 0:53])


def test_overwrite_replaces_and_default_refuses(dirs, capsys):
    convert_sheba(dirs["raw"], raw_root=dirs["out"])
    marker = dirs["out"] / "Dataset503_ShebaSeg" / "old_marker"
    marker.write_text("x")
    with pytest.raises(SystemExit) as e:
        main([str(dirs["raw"]), "--raw-root", str(dirs["out"])])
    assert e.value.code == 2
    assert "Dataset503_ShebaSeg" in capsys.readouterr().err and marker.exists()
    assert main([str(dirs["raw"]), "--raw-root", str(dirs["out"]), "--overwrite"]) == 0
    assert not marker.exists()
    assert sorted(p.name for p in dirs["out"].iterdir()) == ["Dataset503_ShebaSeg", "Dataset504_ShebaJoint"]


def test_failure_while_writing_leaves_nothing(dirs, monkeypatch):
    calls = []

    def failing_write_case(*args):
        calls.append(args)
        if len(calls) == 5:
            raise OSError("disk full")
        return original(*args)

    original = cs.write_case
    monkeypatch.setattr(cs, "write_case", failing_write_case)
    with pytest.raises(OSError):
        convert_sheba(dirs["raw"], raw_root=dirs["out"], preprocessed_root=dirs["pre"])
    assert list(dirs["out"].iterdir()) == []
    assert not dirs["pre"].exists()


# ----------------------------------------------------------------------------- bad input


def _edit_csv(raw: Path, row: int, column: str, value: str) -> None:
    header, rows = read_csv(raw)
    rows[row][header.index(column)] = value
    write_csv(raw, header, rows)


def _rewrite_nifti(path: Path, array: np.ndarray, **geometry) -> None:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(geometry.get("spacing", SPACING if array.ndim == 3 else SPACING[:2]))
    image.SetOrigin(geometry.get("origin", ORIGIN if array.ndim == 3 else ORIGIN[:2]))
    sitk.WriteImage(image, str(path), True)


def _mask(raw: Path) -> Path:
    return raw / "masks/p0s1_lesion.nii.gz"


def _image_file(raw: Path) -> Path:
    return raw / "slices/p0s1.nii.gz"


def bad_missing_image(raw):
    _image_file(raw).unlink()
    return "p0s1.nii.gz", "file not found"


def bad_unreadable_image(raw):
    _image_file(raw).write_bytes(b"not a nifti file at all")
    return "p0s1.nii.gz", "cannot be read"


def bad_size_mismatch(raw):
    _rewrite_nifti(_mask(raw), np.zeros((1, SIZE, SIZE - 4), dtype=np.uint8))
    return "p0s1_lesion.nii.gz", "size"


def bad_spacing_mismatch(raw):
    _, lesion, _ = slice_arrays(1)
    _rewrite_nifti(_mask(raw), lesion[None], spacing=(8.65271, 8.65271, 5.0))
    return "p0s1_lesion.nii.gz", "spacing (8.65271, 8.65271) differs from the image's (0.75, 0.75)"  # plain numbers


def bad_origin_mismatch(raw):
    _, lesion, _ = slice_arrays(1)
    _rewrite_nifti(_mask(raw), lesion[None], origin=(0.0, 0.0, 100.0))
    return "p0s1_lesion.nii.gz", "origin"


def bad_mask_values(raw):
    _, lesion, _ = slice_arrays(1)
    _rewrite_nifti(_mask(raw), (lesion * 255)[None])
    return "p0s1_lesion.nii.gz", "255"


def bad_empty_lesion(raw):
    _rewrite_nifti(_mask(raw), np.zeros((1, SIZE, SIZE), dtype=np.uint8))
    return "p0s1_lesion.nii.gz", "empty"


def bad_lesion_outside_liver(raw):
    _rewrite_nifti(_mask(raw), _disc((55, 55), 3).astype(np.uint8)[None])
    return "p0s1_lesion.nii.gz", "outside the liver"


def bad_unknown_type(raw):
    _edit_csv(raw, 1, "lesion_type", "adenoma")
    return "cases.csv", "row 3: unknown lesion_type 'adenoma'"


def bad_duplicate_case(raw):
    _edit_csv(raw, 1, "case_id", "p0s0")
    return "cases.csv", "row 3: duplicate case_id 'p0s0' (first in row 2)"


def bad_absolute_path(raw):
    _edit_csv(raw, 1, "image", str(_image_file(raw).resolve()))
    return "cases.csv", "must be relative"


def bad_parent_path(raw):
    _edit_csv(raw, 1, "mask", "../elsewhere/p0s1_lesion.nii.gz")
    return "cases.csv", "without '..'"


def bad_missing_column(raw):
    header, rows = read_csv(raw)
    i = header.index("lesion_type")
    write_csv(raw, header[:i] + header[i + 1:], [r[:i] + r[i + 1:] for r in rows])
    return "cases.csv", "missing column(s) lesion_type"


def bad_missing_liver_column(raw):
    header, rows = read_csv(raw)
    write_csv(raw, header[:-1], [r[:-1] for r in rows])
    return "cases.csv", "give every case a liver mask, or crop with a stage-1 liver model"


def bad_not_hu(raw):
    hu, _, _ = slice_arrays(1)
    _rewrite_nifti(_image_file(raw), (hu + 1024).astype(np.int16)[None])  # raw unsigned values, no air
    return "p0s1.nii.gz", "no air"


def bad_4d_image(raw):
    image = sitk.JoinSeries([sitk.ReadImage(str(_image_file(raw)))] * 2)
    sitk.WriteImage(image, str(_image_file(raw)))
    return "p0s1.nii.gz", "4-D"


def bad_rgb_image(raw):
    hu, _, _ = slice_arrays(1)
    image = sitk.GetImageFromArray(np.stack([hu] * 3, axis=-1), isVector=True)
    sitk.WriteImage(image, str(_image_file(raw)))
    return "p0s1.nii.gz", "3 channels"


def bad_volume_not_slice(raw):
    hu, _, _ = slice_arrays(1)
    _rewrite_nifti(_image_file(raw), np.stack([hu, hu, hu]))
    return "p0s1.nii.gz", "holds 3 slices"


def bad_8bit_png(raw):
    hu, _, _ = slice_arrays(1)
    sitk.WriteImage(sitk.GetImageFromArray(np.clip(hu + 1000, 0, 255).astype(np.uint8)), str(raw / "slices/p0s1.png"))
    _edit_csv(raw, 1, "image", "slices/p0s1.png")
    return "p0s1.png", "not 16-bit"


def bad_same_image_twice(raw):
    _edit_csv(raw, 5, "image", "slices/p0s1.nii.gz")
    return "cases.csv", "row 7: image 'slices/p0s1.nii.gz' is already listed in row 3"


def bad_too_few_patients(raw):
    header, rows = read_csv(raw)
    write_csv(raw, header, rows[:4])  # patients p0, p1
    return "cases.csv", "2 patient(s) cannot fill 3 folds"


def bad_every_type_rarer_than_folds(raw):
    header, rows = read_csv(raw)
    write_csv(raw, header, rows[0:12:2])  # 6 patients, 2 slices of each type
    return "cases.csv", "cannot be stratified"


def bad_no_cases_csv(raw):
    (raw / "cases.csv").unlink()
    return "cases.csv", "file not found"


# corrupt data SimpleITK would accept silently (zero-filled, zeroed, an invented spacing)


def bad_truncated_gz(raw):
    data = _image_file(raw).read_bytes()
    _image_file(raw).write_bytes(data[: len(data) * 2 // 3])  # a copy cut short
    return "p0s1.nii.gz", "truncated or corrupt"


def bad_truncated_mask(raw):
    data = gzip.decompress(_mask(raw).read_bytes())
    _mask(raw).write_bytes(gzip.compress(data[:-100]))  # a whole gzip stream, the voxel data short
    return "p0s1_lesion.nii.gz", "file is truncated"


def bad_nan_voxels(raw):
    hu, _, _ = slice_arrays(1)
    hu = hu.astype(np.float32)
    hu[30, 30] = np.nan
    _rewrite_nifti(_image_file(raw), hu[None])
    return "p0s1.nii.gz", "1 voxel(s) are NaN or infinite"


def bad_infinite_voxels(raw):
    hu, _, _ = slice_arrays(1)
    hu = hu.astype(np.float64)
    hu[3, 3] = -np.inf
    _rewrite_nifti(_image_file(raw), hu[None])
    return "p0s1.nii.gz", "1 voxel(s) are NaN or infinite"


def _set_pixdim(path: Path, axis: int, value: float) -> None:
    data = bytearray(gzip.decompress(path.read_bytes()))
    struct.pack_into("<f", data, 76 + 4 * (axis + 1), value)
    path.write_bytes(gzip.compress(bytes(data)))


def bad_pixdim_zero(raw):
    _set_pixdim(_image_file(raw), 0, 0.0)
    return "p0s1.nii.gz", "voxel size of 0 mm along x"


def bad_mask_pixdim_zero(raw):
    _set_pixdim(raw / "masks/p0s1_liver.nii.gz", 1, 0.0)
    return "p0s1_liver.nii.gz", "voxel size of 0 mm along y"


def bad_mask_on_another_slice(raw):
    _, lesion, _ = slice_arrays(1)
    _rewrite_nifti(_mask(raw), lesion[None], origin=(ORIGIN[0], ORIGIN[1], ORIGIN[2] + 5.0))  # differs in z only
    return "p0s1_lesion.nii.gz", "origin"


def bad_one_pixel_image(raw):
    for path, value in ((_image_file(raw), -1000), (_mask(raw), 1), (raw / "masks/p0s1_liver.nii.gz", 1)):
        _rewrite_nifti(path, np.full((1, 1, 1), value, dtype=np.int16 if value < 0 else np.uint8))
    return "p0s1.nii.gz", "1 x 1 x 1 pixels is not a CT slice"


def bad_thin_strip_image(raw):
    hu, lesion, liver = slice_arrays(1)
    for path, array in ((_image_file(raw), hu), (_mask(raw), lesion), (raw / "masks/p0s1_liver.nii.gz", liver)):
        _rewrite_nifti(path, array[None, 20:28, :])
    return "p0s1.nii.gz", "64 x 8 x 1 pixels is not a CT slice"


def bad_header_bomb(raw):
    """A 1 KB header claiming 32767 x 32767 x 2 voxels."""
    data = bytearray(gzip.decompress(_image_file(raw).read_bytes())[:352])
    struct.pack_into("<8h", data, 40, 3, 32767, 32767, 2, 1, 1, 1, 1)
    _image_file(raw).write_bytes(gzip.compress(bytes(data)))
    return "p0s1.nii.gz", "32767 x 32767 x 2 voxels"


# the same data twice


def bad_same_pixels_other_patient(raw):
    shutil.copyfile(_image_file(raw), raw / "slices/p4s0.nii.gz")
    return "p4s0.nii.gz", "holds the same pixels as 'slices/p0s1.nii.gz' (row 3, case 'p0s1', patient 'p0')"


def bad_same_pixels_hard_link(raw):
    (raw / "slices/p0s0.nii.gz").unlink()
    os.link(_image_file(raw), raw / "slices/p0s0.nii.gz")
    return "p0s1.nii.gz", "holds the same pixels as 'slices/p0s0.nii.gz' (row 2, case 'p0s0', the same patient)"


def bad_same_pixels_other_format(raw):
    image = sitk.Cast(sitk.ReadImage(str(_image_file(raw))), sitk.sitkFloat32)
    sitk.WriteImage(image, str(raw / "slices/x.mha"))
    _edit_csv(raw, 16, "image", "slices/x.mha")  # p8s0 becomes p0s1's slice, as float MHA
    return "x.mha", "holds the same pixels as 'slices/p0s1.nii.gz'"


def bad_duplicated_column(raw):
    header, rows = read_csv(raw)
    write_csv(raw, header + ["image"], [r + ["slices/p0s0.nii.gz"] for r in rows])
    return "cases.csv", "column(s) image appear more than once in the header"


def bad_extra_unnamed_field(raw):
    header, rows = read_csv(raw)
    rows[3] = rows[3] + ["a note, unquoted"]
    write_csv(raw, header, rows)
    return "cases.csv", "row 5: 7 fields, the header names 6"


def bad_long_case_id(raw):
    _edit_csv(raw, 1, "case_id", "c" * 300)
    return "cases.csv", "is 300 characters long; at most 100"


def bad_type_with_fewer_patients_than_folds(raw):
    header, rows = read_csv(raw)
    for r in rows:
        if r[1] == "p5":  # metastasis patients p2, p5, p8 -> p2, p8
            r[1] = "p8"
    write_csv(raw, header, rows)
    return "cases.csv", "lesion type 'metastasis' has 6 case(s) from 2 patient(s), fewer than 3 folds"


BAD_INPUTS = [
    bad_missing_image, bad_unreadable_image, bad_size_mismatch, bad_spacing_mismatch, bad_origin_mismatch, bad_mask_values,
    bad_empty_lesion, bad_lesion_outside_liver, bad_unknown_type, bad_duplicate_case, bad_absolute_path,
    bad_parent_path, bad_missing_column, bad_missing_liver_column, bad_not_hu, bad_4d_image, bad_rgb_image,
    bad_volume_not_slice, bad_8bit_png, bad_same_image_twice, bad_too_few_patients, bad_every_type_rarer_than_folds, bad_no_cases_csv,
    bad_truncated_gz, bad_truncated_mask, bad_nan_voxels, bad_infinite_voxels, bad_pixdim_zero, bad_mask_pixdim_zero,
    bad_mask_on_another_slice, bad_one_pixel_image, bad_thin_strip_image, bad_header_bomb,
    bad_same_pixels_other_patient, bad_same_pixels_hard_link, bad_same_pixels_other_format, bad_duplicated_column,
    bad_extra_unnamed_field, bad_long_case_id, bad_type_with_fewer_patients_than_folds,
]


@pytest.mark.parametrize("spoil", BAD_INPUTS, ids=[f.__name__[4:] for f in BAD_INPUTS])
def test_bad_input_exits_2_naming_the_file_and_writes_nothing(dirs, capsys, spoil):
    file_name, problem = spoil(dirs["raw"])
    before = {p: p.stat().st_mtime_ns for p in dirs["raw"].rglob("*")}
    with pytest.raises(SystemExit) as e:
        main([str(dirs["raw"]), "--raw-root", str(dirs["out"]), "--preprocessed-root", str(dirs["pre"])])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ")
    assert file_name in err and problem in err
    assert ".cxx" not in err and "sitk::" not in err and "ITK ERROR" not in err  # words, not C++ source paths
    assert not re.search(r"np\.\w+\(", err)  # plain numbers, never numpy's repr (np.float64(8.65271))
    assert not dirs["out"].exists() or list(dirs["out"].iterdir()) == []  # no dataset, no partial folders
    assert not dirs["pre"].exists()
    assert {p: p.stat().st_mtime_ns for p in dirs["raw"].rglob("*")} == before  # inputs untouched


@pytest.mark.parametrize("option,value,problem", [
    ("--margin-mm", "nan", "--margin-mm must be a finite number >= 0, got nan"),
    ("--margin-mm", "inf", "--margin-mm must be a finite number >= 0, got inf"),
    ("--margin-mm", "-2", "--margin-mm must be >= 0, got -2.0"),
    ("--png-spacing", "nan", "--png-spacing must be a finite number > 0, got nan"),
    ("--png-spacing", "0", "--png-spacing must be > 0, got 0.0"),
    ("--png-spacing", "-inf", "--png-spacing must be a finite number > 0, got -inf"),
    ("--png-hu-offset", "nan", "--png-hu-offset must be a finite number, got nan"),
])
def test_options_that_are_not_finite_or_out_of_range_are_refused(dirs, capsys, option, value, problem):
    with pytest.raises(SystemExit) as e:
        main([str(dirs["raw"]), "--raw-root", str(dirs["out"]), f"{option}={value}"])
    assert e.value.code == 2
    assert capsys.readouterr().err == f"error: {problem}\n"
    assert not dirs["out"].exists()


@pytest.mark.parametrize("which", ["--raw-root", "--preprocessed-root", "parent of --raw-root"])
def test_an_output_root_that_is_a_file_is_refused(dirs, capsys, which):
    a_file = dirs["out"].parent / "a_file"
    a_file.write_text("not a folder")
    roots = {"--raw-root": str(dirs["out"]), "--preprocessed-root": str(dirs["pre"])}
    if which == "parent of --raw-root":
        roots["--raw-root"] = str(a_file / "raw")
    else:
        roots[which] = str(a_file)
    with pytest.raises(SystemExit) as e:
        main([str(dirs["raw"]), *[x for kv in roots.items() for x in kv]])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {a_file}: is not a folder") and len(err.splitlines()) == 1
    assert a_file.read_text() == "not a folder" and not dirs["out"].exists() and not dirs["pre"].exists()


def _itk_disk_full(*args, **kwargs):
    raise RuntimeError("Exception thrown in SimpleITK ImageFileWriter_Execute: /tmp/SimpleITK-build/ITK/Modules/IO/"
                       "NIFTI/src/itkNiftiImageIO.cxx:2386:\nITK ERROR: NiftiImageIO(0x55d0): ERROR: nifti library "
                       "failed to write image")


@pytest.mark.parametrize("where", ["image writer", "json writer", "low-level write"])
def test_a_full_disk_is_one_line_naming_the_file_and_leaves_nothing(dirs, capsys, monkeypatch, where):
    from nnunet_joint import io as nj_io

    if where == "image writer":  # ITK says it in C++; the disk is full
        monkeypatch.setattr(nj_io.sitk, "WriteImage", _itk_disk_full)
        monkeypatch.setattr(nj_io.shutil, "disk_usage", lambda p: shutil._ntuple_diskusage(10**9, 10**9, 0))
        expected = "_0000.nii.gz: cannot be written: no space left on device"
    elif where == "low-level write":  # the kernel's ENOSPC from write(2), which names no file
        def to_full_device(self, data, *args, **kwargs):
            with open("/dev/full", "w", encoding="utf-8") as f:
                f.write(data)

        monkeypatch.setattr(Path, "write_text", to_full_device)
        expected = ".json: No space left on device"
    else:
        def full(obj, dest, **kwargs):
            raise OSError(errno.ENOSPC, "No space left on device", str(dest))

        monkeypatch.setattr(cs, "write_json", full)
        expected = "crops.json: No space left on device"
    with pytest.raises(SystemExit) as e:
        main([str(dirs["raw"]), "--raw-root", str(dirs["out"]), "--preprocessed-root", str(dirs["pre"])])
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and err.startswith(f"error: {dirs['out']}") and expected in err, err
    assert ".cxx" not in err
    assert list(dirs["out"].iterdir()) == [] and not dirs["pre"].exists()


def test_other_dataset_with_same_id_is_refused(dirs, capsys):
    (dirs["out"] / "Dataset503_Other").mkdir(parents=True)
    with pytest.raises(SystemExit):
        main([str(dirs["raw"]), "--raw-root", str(dirs["out"]), "--overwrite"])
    assert "Dataset503_Other: another dataset already uses id 503" in capsys.readouterr().err
    assert sorted(p.name for p in dirs["out"].iterdir()) == ["Dataset503_Other"]


# ----------------------------------------------------------------------------- slow


@pytest.mark.slow
def test_phantom_corpus_converts(tmp_path):
    phantom = pytest.importorskip("nnunet_joint.phantom")
    phantom.generate_corpus(tmp_path / "phantom", seed=0, size="tiny")
    result = convert_sheba(tmp_path / "phantom" / "Sheba", raw_root=tmp_path / "raw")
    n = len(read_csv(tmp_path / "phantom" / "Sheba")[1])
    assert len(result["cases"]) == n
    assert sorted(c for f in result["splits"] for c in f["val"]) == sorted(result["cases"])


@pytest.mark.slow
def test_nnunet_plan_and_preprocess_accepts_converted_datasets(tiny_run):
    """nnU-Net 2.8.1 verified and preprocessed both converted phantom datasets (the session's ``tiny_run``
    checks their integrity) with nnU-Net's plans carried from the LiTS lesion dataset (one set of plans
    across the transfer, plain rows included), and kept our folds."""
    raw_split = json.loads((tiny_run.raw / "Dataset503_ShebaSeg" / "splits_final.json").read_text())
    lits_raw = tiny_run.raw / "Dataset502_LiTSLesion"
    lits_plans = json.loads((tiny_run.preprocessed / "Dataset502_LiTSLesion" / "nnUNetPlans.json").read_text())
    # the source's own planning: the median in-plane pixel of its slices (the slice axis, 999 mm, first)
    in_plane = np.array([sitk.ReadImage(str(f)).GetSpacing()[:2] for f in (lits_raw / "imagesTr").glob("*.nii.gz")])
    lits_spacing = lits_plans["configurations"]["2d"]["spacing"]
    assert lits_spacing == pytest.approx(np.median(in_plane, axis=0)[::-1].tolist())
    for name in ("Dataset503_ShebaSeg", "Dataset504_ShebaJoint"):
        raw, pre = tiny_run.raw / name, tiny_run.preprocessed / name
        assert json.loads((pre / "splits_final.json").read_text()) == raw_split
        plans = json.loads((pre / "nnUNetPlans.json").read_text())
        # the slice axis (999 mm) stays first, so the 2d configuration works in-plane
        assert plans["transpose_forward"] == [0, 1, 2]
        assert plans["configurations"]["2d"]["spacing"] == lits_spacing
        n_cases = json.loads((raw / "dataset.json").read_text())["numTraining"]
        assert len(list((pre / "nnUNetPlans_2d").glob("*_seg.b2nd"))) == n_cases == len(raw_split[0]["train"]) + len(
            raw_split[0]["val"])
