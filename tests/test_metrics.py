"""Metrics on tiny hand-made arrays with exact expected values."""

from __future__ import annotations

import json

import numpy as np
import pytest

from nnunet_joint.evaluation.metrics import (
    NO_CALL,
    SliceResult,
    classification_report,
    collapsed_type,
    component_types,
    dice,
    evaluate_slice,
    format_mean_std,
    global_dice,
    head_type,
    joint_slice_type,
    label_lesions,
    lesion_dice,
    liver_dice,
    summarise,
)

CYST, MET = 2, 4  # joint labels (hemangioma is 3)


def recall_and_hit(prediction: np.ndarray, reference: np.ndarray) -> tuple[float | None, bool | None]:
    """A slice's lesion recall and success term as the evaluation computes them."""
    result = evaluate_slice("case", 0, prediction, reference)
    return result.recall, result.success


def grid(rows: str) -> np.ndarray:
    """Label map from rows of digits, e.g. ``grid("0120 0000")``."""
    return np.array([[int(c) for c in row] for row in rows.split()], dtype=np.uint8)


# ----------------------------------------------------------------------------- segmentation


def test_lesion_dice_counts_lesion_types_together():
    # reference lesion 3 px, prediction 3 px, overlap 2 px -> 2*2/(3+3)
    reference = grid("0220 0200 0000 0000")
    prediction = grid("0340 0000 0400 0000")  # other lesion types still count as lesion
    assert lesion_dice(prediction, reference) == pytest.approx(4 / 6)
    recall, hit = recall_and_hit(prediction, reference)
    assert recall == pytest.approx(2 / 3) and hit is True


def test_liver_label_is_not_lesion():
    reference = grid("1122 1100")
    prediction = grid("1111 1111")
    assert lesion_dice(prediction, reference) == 0.0
    assert recall_and_hit(prediction, reference) == (0.0, False)


def test_empty_conventions():
    empty = np.zeros((4, 4), np.uint8)
    lesion = grid("0000 0220 0000 0000")
    assert lesion_dice(empty, empty) == 1.0
    assert lesion_dice(lesion, empty) == 0.0
    assert lesion_dice(empty, lesion) == 0.0
    assert recall_and_hit(lesion, empty) == (None, None)
    assert recall_and_hit(empty, lesion) == (0.0, False)


def test_singleton_axis_is_squeezed_and_shape_mismatch_refused():
    reference = grid("22 00")
    assert lesion_dice(reference[None], reference) == 1.0
    with pytest.raises(ValueError, match="shape"):
        lesion_dice(np.zeros((3, 2)), reference)


def test_3d_case_is_one_unit():
    reference = np.zeros((2, 2, 2), np.uint8)
    reference[0, 0, 0] = reference[1, 1, 1] = 2
    prediction = np.zeros_like(reference)
    prediction[1, 1, 1] = prediction[1, 0, 0] = 2
    assert lesion_dice(prediction, reference) == pytest.approx(2 * 1 / (2 + 2))


def test_liver_dice_takes_boolean_masks():
    reference = grid("1120 1100") >= 1  # lesion datasets: liver includes its lesions
    prediction = grid("1100 1110") >= 1
    assert liver_dice(prediction, reference) == pytest.approx(2 * 4 / (5 + 5))
    assert dice(np.zeros((2, 2), bool), np.zeros((2, 2), bool)) == 1.0


def test_global_dice_pools_counts_unlike_mean_dice():
    big = evaluate_slice("a", 0, grid("2222 2222"), grid("2222 2222"))  # tp 8
    small = evaluate_slice("b", 0, grid("2000 0000"), grid("0002 0000"))  # fp 1 fn 1
    assert (big.tp, big.fp, big.fn) == (8, 0, 0)
    assert (small.tp, small.fp, small.fn) == (0, 1, 1)
    assert global_dice([big, small]) == pytest.approx(16 / 18)
    assert np.mean([big.dice, small.dice]) == pytest.approx(0.5)
    assert small.success is False and big.success is True


# ----------------------------------------------------------------------------- classification


def test_majority_vote_with_minority_type():
    label_map = grid("0133 1134 1113 1111")  # 3 hemangioma px, 1 metastasis px
    assert joint_slice_type(label_map) == 1
    assert joint_slice_type(label_map[None]) == 1


def test_majority_vote_is_not_probability_weighted():
    label_map = grid("0344 0330")  # 3 hemangioma px vs 2 metastasis px
    probabilities = np.zeros((5, 2, 4))
    probabilities[4] = 1.0  # metastasis "probable" everywhere: must not override the vote
    assert joint_slice_type(label_map, probabilities) == 1


