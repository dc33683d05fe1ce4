"""The label coding and the lesion-type vote, defined once for conversion, training, inference and metrics.

Label maps:

* segmentation datasets (Dataset502/503): 0 background, 1 liver, 2 lesion;
* joint datasets and every typed map we write (Dataset504, ``lesions.nii.gz``): 0 background,
  1 liver, ``2 + i`` for lesion type ``LESION_TYPES[i]`` (2 cyst, 3 hemangioma, 4 metastasis).

"Lesion" is ``label >= 2`` in both, so lesion masks and Dice merge the types.

**The vote.** A slice's (or a connected lesion's) type is the majority of its lesion pixels'
types; ties go to the type with the larger summed probability when probabilities are given, then
to the earlier type in :data:`LESION_TYPES`, so the result is deterministic. Without any lesion
pixel a joint slice falls back to the type with the largest summed probability inside the
predicted liver (the whole slice if no liver either) — or :data:`NO_CALL` without probabilities.

**Connected lesions** use full connectivity (8-neighbourhood in 2-D, 26 in 3-D): pixels that touch
at a corner belong to one lesion, as a reader sees them. The metrics and ``lesions.json`` use the
same rule.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy import ndimage

from nnunet_joint import LESION_TYPES

BACKGROUND = 0
LIVER = 1
#: Label of the first lesion type; type index = label - FIRST_LESION_LABEL.
FIRST_LESION_LABEL = 2
SEG_LABELS: dict[str, int] = {"background": BACKGROUND, "liver": LIVER, "lesion": FIRST_LESION_LABEL}
JOINT_LABELS: dict[str, int] = {"background": BACKGROUND, "liver": LIVER,
                                **{t: FIRST_LESION_LABEL + i for i, t in enumerate(LESION_TYPES)}}
N_JOINT_CLASSES = len(JOINT_LABELS)
#: Predicted type of a joint prediction without lesion pixels and without probabilities.
NO_CALL = -1


def type_index(lesion_type: str | int) -> int:
    """Index in :data:`LESION_TYPES` of a lesion type given by name or index (``"hemangioma"`` or ``1`` -> 1).

    Raises:
        ValueError: an unknown name, an index out of range, or anything else (a bool is no index).
    """
    if isinstance(lesion_type, str) and lesion_type in LESION_TYPES:
        return LESION_TYPES.index(lesion_type)
    if (isinstance(lesion_type, (int, np.integer)) and not isinstance(lesion_type, bool)
            and 0 <= lesion_type < len(LESION_TYPES)):
        return int(lesion_type)
    raise ValueError(f"no lesion type {lesion_type!r}")


def type_label(lesion_type: str | int) -> int:
    """Joint label of a lesion type given by name or index (``"hemangioma"`` or ``1`` -> 3)."""
    return FIRST_LESION_LABEL + type_index(lesion_type)


def lesion_mask(label_map: np.ndarray) -> np.ndarray:
    """Boolean lesion mask, all types merged: ``label >= 2``."""
    return np.asarray(label_map) >= FIRST_LESION_LABEL


def lesion_components(mask: np.ndarray) -> tuple[np.ndarray, int]:
    """Connected lesions of a boolean mask, full connectivity in the mask's own dimension."""
    mask = np.asarray(mask, dtype=bool)
    components, count = ndimage.label(mask, structure=ndimage.generate_binary_structure(mask.ndim, mask.ndim))
    return components, int(count)


def majority_type(type_indices: np.ndarray, probability_sums: Sequence[float] | None = None) -> int:
    """The vote: most frequent type index; ties by larger summed probability, then the earlier type."""
    votes = np.bincount(np.asarray(type_indices, dtype=np.int64), minlength=len(LESION_TYPES))[:len(LESION_TYPES)]
    tied = np.flatnonzero(votes == votes.max())
    if len(tied) > 1 and probability_sums is not None:
        sums = np.asarray(probability_sums, dtype=np.float64)[tied]
        tied = tied[sums == sums.max()]
    return int(tied[0])


def lesion_vote(type_indices: np.ndarray, type_probabilities: np.ndarray | None = None) -> int:
    """The type of a set of lesion pixels (a slice, a connected lesion, a patch) by the module's vote.

    Args:
        type_indices: each lesion pixel's type index.
        type_probabilities: ``(types, pixels)``, each pixel's type probabilities (optional); their
            sums over the pixels break ties.

    Returns:
        The type index, or :data:`NO_CALL` when there is no lesion pixel.
    """
    type_indices = np.asarray(type_indices)
    if type_indices.size == 0:
        return NO_CALL
    sums = None if type_probabilities is None else np.asarray(type_probabilities, dtype=np.float64).sum(axis=1)
    return majority_type(type_indices, sums)


def _type_probabilities(probabilities: np.ndarray | None, shape: tuple[int, ...]) -> np.ndarray | None:
    """Joint softmax ``(5, *shape)`` checked against the label map; ``None`` passes through."""
    if probabilities is None:
        return None
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if probabilities.shape[0] != N_JOINT_CLASSES:
        raise ValueError(f"probabilities have {probabilities.shape[0]} channels, expected {N_JOINT_CLASSES} joint "
                         "classes")
    if probabilities[0].size != int(np.prod(shape)):
        raise ValueError(f"probabilities' spatial shape {probabilities.shape[1:]} does not match label map {shape}")
    return probabilities.reshape((N_JOINT_CLASSES, *shape))


def slice_type(label_map: np.ndarray, probabilities: np.ndarray | None = None) -> int:
    """A joint prediction's slice type (type index, or :data:`NO_CALL`), by the module's vote and fallback.

    Args:
        label_map: joint label map of one case.
        probabilities: its softmax ``(5, *label_map.shape)`` (nnU-Net's ``.npz``), optional.
    """
    label_map = np.asarray(label_map)
    probabilities = _type_probabilities(probabilities, label_map.shape)
    lesion = lesion_mask(label_map)
    if lesion.any():
        return lesion_vote(label_map[lesion] - FIRST_LESION_LABEL,
                           None if probabilities is None else probabilities[FIRST_LESION_LABEL:, lesion])
    if probabilities is None:
        return NO_CALL
    liver = label_map >= LIVER
    region = liver if liver.any() else np.ones_like(liver)
    return int(np.argmax(probabilities[FIRST_LESION_LABEL:, region].sum(axis=1)))  # lowest index on ties


def component_types(label_map: np.ndarray, probabilities: np.ndarray | None = None) -> tuple[np.ndarray, list[int]]:
    """Connected lesions (any type) and each one's voted type: ``(components, [type of component 1, ...])``."""
    label_map = np.asarray(label_map)
    probabilities = _type_probabilities(probabilities, label_map.shape)
    components, count = lesion_components(lesion_mask(label_map))
    types = []
    for index in range(1, count + 1):
        inside = components == index
        types.append(lesion_vote(label_map[inside] - FIRST_LESION_LABEL,
                                 None if probabilities is None else probabilities[FIRST_LESION_LABEL:, inside]))
    return components, types
