"""Tests of the synthetic CT phantom (tiny size): determinism, layout, labels, geometry, HU."""

from __future__ import annotations

import csv
import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from nnunet_joint import LESION_TYPES
from nnunet_joint.errors import InputError
from nnunet_joint.io import same_geometry
from nnunet_joint.phantom import corpus as corpus_module
from nnunet_joint.phantom import generate_corpus, plan_corpus, render_sheba_case
from nnunet_joint.phantom.anatomy import AIR, FAT, LIVER
from nnunet_joint.phantom.cli import main
from nnunet_joint.phantom.corpus import largest_remainder

CSV_HEADER = ["case_id", "patient_id", "lesion_type", "image", "mask", "liver_mask"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("phantom") / "corpus"
    summary = generate_corpus(out, seed=0, size="tiny")
    assert summary["lits_volumes"] == 3 and summary["sheba_slices"] == 18
    return out


def _hashes(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def _array(path: Path) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def _rows(root: Path) -> list[dict[str, str]]:
    with open(root / "Sheba" / "cases.csv", newline="") as f:
        return list(csv.DictReader(f))


# ----------------------------------------------------------------------------- determinism and layout


def test_same_seed_gives_identical_bytes_whatever_the_worker_count(tiny: Path, tmp_path: Path) -> None:
    generate_corpus(tmp_path / "again", seed=0, size="tiny", workers=1)
    first, second = _hashes(tiny), _hashes(tmp_path / "again")
    assert first == second
    assert len(first) == 3 * 2 + 18 * 3 + 1 + 1  # volumes+segs, slices+2 masks, cases.csv, truth


def test_cli_writes_corpus_and_a_different_seed_gives_different_images(tiny: Path, tmp_path: Path, capsys) -> None:
    assert main(["--out", str(tmp_path / "s1"), "--size", "tiny", "--seed", "1"]) == 0
    last = capsys.readouterr().out.strip().splitlines()[-1]
    assert last.startswith("generated in ") and last.endswith(" s")
    a, b = _hashes(tiny), _hashes(tmp_path / "s1")
    assert a.keys() == b.keys()
    assert a["LiTS/volume-0.nii.gz"] != b["LiTS/volume-0.nii.gz"]
    assert a["Sheba/slices/sheba_0001.nii.gz"] != b["Sheba/slices/sheba_0001.nii.gz"]


def test_cli_refuses_bad_difficulty_with_one_line(tmp_path: Path, capsys) -> None:
    with pytest.raises(SystemExit) as e:
        main(["--out", str(tmp_path / "x"), "--size", "tiny", "--difficulty", "7"])
    assert e.value.code == 2
    assert capsys.readouterr().err.strip() == "error: --difficulty: 7.0 is outside [0.0, 3.0]"
    assert not (tmp_path / "x" / "LiTS").exists()


def test_failure_midway_leaves_no_half_folder(tmp_path: Path, monkeypatch) -> None:
    def boom(*_args, **_kwargs):
        raise RuntimeError("killed")

    monkeypatch.setattr(corpus_module, "render_sheba_patient", boom)
    with pytest.raises(RuntimeError, match="killed"):
        generate_corpus(tmp_path, seed=0, size="tiny", workers=1)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["LiTS"]  # complete; no Sheba, no truth, no temp
    assert len(list((tmp_path / "LiTS").iterdir())) == 6


def test_layout_csv_and_patients(tiny: Path) -> None:
    assert sorted(p.name for p in (tiny / "LiTS").iterdir()) == sorted(
        [f"volume-{i}.nii.gz" for i in range(3)] + [f"segmentation-{i}.nii.gz" for i in range(3)])
    with open(tiny / "Sheba" / "cases.csv", newline="") as f:
        assert next(csv.reader(f)) == CSV_HEADER
    rows = _rows(tiny)
    assert [r["case_id"] for r in rows] == [f"sheba_{i:04d}" for i in range(1, 19)]
    for r in rows:
        assert r["image"] == f"slices/{r['case_id']}.nii.gz"
        assert r["mask"] == f"masks/{r['case_id']}_lesion.nii.gz"
        assert r["liver_mask"] == f"masks/{r['case_id']}_liver.nii.gz"
    types_of = {}
    for r in rows:
        types_of.setdefault(r["patient_id"], set()).add(r["lesion_type"])
    assert len(types_of) == 9 and all(len(t) == 1 for t in types_of.values())
    assert {t: sum(r["lesion_type"] == t for r in rows) for t in LESION_TYPES} == {t: 6 for t in LESION_TYPES}
    truth = json.loads((tiny / "phantom_truth.json").read_text())
    assert (truth["seed"], truth["size"], truth["difficulty"]) == (0, "tiny", 1.0)
    assert [c["case_id"] for c in truth["sheba"]] == [r["case_id"] for r in rows]
    assert all(lesion["type"] == c["lesion_type"] for c in truth["sheba"] for lesion in c["lesions"])


# ----------------------------------------------------------------------------- labels and geometry


def test_lits_labels_geometry_and_truth_centres(tiny: Path) -> None:
    truth = json.loads((tiny / "phantom_truth.json").read_text())
    for i, record in enumerate(truth["lits"]):
        vol = sitk.ReadImage(str(tiny / "LiTS" / f"volume-{i}.nii.gz"))
        seg = sitk.ReadImage(str(tiny / "LiTS" / f"segmentation-{i}.nii.gz"))
        assert vol.GetPixelID() == sitk.sitkInt16 and seg.GetPixelID() == sitk.sitkUInt8
        assert same_geometry(vol, seg) is None
        assert vol.GetSize() == (64, 64, 8)
        assert np.allclose(vol.GetSpacing()[::-1], record["spacing_zyx"], atol=1e-3)
        labels = sitk.GetArrayFromImage(seg)
        assert set(np.unique(labels)) == {0, 1, 2}  # every tiny volume has lesions
        for lesion in record["lesions"]:
            assert labels[tuple(lesion["centre_zyx"])] == 2
    assert {lesion["type"] for lesion in truth["lits"][0]["lesions"]} == set(LESION_TYPES)


def test_sheba_labels_and_geometry(tiny: Path) -> None:
    for r in _rows(tiny):
        root = tiny / "Sheba"
        image = sitk.ReadImage(str(root / r["image"]))
        lesion = sitk.ReadImage(str(root / r["mask"]))
        liver = sitk.ReadImage(str(root / r["liver_mask"]))
        assert image.GetSize() == (96, 96, 1) and image.GetPixelID() == sitk.sitkInt16
        assert 2.5 <= image.GetSpacing()[2] <= 5.0  # slice thickness in the header
        assert same_geometry(image, lesion) is None and same_geometry(image, liver) is None
        les, liv = sitk.GetArrayFromImage(lesion), sitk.GetArrayFromImage(liver)
        assert set(np.unique(les)) == {0, 1} and set(np.unique(liv)) == {0, 1}
        assert np.all(liv[les == 1] == 1)  # liver mask includes the lesions


# ----------------------------------------------------------------------------- HU


def test_background_tissues_match_the_rendered_anatomy(tiny: Path) -> None:
    plan = plan_corpus(0, "tiny")
    case = render_sheba_case(plan, plan.sheba[0])
    written = _array(tiny / "Sheba" / "slices" / "sheba_0001.nii.gz")
    assert np.array_equal(written, case.image)
    assert abs(np.median(written[case.organ == AIR]) + 1000) <= 5
    assert abs(np.median(written[case.organ == FAT]) + 100) <= 15
    assert 90 - 15 <= np.median(written[case.organ == LIVER]) <= 130 + 15


def _lesion_regions(labels: np.ndarray, lesions: list[dict]) -> list[tuple[dict, np.ndarray]]:
    """Each lesion's connected component (skipped when two lesions merged)."""
    comps, _ = ndimage.label(labels)
    ids = [comps[tuple(lesion["centre_zyx"])] for lesion in lesions]
    return [(lesion, comps == k) for lesion, k in zip(lesions, ids) if k and ids.count(k) == 1]


def test_lesion_hu_by_type(tiny: Path) -> None:
    truth = json.loads((tiny / "phantom_truth.json").read_text())
    found = []  # (lesion, region, image, liver-without-lesion median)
    for i, record in enumerate(truth["lits"]):
        image = _array(tiny / "LiTS" / f"volume-{i}.nii.gz")
        seg = _array(tiny / "LiTS" / f"segmentation-{i}.nii.gz")
        liver_median = float(np.median(image[seg == 1]))
        found += [(l, m, image, liver_median) for l, m in _lesion_regions(seg == 2, record["lesions"])]
    for case in truth["sheba"]:
        image = _array(tiny / case["image"])
        lesion = _array(tiny / "Sheba" / "masks" / f"{case['case_id']}_lesion.nii.gz")
        liver = _array(tiny / "Sheba" / "masks" / f"{case['case_id']}_liver.nii.gz")
        liver_median = float(np.median(image[(liver == 1) & (lesion == 0)]))
        assert 80 <= liver_median <= 140
        found += [(l, m, image, liver_median) for l, m in _lesion_regions(lesion == 1, case["lesions"])]

    checked = {t: 0 for t in LESION_TYPES}
    for lesion, region, image, liver_median in found:
        if lesion["atypical"]:
            continue
        # an ROI inside the lesion, as a radiologist draws it: one pixel in from the (blurred) margin
        in_plane = np.zeros((3, 3, 3), bool)
        in_plane[1] = ndimage.generate_binary_structure(2, 1)
        core = ndimage.binary_erosion(region, structure=in_plane)
        values = image[core] if core.sum() >= 5 else image[region]
        if lesion["type"] == "cyst":
            assert 0 <= np.median(values) <= 25, lesion
        elif lesion["type"] == "metastasis":
            assert 30 <= np.median(values) <= 90, lesion
        elif lesion["variant"] == "flash-filling":
            assert np.median(values) > liver_median + 10, lesion
        else:  # peripheral nodular enhancement around a hypodense centre
            inner = ndimage.binary_erosion(region, iterations=2, border_value=0)
            ring = region & ~inner
            assert np.percentile(image[ring], 90) > liver_median + 10, lesion
            if inner.sum() >= 5:
                assert np.median(image[inner]) < liver_median, lesion
        checked[lesion["type"]] += 1
    assert all(n >= 4 for n in checked.values()), checked


# ----------------------------------------------------------------------------- planning (no images)


def test_largest_remainder_splits_exactly() -> None:
    assert largest_remainder(332, (75, 71, 93)) == [104, 99, 129]
    assert largest_remainder(140, (104, 99, 129)) == [44, 42, 54]
    assert largest_remainder(18, (1, 1, 1)) == [6, 6, 6]


def test_default_plan_counts_and_patients() -> None:
    plan = plan_corpus(0, "default")
    assert len(plan.sheba) == 332 and len(plan.lits) == 131  # LiTS's training volumes
    assert plan.sheba_type_counts() == {"cyst": 104, "hemangioma": 99, "metastasis": 129}
    assert plan.sheba_patient_type_counts() == {"cyst": 44, "hemangioma": 42, "metastasis": 54}
    per_patient: dict[str, list[str]] = {}
    for case in plan.sheba:
        per_patient.setdefault(case.patient_id, []).append(case.lesion_type)
    assert len(per_patient) == 140
    assert all(1 <= len(t) <= 4 and len(set(t)) == 1 for t in per_patient.values())
    with_lesions = [v for v in plan.lits if v.lesion_types]
    assert len(with_lesions) >= 100
    assert sum(len(set(v.lesion_types)) > 1 for v in plan.lits) >= 3
    assert plan_corpus(0, "default") == plan  # planning is deterministic


def test_bad_arguments_are_input_errors(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="unknown size"):
        plan_corpus(0, "huge")
    with pytest.raises(InputError, match="not a non-negative integer"):
        plan_corpus(-1, "tiny")
    (tmp_path / "file").write_text("x")
    with pytest.raises(InputError, match="not a folder"):
        generate_corpus(tmp_path / "file", size="tiny")


def test_difficulty_scales_noise_and_atypical_share() -> None:
    from nnunet_joint.phantom.corpus import sheba_patient
    from nnunet_joint.phantom.lesions import atypical_fraction

    easy, default = plan_corpus(0, "tiny", 0.0), plan_corpus(0, "tiny", 1.0)
    # the same patient and scanner draws; only the difficulty factor differs (0.5 + 0.5 * d)
    assert sheba_patient(easy, 0)[1].noise_sd * 2 == pytest.approx(sheba_patient(default, 0)[1].noise_sd)
    assert [atypical_fraction(d) for d in (0.0, 1.0, 2.0, 3.0)] == pytest.approx([0.0, 0.15, 0.30, 0.45])
    textbook = [render_sheba_case(easy, case) for case in easy.sheba[:6]]
    assert not any(lesion.atypical for case in textbook for lesion in case.lesions)


def test_clinical_volume_has_the_asked_grid_lesions_in_the_liver_and_is_deterministic(tmp_path: Path) -> None:
    """The prediction benchmark's input: a 512-matrix LiTS-like scan (here 12 slices, to stay fast)."""
    from nnunet_joint.phantom.corpus import CLINICAL_SPACING, render_clinical_volume, write_clinical_volume

    record = write_clinical_volume(tmp_path / "a", seed=0, slices=12)
    vol = sitk.ReadImage(str(tmp_path / "a" / record["volume"]))
    seg = _array(tmp_path / "a" / record["segmentation"])
    assert vol.GetSize() == (512, 512, 12) and vol.GetPixelID() == sitk.sitkInt16
    assert np.allclose(vol.GetSpacing()[::-1], CLINICAL_SPACING)
    assert record["shape_zyx"] == [12, 512, 512] and (seg == 1).sum() > 10_000
    hu = sitk.GetArrayFromImage(vol)
    assert hu.min() <= -900 and 60 < np.median(hu[seg == 1]) < 160  # air around the body; liver HU
    for lesion in record["lesions"]:
        assert seg[tuple(lesion["centre_zyx"])] == 2
    assert record["lesions"] and (seg == 2).any()
    again = render_clinical_volume(seed=0, slices=12)
    assert np.array_equal(again.image, hu)


# ----------------------------------------------------------------------------- the source against the target


def test_lits_like_burden_several_lesions_per_volume_many_small_a_wide_size_range() -> None:
    counts, radii = [], []
    for v in plan_corpus(0, "default").lits:
        counts.append(len(v.lesion_types))
        radii += v.radii_mm
        assert len(v.radii_mm) == len(v.lesion_types)
    assert 3 <= np.median(counts) <= 5 and max(counts) >= 15 and 0 in counts
    diameters = 2 * np.array(radii)
    assert 0.15 <= np.mean(diameters < 10) <= 0.4  # many below 1 cm
    assert diameters.min() < 5 and diameters.max() > 100


@pytest.mark.slow
@pytest.mark.parametrize("size, training_slices, patients", [("small", 60, 38), ("paper", 332 * 2 / 3, 140)])
def test_the_source_holds_ten_times_the_targets_training_slices_of_lesion(tmp_path: Path, size, training_slices,
                                                                         patients) -> None:
    """The demo's (``small``) and the study's (``paper``: the papers' 332 slices of 140 patients) phantoms."""
    summary = generate_corpus(tmp_path / size, seed=0, size=size)
    lesion_slices = liver_slices = 0
    for segmentation in sorted((tmp_path / size / "LiTS").glob("segmentation-*.nii.gz")):
        labels = _array(segmentation)
        liver_slices += int((labels > 0).any(axis=(1, 2)).sum())  # a Dataset502 case each
        lesion_slices += int((labels == 2).any(axis=(1, 2)).sum())
    rows = _rows(tmp_path / size)
    training_per_fold = len(rows) * 2 / 3  # 3 folds by patient
    assert training_per_fold == pytest.approx(training_slices)
    assert len({r["patient_id"] for r in rows}) == patients
    assert lesion_slices >= 10 * training_per_fold
    census = summary["census"]
    assert (census["lits_lesion_slices"], census["lits_liver_slices"]) == (lesion_slices, liver_slices)
    assert census["ratio"] == pytest.approx(lesion_slices / training_per_fold, abs=0.01)
