"""The handcrafted reference row: each feature group against values computed by hand or by brute force,
the classifier on separable and on shuffled types, the folds it fits and scores, and bad input."""

from __future__ import annotations

import csv
import itertools
import json
import math
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_joint import LESION_TYPES
from nnunet_joint.evaluation import handcrafted as hc
from nnunet_joint.labels import JOINT_LABELS
from test_evaluate import _error  # InputError's one line


def lesion_slice(ct, lesion, liver=None, spacing=(1.0, 1.0)) -> hc.LesionSlice:
    lesion = np.asarray(lesion, bool)
    liver = ~lesion if liver is None else np.asarray(liver, bool) & ~lesion
    return hc.LesionSlice(np.asarray(ct, np.float64), lesion, liver, spacing)


def features_of(names: tuple[str, ...], values: tuple[float, ...]) -> dict[str, float]:
    assert len(names) == len(values)
    return dict(zip(names, values))


GROUP_NAMES = {function: names for names, function in hc.FEATURE_GROUPS}


# ----------------------------------------------------------------------------- intensity


def test_intensity_of_a_constant_lesion():
    lesion = np.zeros((6, 6), bool)
    lesion[1:4, 2:5] = True
    ct = np.where(lesion, 30.0, 100.0)
    got = features_of(GROUP_NAMES[hc.intensity_features], hc.intensity_features(lesion_slice(ct, lesion)))
    assert got == {"lesion_mean_hu": 30.0, "lesion_std_hu": 0.0, "lesion_p10_hu": 30.0, "lesion_p50_hu": 30.0,
                   "lesion_p90_hu": 30.0, "lesion_skewness": 0.0}


def test_intensity_of_three_dark_pixels_and_a_bright_one():
    # lesion values 0, 0, 0, 10 (liver pixels at 500 must not count):
    # mean 2.5; deviations -2.5 (x3), 7.5: m2 = (3 * 6.25 + 56.25) / 4 = 18.75, std = sqrt(18.75)
    # m3 = (3 * -15.625 + 421.875) / 4 = 93.75, skewness = m3 / m2^1.5
    # percentiles (linear, positions 0.3 / 1.5 / 2.7 of 0, 0, 0, 10): 0, 0, 0.7 * 10 = 7
    ct = np.array([[0, 0, 500], [0, 10, 500]], float)
    lesion = ct < 100
    got = features_of(GROUP_NAMES[hc.intensity_features], hc.intensity_features(lesion_slice(ct, lesion)))
    assert got["lesion_mean_hu"] == pytest.approx(2.5)
    assert got["lesion_std_hu"] == pytest.approx(math.sqrt(18.75))
    assert (got["lesion_p10_hu"], got["lesion_p50_hu"], got["lesion_p90_hu"]) == pytest.approx((0.0, 0.0, 7.0))
    assert got["lesion_skewness"] == pytest.approx(93.75 / 18.75 ** 1.5)


# ----------------------------------------------------------------------------- contrast


def test_ring_and_rim_of_a_band_lesion_with_anisotropic_pixels():
    # 5 rows x 20 columns, pixels 1 mm high and 4 mm wide; lesion: columns 10-11 of rows 1-4.
    # Liver pixels within RING_MM = 10 mm: columns 8, 9 (8 and 4 mm away) and 12, 13; column 7 is 12 mm away.
    # Row 0 is background (air): not liver, so not ring whatever its distance.
    assert hc.RING_MM == 10.0 and hc.RIM_MM == 5.0
    ct = np.full((5, 20), 200.0)
    ct[:, 8:10], ct[:, 12:14] = 60.0, 80.0  # ring: half at 60, half at 80 -> 70
    ct[:, 10], ct[:, 11] = 20.0, 40.0  # lesion mean 30
    ct[0, :] = -1000.0
    lesion = np.zeros((5, 20), bool)
    lesion[1:, 10:12] = True
    liver = np.ones((5, 20), bool)
    liver[0] = False
    s = lesion_slice(ct, lesion, liver, spacing=(1.0, 4.0))
    assert np.array_equal(np.argwhere(hc.surrounding_ring(s)), [(r, c) for r in range(1, 5) for c in (8, 9, 12, 13)])
    ring_mean, lesion_minus_ring, rim_minus_core = hc.contrast_features(s)
    assert ring_mean == 70.0 and lesion_minus_ring == -40.0
    # every lesion pixel has a non-lesion neighbour 4 mm away, within RIM_MM: all rim, no core
    assert math.isnan(rim_minus_core)


