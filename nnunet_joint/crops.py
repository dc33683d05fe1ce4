"""The liver region-of-interest crop of the cascade, defined once.

Stage 2 of the cascade (lesion segmentation / classification) works on the bounding box of the
liver plus a margin in millimetres — the box of *every* liver piece (:func:`roi_components`), so
no lesion in a smaller piece is cut away. The same rule crops training data from a reference mask
(the converters: liver and lesions, every component) and data at inference from a stage-1
prediction (the cascade and cascade-cropped conversion: components of at least
:data:`MIN_COMPONENT_FRACTION` of the largest), so it takes a mask array and a spacing, not a file.

Conventions: index boxes are in **numpy array order** (``z, y, x`` for a SimpleITK image read with
``GetArrayFromImage``); the recorded geometry (spacing, origin, direction) is in **SimpleITK order**
(``x, y, z``), exactly as ``image.GetSpacing()`` returns it, so it can be written back unchanged.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
import SimpleITK as sitk
from scipy import ndimage


#: Beside a converted dataset's crops (nnU-Net ignores them): ``crops.json`` (each case's crop box on
#: its full slice), ``labelsFull/<case>.nii.gz`` (the full-slice reference labels the scores use) and
#: ``roiFull/<case>.nii.gz`` (the liver region whose box is the crop: stage 1's liver, or the reference).
CROPS_FILE = "crops.json"
FULL_LABELS_DIR = "labelsFull"
ROI_DIR = "roiFull"

#: Components of a *predicted* liver smaller than this fraction of the largest one are dropped from
#: the region of interest: specks of stage-1 noise would otherwise widen the crop. A real liver piece
#: (an axial slice often cuts the liver into several) is rarely that small; one that is, and holds a
#: lesion, is lost to the cascade, and the full-slice scores count that as the cascade's error.
MIN_COMPONENT_FRACTION = 0.05


def roi_components(mask: np.ndarray, min_fraction: float = MIN_COMPONENT_FRACTION) -> np.ndarray:
    """Every connected component of a binary mask holding at least ``min_fraction`` of the largest one.

    Not only the largest component: axial slices often split the liver into pieces, and a lesion in
    a smaller piece must stay inside the crop. Full (8- / 26-) connectivity keeps liver parts that
    touch only diagonally together. ``min_fraction=0`` keeps every component (reference masks).

    Raises:
        ValueError: the mask is empty, or ``min_fraction`` is outside [0, 1].
    """
    if not 0.0 <= min_fraction <= 1.0:
        raise ValueError(f"min_fraction must be in [0, 1], got {min_fraction}")
    binary = np.asarray(mask) > 0
    if min_fraction == 0:  # every component: the mask itself (no labelling: a CT volume takes seconds)
        if not binary.any():
            raise ValueError("mask is empty")
        return binary
    labels, n = ndimage.label(binary, structure=ndimage.generate_binary_structure(binary.ndim, binary.ndim))
    if n == 0:
        raise ValueError("mask is empty")
    sizes = np.bincount(labels.ravel())[1:]
    kept = np.zeros(n + 1, dtype=bool)  # a lookup table per label: np.isin on a whole volume is slower
    kept[1:] = sizes >= min_fraction * sizes.max()
    return kept[labels]


def roi_bbox(mask: np.ndarray, spacing: Sequence[float], margin_mm: float,
             min_fraction: float = MIN_COMPONENT_FRACTION) -> tuple[slice, ...]:
    """Bounding box of the mask's region of interest (:func:`roi_components`), grown by ``margin_mm``.

    The margin in voxels per axis is ``ceil(margin_mm / spacing)``, so at least ``margin_mm`` of
    context is kept on every side where the image allows (anisotropic CT gets fewer slices of
    margin along z than pixels in-plane); the box is clipped to the array.

    Args:
        mask: region mask (any non-zero value counts), array order: the reference liver with its
            lesions (conversion), or the stage-1 liver (the cascade).
        spacing: voxel size in mm per array axis (array order, i.e. reversed SimpleITK spacing).
        margin_mm: context around the region, in mm (>= 0).
        min_fraction: see :func:`roi_components`.

    Returns:
        One ``slice(start, stop)`` per array axis.

    Raises:
        ValueError: empty mask, negative margin, or a spacing that does not match the mask.
    """
    mask = np.asarray(mask)
    if len(spacing) != mask.ndim:
        raise ValueError(f"spacing {tuple(spacing)} has {len(spacing)} values for a {mask.ndim}-D mask")
    if not margin_mm >= 0:  # also refuses NaN
        raise ValueError(f"margin_mm must be >= 0, got {margin_mm}")
    if any(not s > 0 for s in spacing):
        raise ValueError(f"spacing must be positive, got {tuple(spacing)}")
    region = roi_components(mask, min_fraction)
    box = []
    for axis, (size, step) in enumerate(zip(mask.shape, spacing)):
        other_axes = tuple(a for a in range(mask.ndim) if a != axis)
        present = np.flatnonzero(region.any(axis=other_axes))
        margin = math.ceil(margin_mm / float(step) - 1e-9)  # 10 mm / 0.5 mm is 20, not 21
        box.append(slice(max(0, int(present[0]) - margin), min(size, int(present[-1]) + 1 + margin)))
    return tuple(box)


@dataclass(frozen=True)
class CropBox:
    """Where a crop came from, enough to paste a prediction on it back into the original grid.

    Attributes:
        start: first index per array axis (array order).
        stop: one past the last index per array axis (array order).
        original_size: full array shape (array order).
        original_spacing: SimpleITK spacing of the full image (x, y, z order).
        original_origin: SimpleITK origin of the full image.
        original_direction: SimpleITK direction cosines of the full image (row-major, flat).
    """

    start: tuple[int, ...]
    stop: tuple[int, ...]
    original_size: tuple[int, ...]
    original_spacing: tuple[float, ...]
    original_origin: tuple[float, ...]
    original_direction: tuple[float, ...]

    def __post_init__(self) -> None:
        n = len(self.original_size)
        if not (len(self.start) == len(self.stop) == n):
            raise ValueError("start, stop and original_size need one value per axis")
        for a, b, size in zip(self.start, self.stop, self.original_size):
            if not 0 <= a < b <= size:
                raise ValueError(f"crop {self.start}..{self.stop} does not fit in {self.original_size}")

    @classmethod
    def from_image(cls, image: sitk.Image, box: Sequence[slice]) -> "CropBox":
        """Record ``box`` (array order, as from :func:`roi_bbox`) on ``image``'s grid."""
        size = tuple(int(s) for s in reversed(image.GetSize()))
        start = tuple(int(s.indices(n)[0]) for s, n in zip(box, size))
        stop = tuple(int(s.indices(n)[1]) for s, n in zip(box, size))
        return cls(start, stop, size, tuple(image.GetSpacing()), tuple(image.GetOrigin()), tuple(image.GetDirection()))

    @property
    def slices(self) -> tuple[slice, ...]:
        """The crop as array-order slices."""
        return tuple(slice(a, b) for a, b in zip(self.start, self.stop))

    @property
    def shape(self) -> tuple[int, ...]:
        """Shape of the cropped array (array order)."""
        return tuple(b - a for a, b in zip(self.start, self.stop))

    def crop_image(self, image: sitk.Image) -> sitk.Image:
        """Crop a SimpleITK image; SimpleITK's slicing shifts the origin along the direction cosines."""
        if tuple(reversed(image.GetSize())) != self.original_size:
            raise ValueError(f"image size {image.GetSize()} is not the recorded {tuple(reversed(self.original_size))}")
        sitk_slices = tuple(reversed(self.slices))  # SimpleITK indexes x, y, z
        return image[sitk_slices]

    def crop_array(self, array: np.ndarray) -> np.ndarray:
        """Crop an array in array order (a leading channel axis is allowed)."""
        lead = (slice(None),) * (array.ndim - len(self.original_size))
        return array[lead + self.slices]

    def paste(self, cropped: np.ndarray, fill: Any = 0) -> np.ndarray:
        """Put a cropped array back into a full-size array filled with ``fill`` outside the box.

        A leading channel axis (e.g. class probabilities) is kept.
        """
        cropped = np.asarray(cropped)
        lead = cropped.shape[: cropped.ndim - len(self.original_size)]
        if cropped.shape[len(lead):] != self.shape:
            raise ValueError(f"cropped array shape {cropped.shape[len(lead):]} is not the box shape {self.shape}")
        full = np.full(lead + self.original_size, fill, dtype=cropped.dtype)
        full[(slice(None),) * len(lead) + self.slices] = cropped
        return full

    def to_dict(self) -> dict[str, list]:
        """Plain JSON-able form (lists, array order for indices, SimpleITK order for geometry)."""
        return {
            "start": list(self.start),
            "stop": list(self.stop),
            "original_size": list(self.original_size),
            "original_spacing": list(self.original_spacing),
            "original_origin": list(self.original_origin),
            "original_direction": list(self.original_direction),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Sequence]) -> "CropBox":
        """Inverse of :meth:`to_dict`."""
        return cls(
            start=tuple(int(v) for v in d["start"]),
            stop=tuple(int(v) for v in d["stop"]),
            original_size=tuple(int(v) for v in d["original_size"]),
            original_spacing=tuple(float(v) for v in d["original_spacing"]),
            original_origin=tuple(float(v) for v in d["original_origin"]),
            original_direction=tuple(float(v) for v in d["original_direction"]),
        )


