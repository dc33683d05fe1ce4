"""LiTS (release and MSD layouts) -> Dataset501 (whole volumes, liver) and Dataset502 (liver crops)."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_joint.dataset_conversion.convert_lits import convert_lits, find_pairs, main

SPACING = (0.8, 0.8, 2.5)  # x, y, z
ORIGIN = (-100.0, 50.0, -300.0)
SHAPE = (6, 32, 32)  # z, y, x


def volume_arrays(n: int) -> tuple[np.ndarray, np.ndarray]:
    """(HU volume, LiTS labels): air, body, a liver block z 2..3, y 10..19, x 8..21, a tumour, a stray liver voxel."""
    hu = np.full(SHAPE, -1000, dtype=np.int16)
    hu[:, 4:28, 4:28] = 40
    seg = np.zeros(SHAPE, dtype=np.uint8)
    seg[2:4, 10:20, 8:22] = 1
    seg[3, 12 + n : 15 + n, 10:13] = 2
    seg[5, 30, 30] = 1  # a separate speck: not the largest component, must not widen the crop
    hu[seg == 1] = 110
    hu[seg == 2] = 60 + n
    return hu, seg


def _write(array: np.ndarray, path: Path) -> None:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(SPACING)
    image.SetOrigin(ORIGIN)
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path), path.suffix == ".gz")


def make_release(root: Path, n_cases: int = 3) -> Path:
    for n in range(n_cases):
        ext = ".nii" if n == 0 else ".nii.gz"  # the LiTS release ships .nii; copies are often gzipped
        hu, seg = volume_arrays(n)
        _write(hu, root / f"volume-{n}{ext}")
        _write(seg, root / f"segmentation-{n}{ext}")
    return root


def make_msd(root: Path, n_cases: int = 3) -> Path:
    for n in range(n_cases):
        hu, seg = volume_arrays(n)
        _write(hu, root / "imagesTr" / f"liver_{n}.nii.gz")
        _write(seg, root / "labelsTr" / f"liver_{n}.nii.gz")
    (root / "imagesTr" / "._liver_0.nii.gz").write_bytes(b"\x00\x05\x16\x07 macOS resource fork")
    (root / "imagesTs").mkdir()
    return root


def tree_digest(root: Path) -> dict[str, str]:
    return {str(p): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def _array(path: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def test_release_layout_outputs(tmp_path):
    out = tmp_path / "raw"
    result = convert_lits(make_release(tmp_path / "lits"), raw_root=out, margin_mm=2.0)
    assert result["layout"] == "lits-release"
    assert result["cases"] == ["lits_000", "lits_001", "lits_002"]
    liver_dir, lesion_dir = out / "Dataset501_LiTSLiver", out / "Dataset502_LiTSLesion"
    assert sorted(p.name for p in (liver_dir / "labelsTr").iterdir()) == [f"lits_00{n}.nii.gz" for n in range(3)]
    assert sorted(p.name for p in (liver_dir / "imagesTr").iterdir()) == [f"lits_00{n}_0000.nii.gz" for n in range(3)]
    # one lesion-dataset case per axial slice holding liver: z 2, 3 (the block) and 5 (the speck)
    slice_cases = [f"lits_00{n}_z000{z}" for n in range(3) for z in (2, 3, 5)]
    assert sorted(p.name for p in (lesion_dir / "labelsTr").iterdir()) == [f"{c}.nii.gz" for c in slice_cases]
    assert sorted(p.name for p in (lesion_dir / "imagesTr").iterdir()) == [f"{c}_0000.nii.gz" for c in slice_cases]

    liver_json = json.loads((liver_dir / "dataset.json").read_text())
    lesion_json = json.loads((lesion_dir / "dataset.json").read_text())
    assert liver_json["labels"] == {"background": 0, "liver": 1}
    assert lesion_json["labels"] == {"background": 0, "liver": 1, "lesion": 2}
    assert liver_json["numTraining"] == 3 and lesion_json["numTraining"] == 9
    for d in (liver_json, lesion_json):
        assert d["channel_names"] == {"0": "CT"} and d["file_ending"] == ".nii.gz"
    assert lesion_json["source"]["margin_mm"] == 2.0
    assert lesion_json["volumes"]["lits_001_z0003"] == "lits_001"

    crops = json.loads((lesion_dir / "crops.json").read_text())["cases"]
    assert crops["lits_000_z0002"]["image"] == "volume-0.nii"
    # slice 2: liver y 10..19, x 8..21; margin 2 mm -> 3 pixels (0.8 mm) in-plane, no margin across slices
    assert crops["lits_001_z0002"]["crop"]["start"] == [2, 7, 5] and crops["lits_001_z0002"]["crop"]["stop"] == [3, 23, 25]
    # slice 5 holds only a speck: its own small box
    assert crops["lits_001_z0005"]["crop"]["start"] == [5, 27, 27] and crops["lits_001_z0005"]["crop"]["stop"] == [6, 32, 32]

    for n in range(3):
        hu, seg = volume_arrays(n)
        whole = sitk.ReadImage(str(liver_dir / "imagesTr" / f"lits_00{n}_0000.nii.gz"))
        np.testing.assert_array_equal(sitk.GetArrayFromImage(whole), hu)
        assert whole.GetOrigin() == ORIGIN
        liver_labels = _array(liver_dir / "labelsTr" / f"lits_00{n}.nii.gz")
        assert liver_labels.dtype == np.uint8
        np.testing.assert_array_equal(liver_labels, (seg > 0).astype(np.uint8))  # tumour merged into liver

        for z in (2, 3):
            crop = sitk.ReadImage(str(lesion_dir / "imagesTr" / f"lits_00{n}_z000{z}_0000.nii.gz"))
            np.testing.assert_array_equal(sitk.GetArrayFromImage(crop), hu[z:z + 1, 7:23, 5:25])
            np.testing.assert_allclose(crop.GetOrigin(), np.array(ORIGIN) + np.array([5, 7, z]) * np.array(SPACING))
            np.testing.assert_allclose(crop.GetSpacing(), (0.8, 0.8, 999.0))  # nnU-Net's 2-D out-of-plane spacing
            lesion_labels = _array(lesion_dir / "labelsTr" / f"lits_00{n}_z000{z}.nii.gz")
            np.testing.assert_array_equal(lesion_labels, seg[z:z + 1, 7:23, 5:25])
        assert set(np.unique(_array(lesion_dir / "labelsTr" / f"lits_00{n}_z0003.nii.gz"))) == {0, 1, 2}


def test_msd_layout_gives_the_same_datasets_and_max_cases(tmp_path):
    release = convert_lits(make_release(tmp_path / "lits"), raw_root=tmp_path / "a")
    msd = convert_lits(make_msd(tmp_path / "Task03_Liver"), raw_root=tmp_path / "b", max_cases=2)
    assert msd["layout"] == "msd"
    assert msd["cases"] == ["lits_000", "lits_001"]
    for case in msd["cases"]:
        for d, name in (("Dataset501_LiTSLiver/labelsTr", case), ("Dataset502_LiTSLesion/labelsTr", f"{case}_z0003")):
            np.testing.assert_array_equal(
                _array(tmp_path / "b" / d / f"{name}.nii.gz"), _array(tmp_path / "a" / d / f"{name}.nii.gz")
            )
    assert release["cases"] == ["lits_000", "lits_001", "lits_002"]


def test_find_pairs_sorts_numerically(tmp_path):
    root = tmp_path / "lits"
    for n in (10, 2):
        hu, seg = volume_arrays(0)
        _write(hu, root / f"volume-{n}.nii.gz")
        _write(seg, root / f"segmentation-{n}.nii.gz")
    layout, pairs = find_pairs(root)
    assert layout == "lits-release" and [p.case_id for p in pairs] == ["lits_002", "lits_010"]


# ----------------------------------------------------------------------------- bad input


def bad_label_values(root):
    hu, seg = volume_arrays(1)
    seg[0, 0, 0] = 3
    _write(seg, root / "segmentation-1.nii.gz")
    return "segmentation-1.nii.gz", "label values [3]"


def bad_geometry(root):
    _, seg = volume_arrays(2)
    image = sitk.GetImageFromArray(seg)
    image.SetSpacing((0.8, 0.8, 5.0))
    image.SetOrigin(ORIGIN)
    sitk.WriteImage(image, str(root / "segmentation-2.nii.gz"))
    return "segmentation-2.nii.gz", "spacing (0.8, 0.8, 5.0) differs from the image's (0.8, 0.8, 2.5)"  # plain numbers


def bad_size(root):
    _, seg = volume_arrays(2)
    _write(seg[:5], root / "segmentation-2.nii.gz")
    return "segmentation-2.nii.gz", "size"


def bad_no_liver(root):
    _write(np.zeros(SHAPE, dtype=np.uint8), root / "segmentation-1.nii.gz")
    return "segmentation-1.nii.gz", "no liver"


def bad_tumour_outside_liver(root):
    """The 9-voxel tumour stays in the liver block; a 5 x 5 tumour painted beside the block (y 22..26, x 22..26,
    where the block is y 10..19, x 8..21 and its slice's outline the block itself) puts 25 of 34 voxels outside."""
    _, seg = volume_arrays(1)
    seg[3, 22:27, 22:27] = 2
    _write(seg, root / "segmentation-1.nii.gz")
    return "segmentation-1.nii.gz", ("tumour label 2 is not mostly inside its liver: 73.5% of it (25 of 34 voxels) "
                                     "outside the outline of the liver label 1, more than 50%")


def bad_tumour_and_liver_labels_swapped(root):
    """Labels 1 and 2 exchanged: the "liver" is the 3 x 3 tumour, the "tumour" the rest of the liver (its block
    on slices 2 and 3 and the speck on slice 5, 2 x 140 - 9 + 1 = 272 voxels), all outside the 3 x 3 outline."""
    _, seg = volume_arrays(1)
    swapped = seg.copy()
    swapped[seg == 1], swapped[seg == 2] = 2, 1
    _write(swapped, root / "segmentation-1.nii.gz")
    return "segmentation-1.nii.gz", "tumour label 2 is not mostly inside its liver: 100.0% of it (272 of 272 voxels)"


def bad_not_hu(root):
    hu, _ = volume_arrays(2)
    _write((hu + 1024).astype(np.int16), root / "volume-2.nii.gz")
    return "volume-2.nii.gz", "no air"


def bad_unreadable(root):
    (root / "volume-1.nii.gz").write_bytes(b"garbage")
    return "volume-1.nii.gz", "cannot be read"


def bad_missing_segmentation(root):
    (root / "segmentation-2.nii.gz").unlink()
    return "volume-2.nii.gz", "has no segmentation"


def bad_missing_volume(root):
    (root / "volume-0.nii").unlink()
    return "segmentation-0.nii", "segmentation without a volume"


def bad_duplicate_case(root):
    hu, _ = volume_arrays(1)
    _write(hu, root / "volume-1.nii")
    return "volume-1.nii", "present twice"


def bad_2d_image(root):
    hu, seg = volume_arrays(1)
    _write(hu[0], root / "volume-1.nii.gz")
    _write(seg[0], root / "segmentation-1.nii.gz")
    return "volume-1.nii.gz", "2-D image"


def bad_empty_folder(root):
    for p in root.iterdir():
        p.unlink()
    return "lits", "no LiTS volumes found"


def bad_truncated_gz(root):
    data = (root / "volume-1.nii.gz").read_bytes()
    (root / "volume-1.nii.gz").write_bytes(data[: len(data) // 2])
    return "volume-1.nii.gz", "truncated or corrupt"


def bad_truncated_nii(root):
    data = (root / "volume-0.nii").read_bytes()
    (root / "volume-0.nii").write_bytes(data[:-700])  # uncompressed: the last slices missing
    return "volume-0.nii", "file is truncated"


def bad_nan_voxels(root):
    hu, _ = volume_arrays(2)
    hu = hu.astype(np.float32)
    hu[4, 6, 6] = np.nan
    hu[5, 6, 6] = np.inf
    _write(hu, root / "volume-2.nii.gz")
    return "volume-2.nii.gz", "2 voxel(s) are NaN or infinite"


def bad_pixdim_zero(root):
    data = bytearray((root / "volume-0.nii").read_bytes())
    struct.pack_into("<f", data, 76 + 4 * 3, 0.0)  # pixdim[3]: slice spacing 0
    (root / "volume-0.nii").write_bytes(bytes(data))
    return "volume-0.nii", "voxel size of 0 mm along z"


def bad_header_bomb(root):
    data = bytearray((root / "volume-0.nii").read_bytes()[:352])
    struct.pack_into("<8h", data, 40, 3, 32767, 32767, 2, 1, 1, 1, 1)
    (root / "volume-0.nii").write_bytes(bytes(data))
    return "volume-0.nii", "image of 32767 x 32767 x 2 voxels"


def bad_one_pixel_slices(root):
    _write(np.full((6, 1, 1), -1000, np.int16), root / "volume-1.nii.gz")
    _write(np.ones((6, 1, 1), np.uint8), root / "segmentation-1.nii.gz")
    return "volume-1.nii.gz", "1 x 1 x 6 pixels is not a CT slice"


def bad_same_volume_copied(root):
    shutil.copyfile(root / "volume-1.nii.gz", root / "volume-2.nii.gz")
    shutil.copyfile(root / "segmentation-1.nii.gz", root / "segmentation-2.nii.gz")
    return "volume-2.nii.gz", "holds the same voxels as volume-1.nii.gz"


def bad_same_volume_hard_linked_and_uncompressed(root):
    (root / "volume-2.nii.gz").unlink()
    os.link(root / "volume-0.nii", root / "volume-2.nii")  # one file, two case numbers
    hu, seg = volume_arrays(0)
    _write(seg, root / "segmentation-2.nii.gz")
    return "volume-2.nii", "holds the same voxels as volume-0.nii"


BAD_INPUTS = [
    bad_label_values, bad_geometry, bad_size, bad_no_liver, bad_tumour_outside_liver, bad_tumour_and_liver_labels_swapped,
    bad_not_hu, bad_unreadable, bad_missing_segmentation,
    bad_missing_volume, bad_duplicate_case, bad_2d_image, bad_empty_folder,
    bad_truncated_gz, bad_truncated_nii, bad_nan_voxels, bad_pixdim_zero, bad_header_bomb, bad_one_pixel_slices,
    bad_same_volume_copied, bad_same_volume_hard_linked_and_uncompressed,
]


def test_a_liver_under_one_cm3_is_converted_with_a_warning(tmp_path, capsys):
    """At 2 x 2 x 5 mm voxels the fixture's liver is 281 x 20 mm³ = 5.6 cm³ (not warned); a one-voxel liver,
    0.02 cm³, is warned naming its label file, and converted."""
    root = tmp_path / "lits"
    for n in range(2):
        hu, seg = volume_arrays(n)
        if n == 1:
            seg[seg > 0] = 0
            seg[2, 15, 15] = 1
        for array, name in ((hu, f"volume-{n}.nii.gz"), (seg, f"segmentation-{n}.nii.gz")):
            image = sitk.GetImageFromArray(array)
            image.SetSpacing((2.0, 2.0, 5.0))
            root.mkdir(exist_ok=True)
            sitk.WriteImage(image, str(root / name), True)
    assert main([str(root), "--raw-root", str(tmp_path / "raw")]) == 0
    (line,) = capsys.readouterr().err.splitlines()
    assert line == (f"warning: {root / 'segmentation-1.nii.gz'}: liver (labels 1/2) is 0.02 cm³ (1 voxels), under 1 "
                    "cm³: a whole liver is 1000-2500 cm³ (a wrong label file or voxel size?)")
    assert (tmp_path / "raw" / "Dataset501_LiTSLiver" / "labelsTr" / "lits_001.nii.gz").is_file()


@pytest.mark.parametrize("spoil", BAD_INPUTS, ids=[f.__name__[4:] for f in BAD_INPUTS])
def test_bad_input_exits_2_naming_the_file_and_writes_nothing(tmp_path, capsys, spoil):
    root = make_release(tmp_path / "lits")
    file_name, problem = spoil(root)
    before = tree_digest(root)
    out = tmp_path / "raw"
    with pytest.raises(SystemExit) as e:
        main([str(root), "--raw-root", str(out)])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ")
    assert file_name in err and problem in err
    assert ".cxx" not in err and "sitk::" not in err and "ITK ERROR" not in err
    assert not re.search(r"np\.\w+\(", err)  # plain numbers, never numpy's repr (np.float64(0.8))
    assert not out.exists() or list(out.iterdir()) == []  # no dataset, no partial folders
    assert tree_digest(root) == before  # inputs untouched


def test_header_bomb_limit_is_a_setting(tmp_path, capsys, monkeypatch):
    root = make_release(tmp_path / "lits")
    file_name, _ = bad_header_bomb(root)
    monkeypatch.setenv("nnUNet_joint_max_voxels", "100")  # even ordinary volumes exceed this
    with pytest.raises(SystemExit):
        main([str(root), "--raw-root", str(tmp_path / "raw")])
    assert "exceeds the limit of 100 (set nnUNet_joint_max_voxels to raise it)" in capsys.readouterr().err
    monkeypatch.setenv("nnUNet_joint_max_voxels", str(32767 * 32767 * 2))  # raised: the size passes, the
    with pytest.raises(SystemExit):                                           # lie does not
        main([str(root), "--raw-root", str(tmp_path / "raw")])
    assert "does not match volume-0.nii: size (32, 32, 6) differs from the image's (32767, 32767, 2)" in (
        capsys.readouterr().err)
    monkeypatch.delenv("nnUNet_joint_max_voxels")
    (root / "volume-0.nii").unlink()
    (root / "segmentation-0.nii").unlink()
    assert main([str(root), "--raw-root", str(tmp_path / "raw")]) == 0  # the default limit passes real sizes


@pytest.mark.parametrize("value,problem", [("nan", "finite number >= 0, got nan"), ("inf", "finite number >= 0, got inf")])
def test_margin_that_is_not_finite_is_refused(tmp_path, capsys, value, problem):
    root = make_release(tmp_path / "lits")
    with pytest.raises(SystemExit) as e:
        main([str(root), "--raw-root", str(tmp_path / "raw"), "--margin-mm", value])
    assert e.value.code == 2 and capsys.readouterr().err == f"error: --margin-mm must be a {problem}\n"
    assert not (tmp_path / "raw").exists()


def test_raw_root_that_is_a_file_is_refused(tmp_path, capsys):
    root = make_release(tmp_path / "lits")
    a_file = tmp_path / "raw"
    a_file.write_text("x")
    with pytest.raises(SystemExit) as e:
        main([str(root), "--raw-root", str(a_file)])
    assert e.value.code == 2
    assert capsys.readouterr().err.startswith(f"error: {a_file}: is not a folder (--raw-root")
    assert a_file.read_text() == "x"


def test_existing_dataset_needs_overwrite(tmp_path, capsys):
    root = make_release(tmp_path / "lits", n_cases=1)
    out = tmp_path / "raw"
    assert main([str(root), "--raw-root", str(out)]) == 0
    with pytest.raises(SystemExit) as e:
        main([str(root), "--raw-root", str(out)])
    assert e.value.code == 2 and "Dataset501_LiTSLiver: already exists" in capsys.readouterr().err
    assert main([str(root), "--raw-root", str(out), "--overwrite", "--max-cases", "1"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["Dataset501_LiTSLiver", "Dataset502_LiTSLesion"]


def test_raw_root_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("nnUNet_raw", str(tmp_path / "env_raw"))
    result = convert_lits(make_release(tmp_path / "lits", n_cases=1))
    assert result["liver_dataset"] == tmp_path / "env_raw" / "Dataset501_LiTSLiver"


@pytest.mark.slow
def test_phantom_lits_converts(tmp_path):
    phantom = pytest.importorskip("nnunet_joint.phantom")
    phantom.generate_corpus(tmp_path / "phantom", seed=0, size="tiny")
    result = convert_lits(tmp_path / "phantom" / "LiTS", raw_root=tmp_path / "raw")
    n = len(list((tmp_path / "phantom" / "LiTS").glob("volume-*.nii*")))
    assert len(result["cases"]) == n
    for case in result["cases"]:
        slices = sorted((tmp_path / "raw" / "Dataset502_LiTSLesion" / "labelsTr").glob(f"{case}_z*.nii.gz"))
        assert slices
        for path in slices:
            labels = _array(path)
            assert labels.shape[0] == 1 and set(np.unique(labels)) <= {0, 1, 2} and 1 in labels


def test_splits_one_volume_per_patient_in_raw_and_preprocessed(tmp_path):
    root = make_release(tmp_path / "lits", n_cases=3)
    result = convert_lits(root, raw_root=tmp_path / "raw", preprocessed_root=tmp_path / "pre")
    cases = sorted(result["cases"])
    for base in (tmp_path / "raw", tmp_path / "pre"):
        volumes = json.loads((base / "Dataset501_LiTSLiver" / "splits_final.json").read_text())
        assert len(volumes) == 3  # min(5 folds, 3 volumes)
        assert sorted(c for s in volumes for c in s["val"]) == cases  # each volume validated once
        for s in volumes:
            assert not set(s["train"]) & set(s["val"]) and len(s["val"]) == 1
        slices = json.loads((base / "Dataset502_LiTSLesion" / "splits_final.json").read_text())
        for vol_fold, slice_fold in zip(volumes, slices):  # the slices follow their volume's fold
            for part in ("train", "val"):
                assert sorted({c.rsplit("_z", 1)[0] for c in slice_fold[part]}) == sorted(vol_fold[part])
                assert len(slice_fold[part]) == 3 * len(vol_fold[part])