def test_rim_minus_core_of_a_square():
    # 13 x 13 lesion at 1 mm in a 19 x 19 liver: a pixel k rows/columns in from the lesion's edge is k + 1 mm from
    # the nearest non-lesion pixel, so the rim (<= 5 mm) is the outer 5 pixels and the core the central 3 x 3.
    ct = np.full((19, 19), 100.0)
    lesion = np.zeros((19, 19), bool)
    lesion[3:16, 3:16] = True
    ct[lesion] = 50.0
    ct[8:11, 8:11] = 0.0
    ring_mean, lesion_minus_ring, rim_minus_core = hc.contrast_features(lesion_slice(ct, lesion))
    assert rim_minus_core == 50.0
    assert ring_mean == 100.0
    assert lesion_minus_ring == pytest.approx((160 * 50.0 + 9 * 0.0) / 169 - 100.0)


def test_ring_against_brute_force_distances():
    rng = np.random.default_rng(3)
    spacing = (1.5, 2.5)
    lesion = np.zeros((16, 14), bool)
    lesion[5:9, 4:7] = True
    lesion[10, 9] = True
    liver = rng.random(lesion.shape) < 0.8
    ct = rng.normal(80, 20, lesion.shape)
    s = lesion_slice(ct, lesion, liver, spacing)
    expected = np.zeros(lesion.shape, bool)
    lesion_pixels = np.argwhere(lesion)
    for r, c in itertools.product(range(lesion.shape[0]), range(lesion.shape[1])):
        if liver[r, c] and not lesion[r, c]:
            nearest = min(math.hypot((r - lr) * spacing[0], (c - lc) * spacing[1]) for lr, lc in lesion_pixels)
            expected[r, c] = nearest <= hc.RING_MM
    assert np.array_equal(hc.surrounding_ring(s), expected)
    assert hc.contrast_features(s)[0] == pytest.approx(ct[expected].mean())


# ----------------------------------------------------------------------------- texture


def test_glcm_of_two_level_stripes_by_hand():
    # a 2 x 4 lesion "a a b b" in both rows, a = 0 HU, b = 100 HU; window -50..250 HU in 32 levels of 9.375 HU:
    # a -> floor(50 / 9.375) = 5, b -> floor(150 / 9.375) = 16, so |i - j| = 11 for an a-b pair.
    # Symmetric counts pooled over 0/45/90/135 degrees:
    #   0 deg:   per row a-a, a-b, b-b (x2 rows, x2 symmetric): [a,a] 4, [b,b] 4, [a,b] 2, [b,a] 2
    #   90 deg:  4 vertical pairs, two a-a and two b-b:          [a,a] 4, [b,b] 4
    #   45 deg, 135 deg: 3 pairs each, a-a, a-b, b-b:           [a,a] 2, [b,b] 2, [a,b] 1, [b,a] 1 (each)
    #   total 32: [a,a] 12, [b,b] 12, [a,b] 4, [b,a] 4
    # contrast = 8/32 * 121; homogeneity = 24/32 + 8/32 / 122; energy = sqrt((2 * 12^2 + 2 * 4^2) / 32^2);
    # correlation: both marginals 1/2 at a and b, variance 5.5^2, covariance 5.5^2 * (24 - 8) / 32 -> 0.5.
    # The pixels around the stripes (1000 HU) are outside the lesion and must not count.
    ct = np.full((4, 6), 1000.0)
    ct[1:3, 1:3], ct[1:3, 3:5] = 0.0, 100.0
    lesion = np.zeros((4, 6), bool)
    lesion[1:3, 1:5] = True
    assert list(hc.grey_levels(np.array([0.0, 100.0]))) == [5, 16]
    got = features_of(GROUP_NAMES[hc.texture_features], hc.texture_features(lesion_slice(ct, lesion)))
    assert got["glcm_contrast"] == pytest.approx(8 / 32 * 121)
    assert got["glcm_homogeneity"] == pytest.approx(24 / 32 + 8 / 32 / 122)
    assert got["glcm_energy"] == pytest.approx(math.sqrt((2 * 144 + 2 * 16) / 1024))
    assert got["glcm_correlation"] == pytest.approx(0.5)


