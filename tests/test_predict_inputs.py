"""nnunet_joint_predict's inputs, output folder and model checks: every bad input is one line, exit 2,
nothing written, input untouched. Tiny images and DICOM series are made in the test."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from nnunet_joint.errors import InputError
from nnunet_joint.inference import cli, models
from nnunet_joint.inference.inputs import discover_inputs, order_dicom_series, read_case

# ----------------------------------------------------------------------------- tiny CT


def ct_array(shape=(16, 16), seed=0) -> np.ndarray:
    """Air around a soft-tissue body: passes the HU check."""
    rng = np.random.default_rng(seed)
    a = np.full(shape, -1000, dtype=np.int16)
    a[..., 3:13, 3:13] = 40 + rng.integers(-20, 20, size=a[..., 3:13, 3:13].shape)
    return a


def write_nifti(path: Path, array: np.ndarray, spacing=None, origin=None) -> Path:
    image = sitk.GetImageFromArray(array)
    if spacing:
        image.SetSpacing(spacing)
    if origin:
        image.SetOrigin(origin)
    sitk.WriteImage(image, str(path))
    return path


def dicom_slice(path: Path, z: float, pixels: np.ndarray, series_uid: str, instance: int,
                orientation=(1, 0, 0, 0, 1, 0), slope=1.0, intercept=-1024.0) -> None:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = FileDataset(str(path), {}, file_meta=meta, preamble=b"\0" * 128)
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.Modality = "CT"
    ds.StudyInstanceUID = "1.2.3.4"
    ds.SeriesInstanceUID = series_uid
    ds.InstanceNumber = instance
    normal = np.cross(orientation[:3], orientation[3:])
    ds.ImagePositionPatient = [float(v) for v in (np.array([-20.0, -30.0, 0.0]) + z * normal)]
    ds.ImageOrientationPatient = [float(v) for v in orientation]
    ds.PixelSpacing = [0.8, 0.7]
    ds.SliceThickness = 2.0
    ds.Rows, ds.Columns = pixels.shape
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = ds.BitsStored = 16
    ds.HighBit = 15
    ds.PixelRepresentation = 0
    ds.RescaleSlope = slope
    ds.RescaleIntercept = intercept
    stored = np.round((pixels.astype(float) - intercept) / slope).astype(np.uint16)
    ds.PixelData = stored.tobytes()
    ds.save_as(str(path), enforce_file_format=True)


def dicom_series(folder: Path, positions, shuffle_numbers=True, **kw) -> Path:
    """One file per position; InstanceNumbers deliberately scrambled (they must not be trusted)."""
    folder.mkdir(parents=True)
    uid = generate_uid()
    numbers = list(range(1, len(positions) + 1))
    if shuffle_numbers:
        numbers = numbers[::-1]
    for i, (z, n) in enumerate(zip(positions, numbers)):
        pixels = ct_array(seed=i)
        pixels[0, 0] = -1000 + 10 * i  # marks the slice so the order can be checked
        dicom_slice(folder / f"f{i:02d}.dcm", z, pixels, uid, n, **kw)
    return folder


def tree_digest(path: Path) -> dict[str, str]:
    files = [path] if path.is_file() else sorted(p for p in path.rglob("*") if p.is_file())
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in files}


def run_cli_expect_error(capsys, args: list[str], must_contain: str) -> str:
    with pytest.raises(SystemExit) as exc:
        cli.main(args)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: "), err
    assert must_contain in err, err
    return err


# ----------------------------------------------------------------------------- reading good inputs


def test_nifti_volume_slice_and_2d_slice_read_with_their_geometry(tmp_path):
    vol = write_nifti(tmp_path / "vol.nii.gz", ct_array((5, 16, 16)), (0.7, 0.8, 2.5), (1.0, 2.0, 3.0))
    one = write_nifti(tmp_path / "one.nii.gz", ct_array((1, 16, 16)), (0.7, 0.8, 5.0))
    flat = write_nifti(tmp_path / "flat.nii.gz", ct_array((16, 16)), (0.6, 0.9))
    cases = discover_inputs(tmp_path)
    assert [c.name for c in cases] == ["flat", "one", "vol"]
    ct = {c.name: read_case(c) for c in cases}
    assert ct["vol"].array.shape == (5, 16, 16) and ct["vol"].spacing_zyx == pytest.approx((2.5, 0.8, 0.7))
    assert not ct["vol"].is_slice
    assert ct["one"].is_slice and ct["one"].array.shape == (1, 16, 16)
    assert ct["flat"].is_slice and ct["flat"].image.GetDimension() == 2
    assert ct["flat"].spacing_zyx == pytest.approx((1.0, 0.9, 0.6))
    np.testing.assert_array_equal(ct["flat"].array[0], ct_array((16, 16)))
    assert discover_inputs(vol)[0].name == "vol" and discover_inputs(one)[0].path == one
    assert discover_inputs(flat)[0].is_dicom is False


def test_dicom_series_is_ordered_by_position_not_instance_number_and_rescaled(tmp_path):
    # files written in scrambled position order, InstanceNumbers reversed
    folder = dicom_series(tmp_path / "series", [4.0, 0.0, 8.0, 2.0, 6.0])
    ordered = order_dicom_series(folder)
    assert [p.name for p in ordered] == ["f01.dcm", "f03.dcm", "f00.dcm", "f04.dcm", "f02.dcm"]
    (case,) = discover_inputs(folder)
    assert case.is_dicom and case.name == "series"
    ct = read_case(case)
    assert ct.array.shape == (5, 16, 16)
    # the marker pixel of each slice, in position order: RescaleIntercept applied (HU, not stored values)
    assert ct.array[:, 0, 0].tolist() == [-990.0, -970.0, -1000.0, -960.0, -980.0]
    assert ct.spacing_zyx == pytest.approx((2.0, 0.8, 0.7))
    assert ct.image.GetOrigin() == pytest.approx((-20.0, -30.0, 0.0))


def test_folder_of_inputs_mixes_files_and_series_folders(tmp_path):
    root = tmp_path / "in"
    root.mkdir()
    write_nifti(root / "a.nii.gz", ct_array((2, 16, 16)))
    dicom_series(root / "b", [0.0, 1.0, 2.0])
    (root / ".DS_Store").write_bytes(b"x")
    cases = discover_inputs(root)
    assert [(c.name, c.is_dicom) for c in cases] == [("a", False), ("b", True)]


# ----------------------------------------------------------------------------- bad inputs


@pytest.mark.parametrize("positions,problem", [
    ([0.0, 2.0, 4.0, 8.0, 10.0], "missing slice(s): gap of 4.000 mm"),
    ([0.0, 2.0, 2.0, 4.0], "duplicated slice position 2.000 mm"),
    ([0.0, 2.0, 4.0, 6.5, 8.5], "non-uniform slice spacing: 2.500 mm"),
])
def test_bad_dicom_series_are_refused(tmp_path, positions, problem):
    folder = dicom_series(tmp_path / "s", positions)
    with pytest.raises(InputError, match=problem.replace("(", r"\(").replace(")", r"\)")):
        order_dicom_series(folder)


def test_dicom_series_with_inconsistent_orientation_is_refused(tmp_path):
    folder = dicom_series(tmp_path / "s", [0.0, 2.0, 4.0])
    dicom_slice(folder / "f01.dcm", 2.0, ct_array(), str(pydicom.dcmread(folder / "f00.dcm").SeriesInstanceUID), 2,
                orientation=(1, 0, 0, 0, 0.8, 0.6))
    with pytest.raises(InputError, match="inconsistent orientation"):
        order_dicom_series(folder)


def test_two_series_in_one_folder_are_refused(tmp_path):
    folder = dicom_series(tmp_path / "s", [0.0, 2.0])
    dicom_slice(folder / "other.dcm", 4.0, ct_array(), generate_uid(), 1)
    with pytest.raises(InputError, match="holds 2 DICOM series"):
        order_dicom_series(folder)


def bad_inputs(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    """name -> (input path, expected message fragment)."""
    out: dict[str, tuple[Path, str]] = {}
    p = tmp_path / "garbage.nii.gz"
    p.write_bytes(b"this is not an image")
    out["unreadable"] = (p, "cannot be read as an image")
    out["raw values, no air"] = (write_nifti(tmp_path / "raw.nii.gz", (ct_array((16, 16)) + 1024).astype(np.int16)),
                                 "no air in the image")
    out["beyond HU"] = (write_nifti(tmp_path / "big.nii.gz", np.full((16, 16), 30000, np.int16)),
                        "outside the CT range")
    rgb = sitk.Compose(*[sitk.GetImageFromArray(ct_array((16, 16)))] * 3)
    sitk.WriteImage(rgb, str(tmp_path / "rgb.nii.gz"))
    out["rgb"] = (tmp_path / "rgb.nii.gz", "3 components per pixel")
    four = sitk.JoinSeries([sitk.GetImageFromArray(ct_array((2, 16, 16)))] * 2)
    sitk.WriteImage(four, str(tmp_path / "four.nii.gz"))
    out["4-D"] = (tmp_path / "four.nii.gz", "4-D image")
    (tmp_path / "empty").mkdir()
    out["empty folder"] = (tmp_path / "empty", "input folder is empty")
    out["missing"] = (tmp_path / "nope.nii.gz", "input not found")
    out["gap"] = (dicom_series(tmp_path / "gap", [0.0, 2.0, 6.0, 8.0]), "missing slice(s)")
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    write_nifti(mixed / "ok.nii.gz", ct_array((16, 16)))
    (mixed / "notes.txt").write_text("x")
    out["stray file"] = (mixed, "neither a NIfTI/MHA/NRRD image nor a DICOM series folder")
    same = tmp_path / "same"
    same.mkdir()
    write_nifti(same / "a.nii.gz", ct_array((16, 16)))
    write_nifti(same / "a.nii", ct_array((16, 16)))
    out["name clash"] = (same, "both would write the output folder 'a'")
    bad_in_folder = tmp_path / "folder_with_bad"
    bad_in_folder.mkdir()
    write_nifti(bad_in_folder / "good.nii.gz", ct_array((16, 16)))
    write_nifti(bad_in_folder / "zraw.nii.gz", (ct_array((16, 16)) + 1024).astype(np.int16))
    out["one bad file in a folder"] = (bad_in_folder, "zraw.nii.gz: no air")
    return out


def test_every_bad_input_is_one_line_exit_2_nothing_written_input_untouched(tmp_path, capsys):
    for name, (path, problem) in bad_inputs(tmp_path).items():
        before = tree_digest(path) if path.exists() else None
        out = tmp_path / f"out_{name.replace(' ', '_')}"
        run_cli_expect_error(capsys, ["-i", str(path), "-o", str(out), "--quiet"], problem)
        assert not out.exists(), name
        assert not list(tmp_path.glob(f".{out.name}*")), name  # no temporary left behind
        if before is not None:
            assert tree_digest(path) == before, name


# ----------------------------------------------------------------------------- output folder and models


def test_output_folder_we_did_not_write_is_refused(tmp_path, capsys):
    image = write_nifti(tmp_path / "ct.nii.gz", ct_array((16, 16)))
    out = tmp_path / "out"
    out.mkdir()
    (out / "precious.txt").write_text("keep me")
    run_cli_expect_error(capsys, ["-i", str(image), "-o", str(out)], "holds files this command did not write")
    assert (out / "precious.txt").read_text() == "keep me"
    run_cli_expect_error(capsys, ["-i", str(tmp_path), "-o", str(tmp_path / "sub")], "overlaps the input")


def test_bad_predictor_settings_are_one_line_errors(tmp_path, capsys):
    image = write_nifti(tmp_path / "ct.nii.gz", ct_array((16, 16)))
    out = tmp_path / "out"
    run_cli_expect_error(capsys, ["-i", str(image), "-o", str(out), "--step-size", "1.5"], "--step-size 1.5")
    run_cli_expect_error(capsys, ["-i", str(image), "-o", str(out), "--step-size", "0"], "must be in (0, 1]")
    run_cli_expect_error(capsys, ["-i", str(image), "-o", str(out), "--threads", "0"], "--threads 0")
    assert not out.exists()


def test_existing_output_with_our_marker_gets_past_the_output_check(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / cli.MARKER).write_text("ours")
    (out / "lesions.json").write_text("{}")
    cli.check_output_folder(out, tmp_path / "ct.nii.gz")  # no error
    cli.check_output_folder(tmp_path / "new", tmp_path / "ct.nii.gz")


def fake_model_folder(root: Path, with_checkpoint: bytes | None = None) -> Path:
    folder = root / "Dataset501_LiTSLiver" / "nnUNetTrainer__nnUNetPlans__2d"
    folder.mkdir(parents=True)
    (folder / "plans.json").write_text(json.dumps({"configurations": {}}))
    (folder / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "liver": 1}}))
    if with_checkpoint is not None:
        (folder / "fold_0").mkdir()
        (folder / "fold_0" / "checkpoint_final.pth").write_bytes(with_checkpoint)
    return folder


class _RunsCode:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_missing_model_folder_untrained_model_and_hostile_checkpoint_are_refused(tmp_path, capsys, monkeypatch):
    image = write_nifti(tmp_path / "ct.nii.gz", ct_array((16, 16)))
    monkeypatch.delenv("nnUNet_results", raising=False)
    out = tmp_path / "out"
    run_cli_expect_error(capsys, ["-i", str(image), "-o", str(out)], "nnUNet_results is not set")
    monkeypatch.setenv("nnUNet_results", str(tmp_path / "results"))
    run_cli_expect_error(capsys, ["-i", str(image), "-o", str(out)], "no trained liver model: folder not found")
    some_lesion_model = ["--lesion-model", str(tmp_path)]  # resolved, loaded only after the liver model
    run_cli_expect_error(capsys, ["-i", str(image), "-o", str(out), "--liver-model", str(tmp_path / "none"),
                                  *some_lesion_model], "model folder not found")
    untrained = fake_model_folder(tmp_path / "results")
    run_cli_expect_error(capsys, ["-i", str(image), "-o", str(out), *some_lesion_model],
                         "no checkpoint_final.pth in fold_0..fold_4")
    run_cli_expect_error(capsys, ["-i", str(image), "-o", str(out), "--folds", "3", *some_lesion_model],
                         "fold_3/checkpoint_final.pth: checkpoint not found")
    import torch

    hostile_dir = tmp_path / "hostile"
    hostile_dir.mkdir()
    torch.save({"network_weights": {}, "x": _RunsCode()}, hostile_dir / "c.pth", pickle_protocol=2)
    hostile = fake_model_folder(tmp_path / "h", (hostile_dir / "c.pth").read_bytes())
    run_cli_expect_error(capsys, ["-i", str(image), "-o", str(out), "--liver-model", str(hostile),
                                  *some_lesion_model],
                         "refused: the file would run code on load")
    assert not out.exists()
    assert untrained.is_dir()


def test_default_model_choice_prefers_plain_nnunet_and_lists_ambiguous_joint_models(tmp_path, monkeypatch):
    monkeypatch.setenv("nnUNet_results", str(tmp_path))
    liver = tmp_path / "Dataset501_LiTSLiver"
    for name in ("nnUNetTrainer_1epoch", "nnUNetTrainer"):
        (liver / f"{name}__nnUNetPlans__2d").mkdir(parents=True)
    assert models.liver_model_folder(None).name == "nnUNetTrainer__nnUNetPlans__2d"
    joint = tmp_path / "Dataset504_ShebaJoint"
    (joint / "nnUNetTrainerJoint_ImageNet__nnUNetPlans__2d").mkdir(parents=True)
    assert models.lesion_model_folder(None).name == "nnUNetTrainerJoint_ImageNet__nnUNetPlans__2d"
    (joint / "nnUNetTrainerJoint_LiTS_HierFreeze__nnUNetPlans__2d").mkdir()
    with pytest.raises(InputError, match="several lesion models"):
        models.lesion_model_folder(None)
    (joint / "nnUNetTrainerJoint_LiTS__nnUNetPlans__2d").mkdir()
    assert models.lesion_model_folder(None).name == "nnUNetTrainerJoint_LiTS__nnUNetPlans__2d"
    assert models.lesion_model_folder(tmp_path / "given") == tmp_path / "given"


def test_fold_detection_prefers_numbered_folds_then_all(tmp_path):
    folder = tmp_path / "m"
    for fold in ("all", "2", "0"):
        (folder / f"fold_{fold}").mkdir(parents=True)
        (folder / f"fold_{fold}" / "checkpoint_final.pth").write_bytes(b"")
    (folder / "fold_1").mkdir()  # no final checkpoint: not used
    assert models.available_folds(folder) == [0, 2]
    for fold in ("0", "2"):
        (folder / f"fold_{fold}" / "checkpoint_final.pth").unlink()
    assert models.available_folds(folder) == ["all"]
    assert models.parse_folds(["0", "all"]) == [0, "all"]
    with pytest.raises(InputError, match="not a fold number"):
        models.parse_folds(["x"])
