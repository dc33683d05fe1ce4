"""nnunet_joint_predict's inputs, output folder and model checks: every bad input is one line, exit 2,
nothing written, input untouched. Tiny images and DICOM series are made in the test."""

from __future__ import annotations

import hashlib
import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from pydicom.dataset import FileDataset, FileMetaDataset
from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian, generate_uid

from fake_models import write_model_folder
from nnunet_joint import io as nj_io
from nnunet_joint.errors import InputError, plain_numbers
from nnunet_joint.inference import cli, models, output_folder
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
    with pytest.raises(InputError) as e:
        order_dicom_series(folder)
    assert e.value.problem == ("inconsistent orientation in the series: ImageOrientationPatient (1.0, 0.0, 0.0, 0.0, "
                               "0.8, 0.6) differs from f00.dcm's (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)")  # plain numbers


class _Header:
    """Getters as SimpleITK's, answering numpy 2 scalars (what a computed geometry holds)."""

    def __init__(self, size, spacing, origin, direction):
        self.values = {"Size": size, "Spacing": spacing, "Origin": origin, "Direction": direction}

    def __getattr__(self, name):
        return lambda: self.values[name[3:]]


def test_messages_print_numpy_2_scalars_as_plain_numbers():
    """numpy 2 prints ``np.float64(8.65271)`` in a tuple; the converters' and predict's messages print 8.65271."""
    if int(np.__version__.split(".")[0]) >= 2:  # the repr this guards against
        assert repr((np.float64(8.65271),)) == "(np.float64(8.65271),)"
    assert plain_numbers((np.float64(8.652712), np.float32(0.5), np.int64(3), np.uint16(512))) == "(8.65271, 0.5, 3, 512)"
    assert plain_numbers(np.array([[1.0, -24.0], [0.1, 2e-7]])) == "((1.0, -24.0), (0.1, 0.0))"
    assert plain_numbers(np.float64(-0.70312)) == "-0.70312" and plain_numbers(np.array(4)) == "4"
    assert plain_numbers([np.float64("nan"), np.float64("inf")]) == "(nan, inf)"
    # the geometry message of both converters and of the evaluation, from numpy-scalar headers
    image = _Header((np.int64(64), np.int64(64)), (np.float64(4.326355), np.float64(4.326355)),
                    (np.float64(-24.0), np.float64(-24.0)), tuple(np.eye(2).ravel()))
    mask = _Header((np.int64(64), np.int64(64)), (np.float64(8.65271), np.float64(8.65271)),
                   (np.float64(-24.0), np.float64(-24.0)), tuple(np.eye(2).ravel()))
    assert nj_io.same_geometry(image, mask) == "spacing (8.65271, 8.65271) differs from the image's (4.32636, 4.32636)"
    smaller = _Header((np.int64(60), np.int64(64)), *list(mask.values.values())[1:])
    assert nj_io.same_geometry(image, smaller) == "size (60, 64) differs from the image's (64, 64)"


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
    # corrupt data SimpleITK would accept silently
    whole = write_nifti(tmp_path / "cut.nii.gz", ct_array((4, 16, 16))).read_bytes()
    (tmp_path / "cut.nii.gz").write_bytes(whole[: len(whole) // 2])
    out["truncated gz"] = (tmp_path / "cut.nii.gz", "cut.nii.gz: compressed data is truncated or corrupt")
    plain = write_nifti(tmp_path / "short.nii", ct_array((4, 16, 16))).read_bytes()
    (tmp_path / "short.nii").write_bytes(plain[:-100])
    out["truncated nii"] = (tmp_path / "short.nii", "short.nii: file is truncated")
    nan = ct_array((2, 16, 16)).astype(np.float32)
    nan[1, 8, 8] = np.nan
    out["NaN voxel"] = (write_nifti(tmp_path / "nan.nii.gz", nan), "1 voxel(s) are NaN or infinite")
    zero = bytearray(write_nifti(tmp_path / "pix0.nii", ct_array((2, 16, 16))).read_bytes())
    struct.pack_into("<f", zero, 80, 0.0)  # pixdim[1]
    (tmp_path / "pix0.nii").write_bytes(bytes(zero))
    out["pixdim 0"] = (tmp_path / "pix0.nii", "voxel size of 0 mm along x")
    out["1 x 1 image"] = (write_nifti(tmp_path / "dot.nii.gz", np.full((1, 1), -1000, np.int16)),
                          "1 x 1 pixels is not a CT slice")
    out["thin strip"] = (write_nifti(tmp_path / "strip.nii.gz", ct_array((3, 16, 16))[:, :, :6]),
                         "6 x 16 x 3 pixels is not a CT slice")
    # resource bombs: sizes from the header, nothing allocated
    bomb = bytearray(plain[:352])
    struct.pack_into("<8h", bomb, 40, 3, 32767, 32767, 2, 1, 1, 1, 1)
    (tmp_path / "bomb.nii").write_bytes(bytes(bomb))
    out["header bomb"] = (tmp_path / "bomb.nii", "32767 x 32767 x 2 voxels")
    series = dicom_series(tmp_path / "dicom_bomb", [0.0, 2.0])
    for f in series.iterdir():
        ds = pydicom.dcmread(f)
        ds.Rows = ds.Columns = 32767  # the pixel data stays 16 x 16: nothing may be read before the check
        ds.save_as(f)
    out["DICOM header bomb"] = (series, "image of 32767 x 32767 x 2 voxels")
    return out


def test_every_bad_input_is_one_line_exit_2_nothing_written_input_untouched(tmp_path, capsys):
    for name, (path, problem) in bad_inputs(tmp_path).items():
        before = tree_digest(path) if path.exists() else None
        out = tmp_path / f"out_{name.replace(' ', '_')}"
        err = run_cli_expect_error(capsys, ["-i", str(path), "-o", str(out), "--quiet"], problem)
        assert ".cxx" not in err and "sitk::" not in err and "ITK ERROR" not in err, name
        assert not out.exists(), name
        assert not list(tmp_path.glob(f".{out.name}*")), name  # no temporary left behind
        if before is not None:
            assert tree_digest(path) == before, name


def test_image_size_limit_is_a_setting(tmp_path, capsys, monkeypatch):
    image = write_nifti(tmp_path / "ct.nii.gz", ct_array((4, 16, 16)))
    monkeypatch.setenv("nnUNet_joint_max_voxels", "1000")
    run_cli_expect_error(capsys, ["-i", str(image), "-o", str(tmp_path / "out")],
                         "image of 16 x 16 x 4 voxels (1,024 values) exceeds the limit of 1,000 (set "
                         "nnUNet_joint_max_voxels to raise it)")
    monkeypatch.setenv("nnUNet_joint_max_voxels", "1024")
    assert read_case(discover_inputs(image)[0]).array.shape == (4, 16, 16)


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
    for gap in ("-1", "nan", "inf"):
        run_cli_expect_error(capsys, ["-i", str(image), "-o", str(out), "--liver-slice-gap", gap],
                             f"--liver-slice-gap {float(gap)}")
    assert not out.exists()


def our_output(out: Path, input_path: Path) -> Path:
    """An output folder as predict leaves it: two cases with their files, then the marker listing them."""
    for case in ("a", "b"):
        (out / case / "overlays").mkdir(parents=True)
        (out / case / "lesions.json").write_text('{"lesions": []}')
        (out / case / "liver.nii.gz").write_bytes(b"\x1f\x8b labels")
        (out / case / "overlays" / "slice_000.png").write_bytes(b"\x89PNG")
    output_folder.write_marker(out, input_path)
    return out


def test_existing_output_with_only_our_files_gets_past_the_output_check(tmp_path):
    out = our_output(tmp_path / "out", tmp_path / "ct.nii.gz")
    cli.check_output_folder(out, tmp_path / "ct.nii.gz")  # no error
    cli.check_output_folder(tmp_path / "new", tmp_path / "ct.nii.gz")
    (tmp_path / "empty").mkdir()
    cli.check_output_folder(tmp_path / "empty", tmp_path / "ct.nii.gz")


def _add_notes(out: Path) -> str:
    (out / "my_notes.txt").write_text("keep me")
    return "my_notes.txt"


def _add_folder(out: Path) -> str:
    (out / "mine").mkdir()
    return "mine/"


def _add_file_in_case_folder(out: Path) -> str:
    (out / "a" / "overlays" / "annotated.png").write_bytes(b"mine")
    return "a/overlays/annotated.png"


def _edit_our_file(out: Path) -> str:
    (out / "b" / "lesions.json").write_text('{"lesions": [], "reviewed": true}')
    return "b/lesions.json (changed since it was written)"


def _add_symlink(out: Path) -> str:
    (out / "link").symlink_to(out.parent)
    return "link"


def _old_text_marker(out: Path) -> str:
    (out / cli.MARKER).write_text("written by nnunet_joint_predict from /somewhere\n")
    return "marker lists no outputs"


@pytest.mark.parametrize("spoil", [_add_notes, _add_folder, _add_file_in_case_folder, _edit_our_file, _add_symlink,
                                   _old_text_marker])
def test_our_output_folder_holding_anything_else_is_refused_and_nothing_deleted(tmp_path, capsys, spoil):
    image = write_nifti(tmp_path / "ct.nii.gz", ct_array((16, 16)))
    out = our_output(tmp_path / "out", image)
    problem = spoil(out)
    before = tree_digest(out)
    run_cli_expect_error(capsys, ["-i", str(image), "-o", str(out)], problem)
    assert tree_digest(out) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ct.nii.gz", "out"]


def test_files_added_while_predict_runs_stop_the_replacement(tmp_path, monkeypatch):
    """The check runs again just before the old folder is replaced: nothing added meanwhile is lost."""
    image = write_nifti(tmp_path / "ct.nii.gz", ct_array((16, 16)))
    out = our_output(tmp_path / "out", image)
    fake_models(monkeypatch, liver=lambda a: np.zeros(a.shape, np.uint8))

    def stage1_and_user(case, ct, target, *args):
        (out / "added_meanwhile.txt").write_text("mine")
        target.mkdir(parents=True, exist_ok=True)
        return [], 1

    monkeypatch.setattr(cli, "_predict_case", stage1_and_user)
    with pytest.raises(InputError, match="added_meanwhile.txt"):
        cli.predict(image, out, quiet=True)
    assert (out / "added_meanwhile.txt").read_text() == "mine" and (out / "a" / "lesions.json").is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ct.nii.gz", "out"]


def test_a_killed_predict_leaves_a_temporary_the_next_run_removes(tmp_path, capsys, monkeypatch):
    image = write_nifti(tmp_path / "ct.nii.gz", ct_array((16, 16)))
    out = tmp_path / "out"
    code = ("import sys, time; from pathlib import Path; from nnunet_joint.io import atomic_path\n"
            "with atomic_path(Path(sys.argv[1])) as tmp:\n"
            "    (tmp / 'case').mkdir(parents=True); (tmp / 'case' / 'liver.nii.gz').write_bytes(b'half')\n"
            "    print('ready', flush=True); time.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", code, str(out)], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert proc.stdout.readline().strip() == "ready"
    proc.kill()  # kill -9, as a user or the OOM killer would
    proc.wait()
    (stale,) = list(tmp_path.glob(".out.partial-*"))
    live = tmp_path / f".out.partial-{nj_io._HOST}.{os.getpid()}.live01"  # a run still going: kept
    live.mkdir()
    monkeypatch.delenv("nnUNet_results", raising=False)
    run_cli_expect_error(capsys, ["-i", str(image), "-o", str(out)], "nnUNet_results is not set")
    assert not stale.exists() and live.is_dir()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["ct.nii.gz", live.name])


# ----------------------------------------------------------------------------- no plausible liver


class FakeModel:
    """Stands in for a loaded nnU-Net model: ``predict`` applies ``segment`` to the array."""

    def __init__(self, segment, labels: dict[str, int], margin: float = 10.0):
        self.segment = segment
        self.labels = labels
        self.calls = 0
        self.crop_margin_mm = margin
        self.folds = [0]

    is_joint = property(lambda self: "cyst" in self.labels)
    is_ynet = property(lambda self: False)
    slab_axis = None  # the whole image in one call, as a 3-D model

    def describe(self) -> dict:
        return {"folder": "fake", "trainer": "Fake", "folds": self.folds}

    def channel(self, name: str) -> int:
        return sorted(self.labels.values()).index(self.labels[name])

    def predict(self, array, spacing, probabilities=True, timer=None):
        self.calls += 1
        seg = self.segment(array).astype(np.uint8)
        probs = np.stack([(seg == v).astype(np.float32) for v in sorted(self.labels.values())])
        return models.Prediction(seg, probs)


JOINT_LABELS = {"background": 0, "liver": 1, "cyst": 2, "hemangioma": 3, "metastasis": 4}


def fake_models(monkeypatch, liver, lesion=None) -> tuple[FakeModel, FakeModel]:
    """Make predict load two fake models (stage 2 finds one cyst where stage 1 said liver, by default)."""
    liver_model = FakeModel(liver, {"background": 0, "liver": 1})
    lesion_model = FakeModel(lesion or (lambda a: np.where(a > 0, 2, 0)), JOINT_LABELS)
    monkeypatch.setattr(models, "liver_model_folder", lambda given: Path("liver_model"))
    monkeypatch.setattr(models, "lesion_model_folder", lambda given: Path("lesion_model"))
    monkeypatch.setattr(models, "load_model", lambda folder, *a, **k: liver_model if folder.name == "liver_model"
                        else lesion_model)
    return liver_model, lesion_model


def air_scan(shape=(3, 64, 64)) -> np.ndarray:
    return (-1000 + np.random.default_rng(1).integers(-20, 20, shape)).astype(np.int16)


def blob(shape, centre=(32, 32), radius=15) -> np.ndarray:
    rr, cc = np.mgrid[:shape[-2], :shape[-1]]
    disc = (rr - centre[0]) ** 2 + (cc - centre[1]) ** 2 <= radius ** 2
    return np.broadcast_to(disc, shape)


def test_scan_without_liver_reports_no_liver_and_writes_no_lesions(tmp_path, capsys, monkeypatch):
    """All air: stage 1 still labels a 709-pixel disc per slice; the cascade says no liver, stage 2 never runs."""
    image = write_nifti(tmp_path / "air.nii.gz", air_scan(), spacing=(0.8, 0.8, 5.0))
    liver_model, lesion_model = fake_models(monkeypatch, liver=lambda a: blob(a.shape))
    out = tmp_path / "out"
    assert cli.main(["-i", str(image), "-o", str(out), "--quiet", "--no-overlays"]) == 0
    assert liver_model.calls == 1 and lesion_model.calls == 0
    report = json.loads((out / "lesions.json").read_text())
    assert report["liver_found"] is False and report["lesions"] == [] and report["crop"] is None
    assert report["no_liver_reason"].startswith("no plausible liver: stage 1's liver (2127 voxels) has median -1001 "
                                                "HU (a liver has -70..300 HU) and largest cross-section 454 mm²")
    for name in ("liver.nii.gz", "lesions.nii.gz"):
        assert not sitk.GetArrayFromImage(sitk.ReadImage(str(out / name))).any()
    err = capsys.readouterr().err
    assert err == f"warning: {image}: {report['no_liver_reason']}; no lesions written (lesions.json says so)\n"


@pytest.mark.parametrize("hu,radius,spacing,plausible,problem", [
    (-1000, 15, 0.8, False, "median -1000 HU"),  # air
    (-100, 15, 0.8, False, "median -100 HU"),  # fat
    (700, 15, 0.8, False, "median 700 HU"),  # bone
    (100, 5, 0.8, False, "largest cross-section 52 mm²"),  # a speck of liver HU: 81 pixels
    (100, 15, 0.8, False, "largest cross-section 454 mm²"),  # 709 pixels at 0.8 mm: under 5 cm²
    (100, 15, 1.0, True, None),  # the same pixels at 1 mm: 709 mm²
    (100, 20, 0.8, True, None),  # portal-venous liver, 8 cm²
    (-40, 20, 0.8, True, None),  # severe steatosis
    (250, 20, 0.8, True, None),
])
def test_liver_plausibility_criteria(hu, radius, spacing, plausible, problem):
    from nnunet_joint.inference.liver_check import implausible_liver

    shape = (2, 64, 64)
    liver = blob(shape, radius=radius).copy()
    array = np.where(liver, hu, -1000).astype(np.float32)
    reason = implausible_liver(liver, array, (5.0, spacing, spacing))
    if plausible:
        assert reason is None
    else:
        assert reason is not None and problem in reason


def test_plausible_liver_runs_stage_two(tmp_path, monkeypatch):
    scan = air_scan()
    scan[:, 10:54, 10:54] = 40  # body
    liver = blob(scan.shape, radius=18)
    scan[liver] = 110
    scan[:, 30:34, 30:34] = 15  # a cyst
    image = write_nifti(tmp_path / "ct.nii.gz", scan, spacing=(0.8, 0.8, 5.0))
    liver_model, lesion_model = fake_models(monkeypatch, liver=lambda a: blob(a.shape, radius=18),
                                            lesion=lambda a: np.where((a > 0) & (a < 30), 2, (a > 60).astype(int)))
    results = cli.predict(image, tmp_path / "out", quiet=True, overlays=False)
    assert lesion_model.calls == 1
    report = json.loads((tmp_path / "out" / "lesions.json").read_text())
    assert report["liver_found"] is True and report["no_liver_reason"] is None
    assert [e["type"] for e in results["ct"]] == ["cyst"] and results["ct"][0]["voxels"] == 3 * 16


def test_overlays_are_written_only_when_asked_for(tmp_path, monkeypatch):
    """Default: label maps and lesions.json, no PNG; ``--overlays``: one PNG per slice holding a lesion
    (the cyst lies on each of the scan's 3 slices); ``--no-overlays`` is still accepted. The label maps
    are the same either way."""
    scan = air_scan()
    scan[:, 10:54, 10:54] = 40
    liver = blob(scan.shape, radius=18)
    scan[liver] = 110
    scan[:, 30:34, 30:34] = 15
    image = write_nifti(tmp_path / "ct.nii.gz", scan, spacing=(0.8, 0.8, 5.0))
    fake_models(monkeypatch, liver=lambda a: blob(a.shape, radius=18),
                lesion=lambda a: np.where((a > 0) & (a < 30), 2, (a > 60).astype(int)))
    maps = []
    for flags, pngs in (([], []), (["--no-overlays"], []),
                        (["--overlays"], [f"overlays/slice_{z:04d}.png" for z in range(3)])):
        out = tmp_path / f"out{len(flags)}{flags[0] if flags else ''}"
        assert cli.main(["-i", str(image), "-o", str(out), "--quiet", *flags]) == 0
        report = json.loads((out / "lesions.json").read_text())
        assert len(report["lesions"]) == 1 and report["overlays"] == pngs
        assert sorted(str(p.relative_to(out)) for p in out.rglob("*.png")) == pngs
        for png in pngs:
            assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        maps.append([sitk.GetArrayFromImage(sitk.ReadImage(str(out / name))) for name in ("liver.nii.gz",
                                                                                          "lesions.nii.gz")])
    assert int((maps[0][1] == 2).sum()) == 3 * 16  # the 4 x 4 cyst on 3 slices
    for liver_map, lesion_map in maps[1:]:
        assert np.array_equal(liver_map, maps[0][0]) and np.array_equal(lesion_map, maps[0][1])


def fake_model_folder(root: Path, with_checkpoint: bytes | None = None) -> Path:
    return write_model_folder(root, checkpoint=with_checkpoint)


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


def test_the_console_scripts_error_line_comes_first_on_a_hostile_checkpoint(tmp_path):
    """The installed ``nnunet_joint_predict`` in a fresh process: torch warns about the pickle protocol of a
    plain pickle while refusing it; nothing may come before our one ``error:`` line, and nothing runs."""
    import pickle

    image = write_nifti(tmp_path / "ct.nii.gz", ct_array((16, 16)))
    marker = tmp_path / "pwned"

    class _CreatesMarker:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    hostile = fake_model_folder(tmp_path / "h", pickle.dumps({"network_weights": {}, "x": _CreatesMarker()},
                                                              protocol=4))
    env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}  # what a user's shell has
    script = Path(sys.executable).with_name("nnunet_joint_predict")
    result = subprocess.run([str(script), "-i", str(image), "-o", str(tmp_path / "out"), "--liver-model",
                             str(hostile), "--lesion-model", str(tmp_path)], capture_output=True, text=True, env=env,
                            timeout=300)
    assert result.returncode == 2
    (line,) = result.stderr.splitlines()
    assert line.startswith(f"error: {hostile / 'fold_0' / 'checkpoint_final.pth'}: refused: the file would run code "
                           "on load ("), result.stderr
    assert not marker.exists() and not (tmp_path / "out").exists()


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