def test_glcm_of_an_irregular_lesion_against_brute_force_pairs():
    rng = np.random.default_rng(7)
    lesion = np.zeros((12, 12), bool)
    lesion[2:10, 3:9] = rng.random((8, 6)) < 0.75  # holes: non-lesion pixels inside the bounding box
    ct = np.where(lesion, rng.uniform(-80, 280, lesion.shape), 3000.0)
    levels = np.floor((np.clip(ct, -50, 250) + 50) / 300 * 32).clip(max=31).astype(int)
    counts = np.zeros((32, 32))
    for r, c in np.argwhere(lesion):  # every ordered pair of neighbouring lesion pixels in the 8 directions
        for dr, dc in [(0, 1), (1, 1), (1, 0), (1, -1), (0, -1), (-1, -1), (-1, 0), (-1, 1)]:
            rr, cc = r + dr, c + dc
            if 0 <= rr < 12 and 0 <= cc < 12 and lesion[rr, cc]:
                counts[levels[r, c], levels[rr, cc]] += 1
    p = counts / counts.sum()
    i, j = np.indices(p.shape)
    mu_i, mu_j = (i * p).sum(), (j * p).sum()
    sd_i, sd_j = math.sqrt(((i - mu_i) ** 2 * p).sum()), math.sqrt(((j - mu_j) ** 2 * p).sum())
    expected = {
        "glcm_contrast": ((i - j) ** 2 * p).sum(),
        "glcm_homogeneity": (p / (1 + (i - j) ** 2)).sum(),
        "glcm_energy": math.sqrt((p ** 2).sum()),
        "glcm_correlation": ((i - mu_i) * (j - mu_j) * p).sum() / (sd_i * sd_j),
    }
    got = features_of(GROUP_NAMES[hc.texture_features], hc.texture_features(lesion_slice(ct, lesion)))
    assert got == pytest.approx(expected)


def test_glcm_of_a_single_pixel_is_undefined():
    lesion = np.zeros((5, 5), bool)
    lesion[2, 2] = True
    assert all(math.isnan(v) for v in hc.texture_features(lesion_slice(np.zeros((5, 5)), lesion)))


# ----------------------------------------------------------------------------- shape


def test_shape_of_a_rectangle_and_a_speck_with_anisotropic_pixels():
    # a 4 x 4 lesion of 2 mm x 1 mm pixels and a separate 1-pixel lesion: 17 pixels x 2 mm^2 = 34 mm^2, 2 lesions.
    # The largest's pixel centres lie at 0/2/4/6 mm (rows) and 0/1/2/3 mm (columns): variances 5 and 1.25 mm^2,
    # eccentricity sqrt(1 - 1.25 / 5); a rectangle is convex: solidity 1.
    lesion = np.zeros((10, 10), bool)
    lesion[1:5, 1:5] = True
    lesion[8, 8] = True
    got = features_of(GROUP_NAMES[hc.shape_features], hc.shape_features(lesion_slice(np.zeros((10, 10)), lesion,
                                                                                      spacing=(2.0, 1.0))))
    assert got == pytest.approx({"lesion_area_mm2": 34.0, "lesion_count": 2.0,
                                 "largest_eccentricity": math.sqrt(0.75), "largest_solidity": 1.0})


def test_shape_of_a_u_and_of_lesions_touching_at_a_corner():
    # a U: a 4 x 5 block without the 2 pixels of its notch: 18 pixels, hull the 20-pixel block -> solidity 0.9.
    # Two more pixels touching the U's corner diagonally belong to it (full connectivity): one lesion.
    lesion = np.zeros((9, 9), bool)
    lesion[2:6, 2:7] = True
    lesion[2:4, 4] = False
    lesion[6, 7] = True
    got = features_of(GROUP_NAMES[hc.shape_features], hc.shape_features(lesion_slice(np.zeros((9, 9)), lesion)))
    assert got["lesion_count"] == 1.0 and got["lesion_area_mm2"] == 19.0
    lesion[6, 7] = False
    got = features_of(GROUP_NAMES[hc.shape_features], hc.shape_features(lesion_slice(np.zeros((9, 9)), lesion)))
    assert got["largest_solidity"] == pytest.approx(0.9)


def test_feature_list_is_the_groups_in_order_and_an_empty_lesion_is_undefined():
    assert hc.FEATURE_NAMES == tuple(n for names, _ in hc.FEATURE_GROUPS for n in names)
    assert len(set(hc.FEATURE_NAMES)) == len(hc.FEATURE_NAMES)
    values = hc.slice_features(lesion_slice(np.zeros((6, 6)), np.zeros((6, 6), bool)))
    assert values.shape == (len(hc.FEATURE_NAMES),) and np.isnan(values).all()


# ----------------------------------------------------------------------------- classifier


def synthetic_set(rng, n: int, separating: bool) -> tuple[dict, dict]:
    """Features of ``n`` cases: noise, plus (when ``separating``) one feature that is the type plus small noise."""
    types = {f"c{k:03d}": k % 3 for k in range(n)}
    features = {}
    for case, t in types.items():
        values = rng.normal(0, 1, len(hc.FEATURE_NAMES))
        if separating:
            values[4] = 10 * t + rng.normal(0, 1)
        features[case] = values
    return features, types


