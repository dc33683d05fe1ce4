"""Per-lesion analysis on hand-made label maps with known answers."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_joint.inference.lesions import analyse_lesions, longest_diameter_mm

CYST, HEMANGIOMA, METASTASIS = 2, 3, 4


def disc(shape: tuple[int, int], centre: tuple[int, int], radius: int) -> np.ndarray:
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    return (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius**2


def slice_image(shape=(64, 80), spacing=(0.7, 0.9), origin=(-120.0, 35.5)) -> sitk.Image:
    image = sitk.Image(shape[1], shape[0], sitk.sitkInt16)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    return image


def test_two_lesions_of_different_types_get_their_own_types_and_sizes():
    ref = slice_image()
    labels = np.ones((1, 64, 80), dtype=np.uint8)
    a = disc((64, 80), (20, 20), 6)
    b = disc((64, 80), (40, 60), 4)
    labels[0][a] = CYST
    labels[0][b] = METASTASIS
    labels[0, 20, 20] = HEMANGIOMA  # one dissenting voxel does not change the majority
    typed, lesions = analyse_lesions(labels, ref)
    assert [e["type"] for e in lesions] == ["cyst", "metastasis"]  # largest first
    assert lesions[0]["type_votes"] == {"cyst": int(a.sum()) - 1, "hemangioma": 1, "metastasis": 0}
    assert typed[0, 20, 20] == CYST  # the vote is written back to the map
    assert lesions[0]["area_mm2"] == pytest.approx(a.sum() * 0.7 * 0.9, abs=1e-3)
    assert lesions[1]["area_mm2"] == pytest.approx(b.sum() * 0.7 * 0.9, abs=1e-3)
    assert lesions[0]["voxels"] == int(a.sum())
    assert lesions[0]["slices"] == [0]
    assert "volume_mm3" not in lesions[0]
    assert [e["id"] for e in lesions] == [1, 2]


@pytest.mark.parametrize("radius,spacing", [(5, 0.8), (12, 0.7), (20, 1.5)])
def test_disc_diameter_is_2rs_within_one_pixel(radius, spacing):
    mask = disc((64, 64), (32, 31), radius)[None]
    d = longest_diameter_mm(mask, (5.0, spacing, spacing))
    assert abs(d - 2 * radius * spacing) <= spacing
    assert d == pytest.approx(2 * radius * spacing)  # pixel centres of the extreme pixels: exactly 2r


def test_diameter_uses_anisotropic_in_plane_spacing_and_ignores_z():
    mask = np.zeros((3, 10, 30), dtype=bool)
    mask[1, 4, 5:25] = True  # a 20-pixel line along x: 19 pixel steps
    mask[0, 2:8, 10] = True  # 6 pixels along y in another slice
    assert longest_diameter_mm(mask, (9.0, 2.0, 0.5)) == pytest.approx(max(19 * 0.5, 5 * 2.0))


def test_centroid_in_physical_coordinates_with_origin_spacing_and_direction():
    ref = sitk.Image(20, 16, 6, sitk.sitkInt16)
    ref.SetSpacing((0.8, 0.6, 2.5))
    ref.SetOrigin((-100.0, 50.0, 300.0))
    ref.SetDirection((0.0, -1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0))  # in-plane rotation by 90 degrees
    labels = np.zeros((6, 16, 20), dtype=np.uint8)
    labels[2:4, 5:7, 10:14] = HEMANGIOMA  # centre index x 11.5, y 5.5, z 2.5
    _, lesions = analyse_lesions(labels, ref)
    (lesion,) = lesions
    # physical = origin + D @ (index * spacing)
    expected = np.array([-100.0, 50.0, 300.0]) + np.array([[0, -1, 0], [1, 0, 0], [0, 0, 1]]) @ (
        np.array([11.5, 5.5, 2.5]) * np.array([0.8, 0.6, 2.5]))
    np.testing.assert_allclose(lesion["centroid_mm"], expected, atol=1e-3)
    assert lesion["centroid_index"] == [11.5, 5.5, 2.5]
    assert lesion["volume_mm3"] == pytest.approx(16 * 0.8 * 0.6 * 2.5)
    assert lesion["slices"] == [2, 3]
    assert lesion["type"] == "hemangioma"


def test_volumes_connect_lesions_across_slices_but_not_across_corners():
    ref = sitk.Image(10, 10, 4, sitk.sitkInt16)
    labels = np.zeros((4, 10, 10), dtype=np.uint8)
    labels[0:2, 2, 2] = CYST  # one lesion spanning two slices
    labels[3, 3, 3] = METASTASIS  # touches nothing by a face
    labels[2, 2, 2] = 0
    _, lesions = analyse_lesions(labels, ref)
    assert sorted((e["type"], e["slices"]) for e in lesions) == [("cyst", [0, 1]), ("metastasis", [3])]


def test_probabilities_are_means_over_the_lesion_and_break_ties():
    ref = slice_image((8, 8), (1.0, 1.0), (0.0, 0.0))
    labels = np.zeros((1, 8, 8), dtype=np.uint8)
    labels[0, 2, 2:4] = CYST
    labels[0, 2, 4:6] = METASTASIS  # 2 : 2 tie
    probs = np.zeros((3, 1, 8, 8), dtype=np.float32)
    probs[:, 0, 2, 2:4] = np.array([0.6, 0.1, 0.3])[:, None]
    probs[:, 0, 2, 4:6] = np.array([0.1, 0.1, 0.8])[:, None]
    typed, (lesion,) = analyse_lesions(labels, ref, probs)
    assert lesion["probabilities"] == pytest.approx({"cyst": 0.35, "hemangioma": 0.1, "metastasis": 0.55})
    assert lesion["type"] == "metastasis"
    assert set(np.unique(typed[labels >= 2])) == {METASTASIS}


def test_a_2d_reference_image_works_and_empty_maps_give_no_lesions():
    ref = slice_image((16, 16), (0.5, 0.5), (10.0, 20.0))
    labels = np.ones((1, 16, 16), dtype=np.uint8)
    typed, lesions = analyse_lesions(labels, ref)
    assert lesions == [] and np.array_equal(typed, labels)
    labels[0, 4, 6] = CYST
    _, (lesion,) = analyse_lesions(labels, ref)
    assert lesion["centroid_mm"] == [13.0, 22.0]
    assert lesion["longest_diameter_mm"] == 0.0 and lesion["area_mm2"] == 0.25
    with pytest.raises(ValueError):
        analyse_lesions(np.zeros((1, 15, 16), np.uint8), ref)


class _FakeModel:
    """The parts of a CascadeModel that typing reads."""

    def __init__(self, labels: dict[str, int], ynet: bool):
        self.labels, self.is_joint, self.is_ynet, self.folder = labels, not ynet, ynet, "fake"

    def channel(self, name: str) -> int:
        return sorted(self.labels.values()).index(self.labels[name])


def test_joint_model_output_gives_pixel_types_and_renormalised_type_probabilities():
    from nnunet_joint.inference.cascade import lesion_types_from_prediction

    model = _FakeModel({"background": 0, "liver": 1, "cyst": 2, "hemangioma": 3, "metastasis": 4}, ynet=False)
    seg = np.array([[[0, 1, 2, 4]]])
    probs = np.zeros((5, 1, 1, 4), np.float32)
    probs[:, 0, 0, 2] = [0.1, 0.1, 0.4, 0.2, 0.2]
    probs[:, 0, 0, 3] = [0.0, 0.0, 0.0, 0.0, 0.0]  # no lesion mass at all: uniform
    labels, type_probs = lesion_types_from_prediction(model, seg, probs, None)
    assert labels.tolist() == [[[0, 1, 2, 4]]]
    np.testing.assert_allclose(type_probs[:, 0, 0, 2], [0.5, 0.25, 0.25])
    np.testing.assert_allclose(type_probs[:, 0, 0, 3], [1 / 3] * 3)


def test_ynet_output_types_lesion_pixels_by_their_slice_head():
    from nnunet_joint.inference.cascade import lesion_types_from_prediction

    model = _FakeModel({"background": 0, "liver": 1, "lesion": 2}, ynet=True)
    seg = np.array([[[2, 1, 2]], [[2, 0, 0]]])  # two slices
    head = np.zeros((3, 2, 1, 3), np.float32)
    head[:, 0] = np.array([0.2, 0.7, 0.1])[:, None, None]  # slice 0: hemangioma
    head[:, 1] = np.array([0.1, 0.1, 0.8])[:, None, None]  # slice 1: metastasis
    labels, type_probs = lesion_types_from_prediction(model, seg, np.zeros((3, 2, 1, 3)), head)
    assert labels.tolist() == [[[3, 1, 3]], [[4, 0, 0]]]
    np.testing.assert_allclose(type_probs[:, 1, 0, 0], [0.1, 0.1, 0.8])


def _reference_analysis(label_map: np.ndarray, spacing_zyx, probabilities: np.ndarray) -> list[tuple]:
    """Per-lesion votes, voxel count, mean probabilities, slices and diameter computed on full-size masks
    (the straightforward way: one whole-image mask per lesion), largest first."""
    from scipy import ndimage

    components, n = ndimage.label(label_map >= 2, structure=np.ones((3, 3, 3)))  # full connectivity
    out = []
    for index in range(1, n + 1):
        mask = components == index
        votes = np.bincount(label_map[mask] - 2, minlength=3)
        zs = np.flatnonzero(mask.any(axis=(1, 2)))
        diameter = 0.0
        for z in zs:
            edge = mask[z] & ~ndimage.binary_erosion(mask[z], border_value=0)
            pts = np.argwhere(edge) * np.asarray(spacing_zyx[1:])
            if len(pts) > 1:
                diameter = max(diameter, float(np.max(np.linalg.norm(pts[:, None] - pts[None], axis=2))))
        out.append((int(mask.sum()), votes.tolist(), probabilities[:, mask].mean(axis=1), zs.tolist(), diameter,
                    np.argwhere(mask).mean(axis=0)))
    return sorted(out, key=lambda e: -e[0])


def test_many_lesions_in_a_volume_match_a_whole_image_computation_with_probabilities_on_a_box():
    """Lesions are measured inside their bounding boxes and probabilities may cover only a box (the
    cascade's crop): same numbers as full-size masks over whole-image probabilities."""
    rng = np.random.default_rng(3)
    shape = (12, 60, 70)
    labels = np.ones(shape, dtype=np.uint8)
    noise = rng.random(shape)
    labels[2:11, 8:55, 10:64] = np.where(noise[2:11, 8:55, 10:64] > 0.93, rng.integers(2, 5, (9, 47, 54)), 1)
    labels[4:8, 20:30, 20:32] = METASTASIS  # one large lesion among many small ones
    probs = rng.random((3, *shape)).astype(np.float32)
    probs /= probs.sum(axis=0, keepdims=True)
    box = (slice(1, 12), slice(5, 58), slice(8, 66))  # holds every lesion voxel
    ref = sitk.Image(shape[2], shape[1], shape[0], sitk.sitkInt16)
    ref.SetSpacing((0.7, 0.8, 2.0))
    typed, lesions = analyse_lesions(labels, ref, probs[(slice(None), *box)], box)
    _, lesions_full = analyse_lesions(labels, ref, probs)
    assert lesions == lesions_full and len(lesions) > 50
    expected = _reference_analysis(labels, (2.0, 0.8, 0.7), probs)
    assert [e["voxels"] for e in lesions] == [e[0] for e in expected]
    by_size_and_slices = {(e[0], tuple(e[3]), tuple(np.round(e[5], 3))): e for e in expected}
    for lesion in lesions:
        index_zyx = tuple(np.round(lesion["centroid_index"][::-1], 3))
        count, votes, mean_probs, slices, diameter, _ = by_size_and_slices[(lesion["voxels"], tuple(lesion["slices"]),
                                                                            index_zyx)]
        assert list(lesion["type_votes"].values()) == votes
        assert list(lesion["probabilities"].values()) == pytest.approx(mean_probs, abs=1e-4)
        assert lesion["longest_diameter_mm"] == pytest.approx(diameter, abs=1e-3)
    # every lesion's voxels carry its own vote (most voxels, then larger mean probability, then earlier
    # type), written into the full map; other voxels are untouched
    from scipy import ndimage

    components, n = ndimage.label(labels >= 2, structure=np.ones((3, 3, 3)))
    for index in range(1, n + 1):
        mask = components == index
        votes = np.bincount(labels[mask] - 2, minlength=3)
        mean_probs = probs[:, mask].mean(axis=1)
        winner = max(range(3), key=lambda t: (votes[t], mean_probs[t], -t))
        assert np.all(typed[mask] == 2 + winner)
    assert np.array_equal(typed[labels < 2], labels[labels < 2])
    with pytest.raises(ValueError, match="outside"):
        analyse_lesions(labels, ref, probs[:, 3:, 5:58, 8:66], (slice(3, 12), slice(5, 58), slice(8, 66)))
