"""The liver ROI crop rule: exact boxes, margins in mm, clipping, geometry and paste-back."""

from __future__ import annotations

import json

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_joint.crops import CropBox, crop_to_roi, roi_bbox, roi_components


def test_roi_keeps_every_large_enough_piece_and_joins_diagonal_neighbours():
    mask = np.zeros((6, 8), dtype=np.uint8)
    mask[0, 0] = mask[1, 1] = mask[2, 2] = 1  # 3 pixels touching only at corners: one component
    mask[4:6, 4] = 1  # 2 pixels: 2/3 of the largest
    mask[5, 7] = 1  # 1 pixel: 1/3 of the largest
    out = roi_components(mask, min_fraction=0.5)
    assert out.dtype == bool
    assert np.argwhere(out).tolist() == [[0, 0], [1, 1], [2, 2], [4, 4], [5, 4]]
    assert roi_components(mask, min_fraction=0.0).sum() == 6  # every piece
    assert roi_components(mask, min_fraction=1.0).sum() == 3  # the largest only
    assert roi_components(mask, min_fraction=0.4).sum() == 5  # 1/3 < 0.4 <= 2/3: the single pixel dropped


def test_roi_of_empty_mask_or_bad_fraction_raises():
    for fraction in (0.05, 0.0):
        with pytest.raises(ValueError, match="empty"):
            roi_components(np.zeros((3, 3)), min_fraction=fraction)
    with pytest.raises(ValueError, match="min_fraction"):
        roi_components(np.ones((3, 3)), min_fraction=1.5)


def test_roi_bbox_margin_in_mm_with_anisotropic_spacing_ignores_specks():
    mask = np.zeros((10, 12), dtype=np.uint8)
    mask[3:6, 4:8] = 1  # liver rows 3..5, cols 4..7 (12 pixels)
    mask[9, 11] = 1  # a stray pixel, 1/12 of the largest piece
    # rows 2 mm: ceil(1/2) = 1 row of margin; cols 0.5 mm: 2 columns of margin
    assert roi_bbox(mask, spacing=(2.0, 0.5), margin_mm=1.0, min_fraction=0.1) == (slice(2, 7), slice(2, 10))
    # zero margin is the tight box
    assert roi_bbox(mask, spacing=(2.0, 0.5), margin_mm=0, min_fraction=0.1) == (slice(3, 6), slice(4, 8))
    # every piece kept (reference masks): the speck widens the box
    assert roi_bbox(mask, spacing=(2.0, 0.5), margin_mm=0, min_fraction=0.0) == (slice(3, 10), slice(4, 12))


def test_lesion_in_a_second_liver_piece_stays_in_the_crop():
    """The audit's case: the liver falls into two pieces, the lesion in the smaller one."""
    liver = np.zeros((40, 40), dtype=bool)
    liver[5:25, 5:25] = True  # main piece, 400 px
    liver[30:36, 30:36] = True  # second piece, 36 px (9 % of the main one)
    lesion = np.zeros_like(liver)
    lesion[32:34, 32:34] = True
    box = roi_bbox(liver | lesion, spacing=(1.0, 1.0), margin_mm=2.0, min_fraction=0.0)
    assert lesion[box].sum() == lesion.sum() == 4
    # the largest piece alone (the old rule) cut the lesion away entirely
    old = roi_bbox(liver, spacing=(1.0, 1.0), margin_mm=2.0, min_fraction=1.0)
    assert lesion[old].sum() == 0


def test_roi_bbox_exact_multiple_is_not_rounded_up_and_borders_clip():
    mask = np.zeros((4, 30, 30), dtype=bool)
    mask[1:3, 0:5, 20:30] = True
    # z 5 mm: 10/5 = exactly 2 slices; y/x 0.5 mm: 20 pixels
    box = roi_bbox(mask, spacing=(5.0, 0.5, 0.5), margin_mm=10.0)
    assert box == (slice(0, 4), slice(0, 25), slice(0, 30))