def test_classifier_types_a_separable_set_perfectly():
    rng = np.random.default_rng(0)
    features, types = synthetic_set(rng, 120, separating=True)
    cases = sorted(types)
    fit = hc.fit_fold(0, cases[:60], cases[60:], features, types)
    assert [r.case_id for r in fit.results] == cases[60:]
    assert all(r.pred_type == r.true_type for r in fit.results)
    assert int(np.argmax(fit.feature_importance)) == 4
    assert all(sum(r.type_probs) == pytest.approx(1.0) for r in fit.results)


def test_classifier_on_shuffled_types_stays_near_chance():
    rng = np.random.default_rng(1)
    features, types = synthetic_set(rng, 600, separating=True)
    shuffled = dict(zip(types, rng.permutation(list(types.values()))))
    cases = sorted(types)
    fit = hc.fit_fold(0, cases[:300], cases[300:], features, shuffled)
    accuracy = np.mean([r.pred_type == r.true_type for r in fit.results])
    # chance is 1/3; the binomial sd of 300 guesses is 0.027
    assert abs(accuracy - 1 / 3) < 0.1


def test_a_validation_case_is_never_in_the_fit():
    # the odd one out has a cyst's features and a metastasis's type: fitted on, the forest would remember it
    # (it is alone in its leaf in the ~63 % of trees whose bootstrap draws it); held out, it is typed cyst
    rng = np.random.default_rng(2)
    features, types = synthetic_set(rng, 90, separating=True)
    features["odd"], types["odd"] = features["c000"] + 0.01, 2
    train = [c for c in sorted(types) if c != "odd"]
    held_out = hc.fit_fold(0, train, ["odd"], features, types).results[0]
    assert held_out.pred_type == 0 and held_out.true_type == 2
    fitted = hc.fit_fold(0, [*train, "odd"], ["odd"], features, types).results[0]
    assert fitted.pred_type == 2  # the check above can tell the difference


def test_type_absent_from_training_gets_zero_probability():
    rng = np.random.default_rng(4)
    features, types = synthetic_set(rng, 30, separating=True)
    train = [c for c in sorted(types) if types[c] != 1]
    fit = hc.fit_fold(0, train, ["c001"], features, types)
    assert fit.results[0].type_probs[1] == 0.0 and fit.results[0].pred_type in (0, 2)


# ----------------------------------------------------------------------------- a raw dataset

SPACING_XYZ = (0.8, 0.6, 5.0)
HU_OF_TYPE = {"cyst": 10, "hemangioma": 150, "metastasis": 60}


def write_case(raw: Path, case: str, lesion_type: str, lesion_hu: float, lesion_rows: slice) -> None:
    """A 1 x 16 x 16 crop: air border, liver at 100 HU, a lesion of constant HU in columns 5-8."""
    ct = np.full((16, 16), -1000, np.int16)
    labels = np.zeros((16, 16), np.uint8)
    ct[2:14, 2:14], labels[2:14, 2:14] = 100, JOINT_LABELS["liver"]
    ct[lesion_rows, 5:9], labels[lesion_rows, 5:9] = lesion_hu, JOINT_LABELS[lesion_type]
    for array, path in ((ct, raw / "imagesTr" / f"{case}_0000.nii.gz"), (labels, raw / "labelsTr" / f"{case}.nii.gz")):
        image = sitk.GetImageFromArray(array[None])
        image.SetSpacing(SPACING_XYZ)
        path.parent.mkdir(parents=True, exist_ok=True)
        sitk.WriteImage(image, str(path))


def build_raw_dataset(root: Path) -> tuple[Path, Path, dict]:
    """Two folds of 4 cases per type, lesion HU set by type, plus ``odd``: a cyst's HU typed metastasis, in fold 0's
    validation cases and in no training set."""
    raw = root / "Dataset504_ShebaJoint"
    types, patients = {}, {}
    for k in range(24):
        lesion_type = LESION_TYPES[k % 3]
        case = f"s{k:02d}"
        types[case], patients[case] = lesion_type, f"P{k:02d}"
        write_case(raw, case, lesion_type, HU_OF_TYPE[lesion_type] + k % 4, slice(5, 8 + k % 3))
    write_case(raw, "odd", "metastasis", HU_OF_TYPE["cyst"], slice(5, 8))
    types["odd"], patients["odd"] = "metastasis", "P99"
    (raw / "dataset.json").write_text(json.dumps({
        "labels": JOINT_LABELS, "file_ending": ".nii.gz", "channel_names": {"0": "CT"}, "numTraining": 25,
        "lesion_types": types, "patients": patients}))
    even, odd = [f"s{k:02d}" for k in range(0, 24, 2)], [f"s{k:02d}" for k in range(1, 24, 2)]
    splits = [{"train": odd, "val": [*even, "odd"]}, {"train": even, "val": odd}]
    splits_path = root / "nnUNet_preprocessed" / "splits_final.json"
    splits_path.parent.mkdir(parents=True)
    splits_path.write_text(json.dumps(splits))
    return raw, splits_path, types