def test_tie_without_probabilities_takes_lowest_index():
    label_map = grid("0344 0220")  # 2 cyst, 1 hem, 2 met -> cyst and metastasis tie
    assert joint_slice_type(label_map) == 0
    label_map = grid("0344 0330")  # 3 hem vs 2 met
    assert joint_slice_type(label_map) == 1


def test_tie_broken_by_probability_sum_over_lesion_pixels():
    label_map = grid("0244 0200")  # cyst 2, met 2
    probabilities = np.zeros((5, 2, 4))
    probabilities[2][label_map == CYST] = 0.3
    probabilities[4][label_map == MET] = 0.9
    probabilities[2][0, 0] = 100.0  # outside the lesion: ignored
    assert joint_slice_type(label_map, probabilities) == 2


def test_fallback_uses_probabilities_inside_predicted_liver():
    label_map = grid("0011 0011")
    probabilities = np.zeros((5, 2, 4))
    probabilities[2, :, :2] = 0.9  # cyst probable outside the liver: ignored
    probabilities[3, :, 2:] = [[0.2, 0.3], [0.1, 0.1]]  # hemangioma sum 0.7 in the liver
    probabilities[4, :, 2:] = [[0.4, 0.0], [0.0, 0.2]]  # metastasis sum 0.6
    assert joint_slice_type(label_map, probabilities) == 1
    assert joint_slice_type(label_map[None], probabilities[:, None]) == 1  # nnU-Net's 1 x H x W


def test_fallback_without_liver_uses_whole_slice():
    label_map = np.zeros((2, 2), np.uint8)
    probabilities = np.zeros((5, 2, 2))
    probabilities[2] = [[0.1, 0.1], [0.1, 0.1]]  # cyst 0.4
    probabilities[4] = [[0.35, 0.0], [0.0, 0.0]]  # metastasis 0.35
    assert joint_slice_type(label_map, probabilities) == 0


def test_no_lesion_no_probabilities_is_no_call():
    assert joint_slice_type(grid("0110 0000")) == NO_CALL


def test_probabilities_shape_checked():
    with pytest.raises(ValueError, match="channels"):
        joint_slice_type(grid("01 00"), np.zeros((3, 2, 2)))
    with pytest.raises(ValueError, match="spatial"):
        joint_slice_type(grid("01 00"), np.zeros((5, 3, 2)))


def test_component_types_per_connected_lesion_with_diagonal_connectivity():
    label_map = grid(
        "33000 "
        "04000 "  # diagonal to the 3s: same lesion (hem 2, met 1 -> hem)
        "00002 "
        "00044 "  # second lesion: cyst 1, met 2 -> met
    )
    components, count = label_lesions(label_map)
    assert count == 2
    assert components[1, 1] == components[0, 0] == 1
    assert component_types(label_map) == [1, 2]
    assert component_types(np.zeros((3, 3))) == []


def test_head_type_is_argmax():
    assert head_type([0.2, 0.5, 0.3]) == 1
    assert head_type([0.4, 0.2, 0.4]) == 0
    with pytest.raises(ValueError):
        head_type([0.5, 0.5])


def _classified(true: list[int], pred: list[int], fold: int = 0) -> list[SliceResult]:
    return [
        SliceResult(f"c{i}", fold, 1.0, 1.0, 1, 0, 0, True, true_type=t, pred_type=p)
        for i, (t, p) in enumerate(zip(true, pred))
    ]