@pytest.mark.parametrize("margin", [-1.0, float("nan")])
def test_roi_bbox_rejects_bad_spacing_and_margin(margin):
    with pytest.raises(ValueError, match="spacing"):
        roi_bbox(np.ones((2, 2)), spacing=(1.0, 1.0, 1.0), margin_mm=1)
    with pytest.raises(ValueError, match="margin_mm"):
        roi_bbox(np.ones((2, 2)), spacing=(1.0, 1.0), margin_mm=margin)


def _image(size_zyx=(3, 8, 10), spacing=(0.5, 0.7, 3.0), origin=(10.0, 20.0, 30.0), direction=None) -> sitk.Image:
    array = np.arange(np.prod(size_zyx), dtype=np.int16).reshape(size_zyx)
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(spacing)
    image.SetOrigin(origin)
    if direction is not None:
        image.SetDirection(direction)
    return image


@pytest.mark.parametrize("direction", [None, (-1, 0, 0, 0, -1, 0, 0, 0, 1)])
def test_crop_image_shifts_origin_by_index_times_spacing_along_direction(direction):
    image = _image(direction=direction)
    box = CropBox.from_image(image, (slice(1, 3), slice(2, 5), slice(4, 9)))
    cropped = box.crop_image(image)
    assert cropped.GetSize() == (5, 3, 2)
    assert cropped.GetSpacing() == image.GetSpacing()
    assert cropped.GetDirection() == image.GetDirection()
    d = np.array(image.GetDirection()).reshape(3, 3)
    expected = np.array([10.0, 20.0, 30.0]) + d @ (np.array([4, 2, 1]) * np.array([0.5, 0.7, 3.0]))
    np.testing.assert_allclose(cropped.GetOrigin(), expected)
    # the cropped voxel at index 0 is the physical point of the original index (4, 2, 1)
    np.testing.assert_allclose(cropped.GetOrigin(), image.TransformIndexToPhysicalPoint((4, 2, 1)))
    np.testing.assert_array_equal(sitk.GetArrayFromImage(cropped), sitk.GetArrayFromImage(image)[1:3, 2:5, 4:9])


def test_paste_back_round_trip_and_dict_round_trip():
    image = _image()
    full = sitk.GetArrayFromImage(image)
    box = CropBox.from_image(image, (slice(0, 2), slice(3, 8), slice(1, 4)))
    pasted = box.paste(box.crop_array(full), fill=-7)
    inside = np.zeros(full.shape, dtype=bool)
    inside[0:2, 3:8, 1:4] = True
    np.testing.assert_array_equal(pasted[inside], full[inside])
    assert np.all(pasted[~inside] == -7)

    restored = CropBox.from_dict(json.loads(json.dumps(box.to_dict())))
    assert restored == box
    assert restored.shape == (2, 5, 3)


def test_paste_keeps_a_leading_channel_axis():
    box = CropBox((0, 1), (1, 3), (1, 4), (1.0, 1.0), (0.0, 0.0), (1.0, 0.0, 0.0, 1.0))
    probs = np.ones((5, 1, 2), dtype=np.float32)
    out = box.paste(probs)
    assert out.shape == (5, 1, 4)
    np.testing.assert_array_equal(out[0, 0], [0, 1, 1, 0])


def test_cropbox_refuses_boxes_outside_the_image():
    with pytest.raises(ValueError, match="does not fit"):
        CropBox((0,), (5,), (4,), (1.0,), (0.0,), (1.0,))


def test_crop_to_roi_uses_reversed_sitk_spacing():
    image = _image(size_zyx=(1, 40, 40), spacing=(0.5, 2.0, 1.0))  # x 0.5 mm, y 2 mm
    liver = np.zeros((1, 40, 40), dtype=bool)
    liver[0, 18:22, 18:22] = True
    box = crop_to_roi(image, liver, margin_mm=4.0)
    # y: ceil(4/2) = 2 rows; x: ceil(4/0.5) = 8 columns; z: single slice
    assert box.slices == (slice(0, 1), slice(16, 24), slice(10, 30))