def crop_to_roi(image: sitk.Image, mask: np.ndarray, margin_mm: float,
                min_fraction: float = MIN_COMPONENT_FRACTION) -> CropBox:
    """The :class:`CropBox` of ``image`` around the region of ``mask`` (array order), see :func:`roi_bbox`."""
    spacing_array_order = tuple(reversed(image.GetSpacing()))
    return CropBox.from_image(image, roi_bbox(mask, spacing_array_order, margin_mm, min_fraction))


def cascade_labels(stage2: np.ndarray, liver: np.ndarray) -> np.ndarray:
    """The cascade's final label map from stage 2's labels pasted on the full image and stage 1's liver.

    Stage 2's lesions are kept wherever it found them (inside the crop it was given); the liver
    label is stage 1's, elsewhere. Lesions are *not* restricted to the stage-1 liver: measured on
    the phantom, a stage-1 model trained on LiTS (Dice 0.93 against liver and lesions on the Sheba
    slices) left about 38 % of the lesion pixels outside its liver mask — hypodense lesions at the
    liver's edge look like background to it — so that restriction cut true lesions, while stage 2,
    trained on the crops with the same margin, already learns that the margin's kidney and bowel are
    background. ``nnunet_joint_predict`` and the full-slice scores both use this function, so a score
    is what a user gets.
    """
    from nnunet_joint.labels import BACKGROUND, FIRST_LESION_LABEL, LIVER

    labels = np.array(stage2, copy=True)
    liver = np.asarray(liver, dtype=bool)
    if labels.shape != liver.shape:
        raise ValueError(f"stage-2 labels {labels.shape} and stage-1 liver {liver.shape} differ in shape")
    lesion = labels >= FIRST_LESION_LABEL
    labels[liver & ~lesion] = LIVER
    labels[~liver & ~lesion] = BACKGROUND
    return labels
