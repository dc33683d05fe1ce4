"""The label coding and the one vote: metrics and lesions.json agree on the same maps."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_joint import LESION_TYPES
from nnunet_joint.evaluation.metrics import component_types as metric_component_types
from nnunet_joint.evaluation.metrics import joint_slice_type
from nnunet_joint.inference.lesions import analyse_lesions
from nnunet_joint.labels import (
    JOINT_LABELS,
    NO_CALL,
    SEG_LABELS,
    component_types,
    lesion_components,
    lesion_vote,
    majority_type,
    slice_type,
    type_label,
)


def test_coding():
    assert JOINT_LABELS == {"background": 0, "liver": 1, "cyst": 2, "hemangioma": 3, "metastasis": 4}
    assert SEG_LABELS == {"background": 0, "liver": 1, "lesion": 2}
    assert [type_label(t) for t in LESION_TYPES] == [2, 3, 4] == [type_label(i) for i in range(3)]
    with pytest.raises(ValueError):
        type_label(3)


def test_majority_and_ties():
    assert majority_type(np.array([0, 2, 2, 1])) == 2
    assert majority_type(np.array([0, 1])) == 0  # tie without probabilities: earlier type
    assert majority_type(np.array([0, 1]), [0.2, 0.9, 5.0]) == 1  # tie: larger summed probability among the tied
    assert majority_type(np.array([0, 1]), [0.5, 0.5, 0.0]) == 0


def test_lesion_vote_without_pixels_is_no_call_and_ties_go_by_summed_probability():
    assert lesion_vote(np.array([], dtype=int)) == NO_CALL
    assert lesion_vote(np.array([2, 2, 0])) == 2
    # a 1-1 tie: type 1's probabilities sum to 0.3 + 0.5 = 0.8 against type 0's 0.4 + 0.3 = 0.7
    assert lesion_vote(np.array([0, 1]), np.array([[0.4, 0.3], [0.3, 0.5], [0.3, 0.2]])) == 1


def test_no_lesion_fallback_uses_probabilities_inside_the_liver():
    labels = np.array([[0, 1, 1], [0, 1, 0]])
    probs = np.zeros((5, 2, 3))
    probs[2] = [[9, 0.1, 0.1], [9, 0.1, 0]]  # cyst only outside the liver
    probs[3] = [[0, 0.3, 0.3], [0, 0.3, 0]]
    assert slice_type(labels, probs) == 1
    assert slice_type(labels) == NO_CALL
    assert slice_type(np.zeros((2, 3), int), probs) == 0  # no liver either: the whole slice


def test_metrics_and_lesions_json_vote_with_the_same_connectivity_and_ties():
    """A diagonal bridge joins two blobs into one lesion in both; their votes agree, ties included."""
    label_map = np.zeros((1, 6, 6), dtype=np.uint8)
    label_map[0, 0:2, 0:2] = [[3, 3], [2, 2]]  # 2 cyst, 2 hemangioma: a tie
    label_map[0, 2, 2] = 4  # touches (1, 1) at a corner only
    label_map[0, 4:6, 4:6] = 4
    probs = np.zeros((5, 1, 6, 6))
    probs[3] = 0.6  # hemangioma wins the tie of the first lesion by probability
    components, types = component_types(label_map[0], probs[:, 0])
    assert lesion_components(label_map[0] >= 2)[1] == 2
    assert types == [1, 2]
    assert metric_component_types(label_map, probs) == types

    image = sitk.GetImageFromArray(label_map.astype(np.float32)[0])
    type_probs = probs[2:] / np.maximum(probs[2:].sum(0, keepdims=True), 1e-9)
    typed, lesions = analyse_lesions(label_map, image, type_probs)
    by_size = sorted(lesions, key=lambda e: e["voxels"], reverse=True)
    assert [e["voxels"] for e in by_size] == [5, 4]
    assert [e["type"] for e in by_size] == ["hemangioma", "metastasis"]
    # the slice: 2 cyst, 2 hemangioma and 1 + 4 metastasis pixels; without the 4-pixel lesion the
    # 2-2-1 count ties and hemangioma's probability (0.6 per pixel) breaks it
    assert joint_slice_type(label_map, probs) == 2
    label_map[0, 4:6, 4:6] = 0
    assert joint_slice_type(label_map, probs) == 1