def test_a_full_disk_while_writing_outputs_is_one_line_and_leaves_nothing(tmp_path, capsys, monkeypatch):
    scan = air_scan()
    scan[:, 10:54, 10:54] = 40
    scan[blob(scan.shape, radius=18)] = 110
    image = write_nifti(tmp_path / "ct.nii.gz", scan, spacing=(0.8, 0.8, 5.0))
    fake_models(monkeypatch, liver=lambda a: blob(a.shape, radius=18))

    def itk_disk_full(*args, **kwargs):
        raise RuntimeError("Exception thrown in SimpleITK ImageFileWriter_Execute: /tmp/SimpleITK-build/ITK/Modules/"
                           "IO/NIFTI/src/itkNiftiImageIO.cxx:2386:\nITK ERROR: NiftiImageIO(0x55d0): ERROR: nifti "
                           "library failed to write image")

    monkeypatch.setattr(nj_io.sitk, "WriteImage", itk_disk_full)
    monkeypatch.setattr(nj_io.shutil, "disk_usage", lambda p: nj_io.shutil._ntuple_diskusage(10**9, 10**9, 0))
    err = run_cli_expect_error(capsys, ["-i", str(image), "-o", str(tmp_path / "out"), "--quiet"],
                               "liver.nii.gz: cannot be written: no space left on device")
    assert err == f"error: {tmp_path / 'out' / 'liver.nii.gz'}: cannot be written: no space left on device"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ct.nii.gz"]
