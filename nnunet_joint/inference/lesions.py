"""Per-lesion analysis of a typed label map: what ``lesions.json`` says about each lesion.

The label map uses the project's joint coding (:mod:`nnunet_joint.labels`). A lesion is a
connected component of lesion voxels (any type; the connectivity of :mod:`nnunet_joint.labels`),
so two touching lesions of different predicted types are one lesion; each lesion then gets **its
own** type by the project's vote over its voxels. (The papers vote once per slice, which is the
same thing when a slice holds one lesion, as every Sheba slice does.)

Geometry comes from the input image (SimpleITK), so sizes are in mm and the centroid is in
patient coordinates, whatever the spacing, origin and direction.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import SimpleITK as sitk
from scipy import ndimage
from scipy.spatial import ConvexHull, QhullError
from scipy.spatial.distance import pdist

from nnunet_joint import LESION_TYPES
from nnunet_joint.labels import FIRST_LESION_LABEL, lesion_components, lesion_mask, lesion_vote, type_label


def _slice_diameter(mask_2d: np.ndarray, spacing_yx: tuple[float, float],
                    origin_yx: tuple[int, int] = (0, 0)) -> float:
    """Longest distance (mm) between centres of two boundary pixels of a 2-D mask.

    ``mask_2d`` may be cut out of a larger slice at ``origin_yx``; the points get their place in
    the slice back, so the number is the one the whole slice gives.
    """
    boundary = mask_2d & ~ndimage.binary_erosion(mask_2d, border_value=0)
    points = (np.argwhere(boundary) + np.asarray(origin_yx)) * np.asarray(spacing_yx, dtype=float)
    if len(points) < 2:
        return 0.0
    if len(points) > 3:
        try:  # the farthest pair lies on the convex hull; far fewer points to compare
            points = points[ConvexHull(points).vertices]
        except QhullError:  # collinear points: every point is on the "hull"
            pass
    return float(pdist(points).max())


def longest_diameter_mm(mask_zyx: np.ndarray, spacing_zyx: tuple[float, float, float],
                        origin_zyx: tuple[int, int, int] = (0, 0, 0)) -> float:
    """Longest in-plane diameter: max over slices of the max pairwise distance of boundary pixels.

    Distances are between pixel centres (a disc of radius ``r`` pixels measures ``2 r`` pixels),
    in-plane only as in RECIST, which measures on axial slices. ``mask_zyx`` may be a box cut
    out of a larger mask at ``origin_zyx`` holding the whole lesion (the result is the same).
    """
    spacing_yx = (float(spacing_zyx[1]), float(spacing_zyx[2]))
    zs = np.flatnonzero(mask_zyx.any(axis=(1, 2)))
    return max((_slice_diameter(mask_zyx[z], spacing_yx, tuple(origin_zyx[1:])) for z in zs), default=0.0)


def analyse_lesions(
    label_map: np.ndarray,
    reference: sitk.Image,
    type_probabilities: np.ndarray | None = None,
    probabilities_box: tuple[slice, ...] | None = None,
) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """Describe each connected lesion and give all its voxels the lesion's voted type.

    Args:
        label_map: joint label map in array order ``(z, y, x)``; a 2-D reference has ``z == 1``.
        reference: the input image; its geometry turns indices into mm and patient coordinates.
            2-D images and one-slice 3-D images are "slices" (area, 2-D connectivity);
            others are volumes (volume, 3-D connectivity).
        type_probabilities: ``(len(LESION_TYPES), z, y, x)`` per-voxel probability of each type
            given that the voxel is a lesion (rows sum to 1 on lesion voxels), or ``None``.
        probabilities_box: where ``type_probabilities`` lies in the label map (array-order slices,
            e.g. the cascade's crop), when it covers a box rather than the whole map; every lesion
            voxel must lie inside it.

    Each lesion is measured inside its own bounding box, so the time grows with the lesions'
    size, not with the number of lesions times the image size.

    Returns:
        The label map with every lesion's voxels set to its voted type, and one entry per lesion,
        largest first. Ties in the vote go to the type with the larger summed probability
        (then to the earlier type in ``LESION_TYPES``).
    """
    label_map = np.asarray(label_map)
    if label_map.ndim != 3:
        raise ValueError(f"label_map must be (z, y, x), got shape {label_map.shape}")
    ref_size = tuple(reversed(reference.GetSize()))
    if reference.GetDimension() == 2:
        ref_size = (1, *ref_size)
    if label_map.shape != ref_size:
        raise ValueError(f"label_map shape {label_map.shape} does not match the reference image {ref_size}")
    spacing_xyz = list(reference.GetSpacing()) + ([1.0] if reference.GetDimension() == 2 else [])
    spacing_zyx = tuple(reversed(spacing_xyz))
    is_slice = reference.GetDimension() == 2 or label_map.shape[0] == 1

    lesions = lesion_mask(label_map)
    components, n = lesion_components(lesions[0] if is_slice else lesions)
    if is_slice:
        components = components[None]
    box_start = [0, 0, 0] if probabilities_box is None else [int(b.start or 0) for b in probabilities_box]
    if type_probabilities is not None:
        box_shape = tuple(type_probabilities.shape[1:])
        expected = label_map.shape if probabilities_box is None else tuple(
            len(range(*b.indices(n))) for b, n in zip(probabilities_box, label_map.shape))
        if box_shape != expected:
            raise ValueError(f"type_probabilities cover {box_shape}, not the box {expected}")
    typed = label_map.copy()
    entries = []
    for index, objects in enumerate(ndimage.find_objects(components), start=1):
        if objects is None:
            continue
        mask = components[objects] == index  # the lesion inside its bounding box
        types = label_map[objects][mask].astype(np.int64) - FIRST_LESION_LABEL
        votes = np.bincount(types, minlength=len(LESION_TYPES))[: len(LESION_TYPES)]
        pixel_probabilities = probabilities = None
        if type_probabilities is not None:
            local = tuple(slice(o.start - b, o.stop - b) for o, b in zip(objects, box_start))
            if any(s.start < 0 or s.stop > n for s, n in zip(local, type_probabilities.shape[1:])):
                raise ValueError(f"lesion at {objects} lies outside the probabilities' box {probabilities_box}")
            pixel_probabilities = type_probabilities[(slice(None), *local)][:, mask]
            probabilities = pixel_probabilities.mean(axis=1)  # reported per lesion
        winner = lesion_vote(types, pixel_probabilities)
        typed[objects][mask] = type_label(winner)  # a view: writes into typed
        origin = tuple(int(o.start) for o in objects)
        entries.append(_entry(mask, origin, votes, probabilities, winner, reference, spacing_zyx, is_slice))
    entries.sort(key=lambda e: -e["voxels"])
    for i, e in enumerate(entries, start=1):
        e["id"] = i
    return typed, [{"id": e.pop("id"), **e} for e in entries]


def _entry(mask: np.ndarray, origin_zyx: tuple[int, int, int], votes: np.ndarray, probabilities: np.ndarray | None,
           winner: int, reference: sitk.Image, spacing_zyx: tuple[float, ...], is_slice: bool) -> dict[str, Any]:
    """One lesion's entry; ``mask`` is the lesion inside its bounding box, which starts at ``origin_zyx``."""
    count = int(mask.sum())
    centroid_zyx = (np.argwhere(mask) + np.asarray(origin_zyx)).mean(axis=0)
    index_xyz = [float(v) for v in reversed(centroid_zyx)]
    if reference.GetDimension() == 2:
        index_xyz = index_xyz[:2]
    centroid = reference.TransformContinuousIndexToPhysicalPoint(index_xyz)
    entry: dict[str, Any] = {
        "type": LESION_TYPES[winner],
        "type_votes": {t: int(v) for t, v in zip(LESION_TYPES, votes)},
        "probabilities": None if probabilities is None else {t: round(float(p), 4)
                                                              for t, p in zip(LESION_TYPES, probabilities)},
        "voxels": count,
    }
    pixel_area = float(spacing_zyx[1] * spacing_zyx[2])
    if is_slice:
        entry["area_mm2"] = round(count * pixel_area, 4)
    else:
        entry["volume_mm3"] = round(count * pixel_area * float(spacing_zyx[0]), 4)
    entry["longest_diameter_mm"] = round(longest_diameter_mm(mask, spacing_zyx, origin_zyx), 3)
    entry["slices"] = [int(z) + origin_zyx[0] for z in np.flatnonzero(mask.any(axis=(1, 2)))]
    entry["centroid_mm"] = [round(float(c), 3) for c in centroid]
    entry["centroid_index"] = [round(v, 3) for v in index_xyz]
    return entry