def test_confusion_matrix_recall_and_no_call_exact():
    true = [0, 0, 0, 1, 1, 2, 2, 2]
    pred = [0, 1, NO_CALL, 1, 1, 2, 0, 2]
    report = classification_report(_classified(true, pred))
    assert report["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 2]]
    assert report["no_call"] == [1, 0, 0]
    assert report["cls_acc"] == pytest.approx(5 / 8)  # no call counts as wrong
    assert report["per_class_recall"] == pytest.approx({"cyst": 1 / 3, "hemangioma": 1.0, "metastasis": 2 / 3})
    assert report["support"] == [3, 2, 3]


def test_predicted_counts_and_collapse_flag_on_hand_made_predictions():
    # 10 slices of each type; a classifier that calls 28 of 30 "cyst" (93 %) has collapsed
    true = [0] * 10 + [1] * 10 + [2] * 10
    collapsed = classification_report(_classified(true, [0] * 28 + [2, NO_CALL]))
    assert collapsed["true_counts"] == {"cyst": 10, "hemangioma": 10, "metastasis": 10, "no call": 0}
    assert collapsed["predicted_counts"] == {"cyst": 28, "hemangioma": 0, "metastasis": 1, "no call": 1}
    assert collapsed["collapsed_to"] == "cyst"
    # the ten cysts and the one metastasis called right: near the majority share, a collapse, not learning
    assert collapsed["cls_acc"] == pytest.approx(11 / 30)
    # 18 of 30 (60 %) is the limit itself, not above it; 19 of 30 is above
    at_limit = [2] * 18 + [0] * 6 + [1] * 6
    assert classification_report(_classified(true, at_limit))["collapsed_to"] is None
    assert classification_report(_classified(true, [2] * 19 + [0] * 6 + [1] * 5))["collapsed_to"] == "metastasis"
    # no calls are not type calls: every call "cyst" among many no calls is a collapse; an empty row has no flag
    assert collapsed_type({"cyst": 1, "hemangioma": 1, "metastasis": 1, "no call": 27}) is None
    assert collapsed_type({"cyst": 5, "hemangioma": 0, "metastasis": 0, "no call": 5}) == "cyst"
    assert collapsed_type({"cyst": 0, "hemangioma": 0, "metastasis": 0, "no call": 0}) is None


def test_lesion_precision_beside_recall():
    ref = grid("2222 0000")
    over = evaluate_slice("over", 0, grid("2222 2222"), ref)  # tp 4, fp 4: recall 1, precision 1/2
    summary = summarise([over, evaluate_slice("none", 0, grid("0000 0000"), ref)])  # nothing predicted
    metrics = summary["per_fold"][0]["metrics"]
    assert metrics["recall"] == {"value": pytest.approx(0.5), "n": 2}  # 1 and 0
    assert metrics["precision"] == {"value": pytest.approx(0.5), "n": 1}  # undefined without a prediction


def test_unclassified_slices_are_left_out():
    results = _classified([0, 1], [0, 0]) + [SliceResult("seg", 0, 1.0, 1.0, 1, 0, 0, True, true_type=2)]
    report = classification_report(results)
    assert report["n"] == 2
    assert report["per_class_recall"]["metastasis"] is None  # no support
    assert classification_report(_classified([], []))["cls_acc"] is None


# ----------------------------------------------------------------------------- aggregation


def test_summarise_mean_std_over_folds_exact():
    ref = grid("2222 0000")
    results = [
        # fold 0: dice 1 and 2*2/(2+4) -> mean 5/6; pooled tp 6 fp 0 fn 2 -> 12/14
        evaluate_slice("a", 0, grid("2222 0000"), ref, true_type=0, pred_type=0),
        evaluate_slice("b", 0, grid("2200 0000"), ref, true_type=1, pred_type=0),
        # fold 1: prediction 1 px of 4 -> dice 2/5, recall 1/4; then a slice without any lesion
        evaluate_slice("c", 1, grid("2000 0000"), ref, true_type=2, pred_type=2),
        evaluate_slice("d", 1, grid("0000 0000"), np.zeros((2, 4)), true_type=2, pred_type=NO_CALL),
    ]
    summary = summarise(results)
    json.dumps(summary)  # plain data only

    fold0, fold1 = summary["per_fold"]
    assert (fold0["fold"], fold0["n_slices"], fold1["n_slices"]) == (0, 2, 2)
    assert fold0["metrics"]["dice"] == {"value": pytest.approx(5 / 6), "n": 2}
    assert fold1["metrics"]["dice"]["value"] == pytest.approx((0.4 + 1.0) / 2)  # both-empty slice = 1
    assert fold1["metrics"]["recall"] == {"value": pytest.approx(0.25), "n": 1}  # empty reference left out
    assert fold0["metrics"]["global_dice"]["value"] == pytest.approx(12 / 14)
    assert fold1["metrics"]["global_dice"]["value"] == pytest.approx(2 / 5)
    assert fold0["metrics"]["cls_acc"]["value"] == pytest.approx(0.5)
    assert fold1["metrics"]["cls_acc"]["value"] == pytest.approx(0.5)
    assert fold1["no_call"] == [0, 0, 1]

    agg = summary["aggregate"]
    assert (agg["n_folds"], agg["n_slices"]) == (2, 4)
    dice_agg = agg["metrics"]["dice"]
    assert dice_agg["mean"] == pytest.approx((5 / 6 + 0.7) / 2)
    assert dice_agg["std"] == pytest.approx((5 / 6 - 0.7) / np.sqrt(2))  # ddof=1: the gap of two folds / sqrt 2
    assert dice_agg["n"] == 4
    assert agg["metrics"]["recall"]["n"] == 3
    gd = agg["metrics"]["global_dice"]
    assert gd["mean"] == pytest.approx((12 / 14 + 0.4) / 2)  # spread over folds: mean and std of fold values
    assert gd["std"] == pytest.approx(abs(12 / 14 - 0.4) / np.sqrt(2))
    # Dice2 itself: TP/FP/FN summed over all four slices (tp 6 + 1, fp 0, fn 2 + 3), not the mean of folds
    assert gd["pooled"] == pytest.approx(2 * 7 / (2 * 7 + 0 + 5))
    assert agg["metrics"]["success_rate"]["mean"] == pytest.approx(1.0)
    assert agg["metrics"]["liver_dice"] == {"mean": None, "std": None, "n": 0, "n_folds": 0}
    assert "pooled" not in agg["metrics"]["dice"]  # only Dice2 is pooled
    assert agg["confusion_matrix"] == [[1, 0, 0], [1, 0, 0], [0, 0, 1]]
    assert agg["no_call"] == [0, 0, 1]
    assert format_mean_std(dice_agg) == "0.77 ± 0.09"
    assert format_mean_std({"mean": 0.5, "std": None}) == "0.50 (1 fold)"
    assert format_mean_std(agg["metrics"]["liver_dice"]) == "–"


def test_std_over_three_folds_is_the_sample_std_and_undefined_for_one_fold():
    results = [SliceResult(f"c{f}", f, d, d, 1, 0, 0, True) for f, d in enumerate([0.5, 0.6, 1.0])]
    metrics = summarise(results)["aggregate"]["metrics"]["dice"]
    assert metrics["mean"] == pytest.approx(0.7)
    assert metrics["std"] == pytest.approx(np.sqrt(((0.2) ** 2 + 0.1**2 + 0.3**2) / 2))
    assert metrics["std"] == pytest.approx(0.2645751311064591)
    assert summarise(results[:1])["aggregate"]["metrics"]["dice"]["std"] is None


def test_slice_result_to_dict_is_json():
    result = evaluate_slice("a", 2, grid("2200"), grid("2000"), true_type=0, pred_type=1, type_probs=np.array([0.2, 0.7, 0.1]))
    data = json.loads(json.dumps(result.to_dict()))
    assert data["type_probs"] == [0.2, 0.7, 0.1]
    assert data["dice"] == pytest.approx(2 / 3) and data["fold"] == 2


def test_cases_without_segmentation_have_no_lesion_metrics():
    classified = evaluate_slice("cls", 0, None, None, true_type=1, pred_type=1, type_probs=[0.1, 0.8, 0.1])
    segmented = evaluate_slice("seg", 0, grid("2200"), grid("2000"), true_type=0, pred_type=1)
    assert (classified.dice, classified.recall, classified.success) == (None, None, None)
    metrics = summarise([classified, segmented])["per_fold"][0]["metrics"]
    assert metrics["dice"] == {"value": pytest.approx(2 / 3), "n": 1}
    assert metrics["global_dice"] == {"value": pytest.approx(2 / 3), "n": 1}
    assert metrics["cls_acc"] == {"value": 0.5, "n": 2}
    only_cls = summarise([classified])["aggregate"]["metrics"]
    assert only_cls["global_dice"]["mean"] is None and only_cls["cls_acc"]["mean"] == 1.0
    assert only_cls["global_dice"]["pooled"] is None  # no segmented slice: no Dice2, not 1.0


def test_pooled_dice2_weighs_folds_by_their_lesion_pixels():
    # fold 0: one large lesion found exactly (tp 16); fold 1: one small lesion missed (fn 1, fp 1)
    big = grid("2222 2222 2222 2222")
    results = [evaluate_slice("a", 0, big, big), evaluate_slice("b", 1, grid("2000"), grid("0002"))]
    gd = summarise(results)["aggregate"]["metrics"]["global_dice"]
    assert (gd["mean"], gd["std"]) == (pytest.approx(0.5), pytest.approx(np.sqrt(0.5)))  # folds 1.0 and 0.0, ddof 1
    assert gd["pooled"] == pytest.approx(32 / 34)  # 2*16 / (2*16 + 1 + 1)