def test_row_on_a_raw_dataset(tmp_path, capsys):
    raw, splits_path, types = build_raw_dataset(tmp_path)
    out = tmp_path / "out"
    assert hc.main([str(raw), "--splits", str(splits_path), "--out", str(out)]) == 0
    summary = json.loads((out / "summary.json").read_text())
    splits = json.loads(splits_path.read_text())
    for fold in (0, 1):
        assert sorted(c["case_id"] for c in summary["cases"] if c["fold"] == fold) == sorted(splits[fold]["val"])
    by_case = {c["case_id"]: c for c in summary["cases"]}
    # every case is typed right by its HU, except the odd one, typed by its cyst HU (it was not in fold 0's fit)
    assert by_case["odd"]["pred_type"] == 0 and by_case["odd"]["true_type"] == 2
    assert all(c["pred_type"] == c["true_type"] for name, c in by_case.items() if name != "odd")
    assert summary["per_fold"][0]["metrics"]["cls_acc"]["value"] == pytest.approx(12 / 13)
    assert summary["per_fold"][1]["metrics"]["cls_acc"]["value"] == 1.0
    assert summary["classification"]["confusion_matrix"] == [[8, 0, 0], [0, 8, 0], [1, 0, 8]]
    assert summary["classification"]["predicted_counts"] == {"cyst": 9, "hemangioma": 8, "metastasis": 8,
                                                             "no call": 0}
    # s07: hemangioma at 150 + 3 HU, lesion rows 5..8 x columns 5..8 = 16 pixels of 0.6 x 0.8 mm in liver at 100 HU
    features = dict(zip(summary["feature_names"], summary["features"]["s07"]))
    assert features["lesion_mean_hu"] == 153.0 and features["lesion_std_hu"] == 0.0
    assert features["lesion_area_mm2"] == pytest.approx(16 * 0.6 * 0.8)
    assert features["ring_mean_hu"] == 100.0 and features["lesion_minus_ring_hu"] == 53.0
    assert features["lesion_count"] == 1.0
    with open(out / "features.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 25 and {r["case"] for r in rows} == set(types)
    assert next(r for r in rows if r["case"] == "odd")["predicted_type"] == "cyst"
    assert (out / "summary.csv").is_file()
    printed = capsys.readouterr().out
    assert "predicted counts: cyst 9, hemangioma 8, metastasis 8" in printed


def test_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys):
    raw, splits_path, _ = build_raw_dataset(tmp_path)
    run = lambda: hc.handcrafted_row(raw, splits_path)  # noqa: E731
    splits = json.loads(splits_path.read_text())

    splits_path.write_text(json.dumps([{"train": splits[0]["train"], "val": [*splits[0]["val"], "s01"]}]))
    assert "fold 0: case(s) s01 in both train and val" in _error(run)
    splits_path.write_text(json.dumps([{"train": splits[0]["train"], "val": [*splits[0]["val"], "ghost"]}]))
    assert "'lesion_types' has no entry for case ghost" in _error(run)
    data = json.loads((raw / "dataset.json").read_text())
    data["lesion_types"]["ghost"] = "cyst"
    (raw / "dataset.json").write_text(json.dumps(data))
    assert "ghost_0000.nii.gz: not found: case ghost of the splits is not in the raw dataset" in _error(run)
    splits_path.write_text(json.dumps(splits))
    assert "no fold 5" in _error(lambda: hc.handcrafted_row(raw, splits_path, folds=[5]))

    (raw / "labelsTr" / "s03.nii.gz").unlink()
    assert "s03.nii.gz: not found: case s03 of the splits is not in the raw dataset" in _error(run)

    data = json.loads((raw / "dataset.json").read_text())
    del data["lesion_types"]
    (raw / "dataset.json").write_text(json.dumps(data))
    assert "dataset.json: no 'lesion_types'" in _error(run)

    out = tmp_path / "out"
    with pytest.raises(SystemExit) as exit_info:
        hc.main([str(raw), "--splits", str(splits_path), "--out", str(out)])
    assert exit_info.value.code == 2
    assert capsys.readouterr().err.count("\n") == 1
    assert not out.exists()
