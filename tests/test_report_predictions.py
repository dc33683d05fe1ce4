"""The report's "what each row predicts" table on hand-made summaries."""

from __future__ import annotations

from nnunet_joint.evaluation.metrics import NO_CALL, evaluate_slice, summarise
from nnunet_joint.evaluation.report.predictions import HANDCRAFTED_LABEL, predictions_table


def _summary(true: list[int], predicted: list[int]) -> dict:
    """A one-fold summary of classified slices without segmentation (a classifier's)."""
    return summarise([evaluate_slice(f"c{i}", 0, None, None, true_type=t, pred_type=p)
                      for i, (t, p) in enumerate(zip(true, predicted))])


def test_collapsed_row_and_counts_and_weights():
    true = [0] * 9 + [1] * 10 + [2] * 12
    collapsed = _summary(true, [2] * 26 + [0] * 5)  # 26 of 31 called metastasis: 84 %
    learning = _summary(true, [0] * 8 + [1] * 11 + [2] * 10 + [NO_CALL] * 2)
    configs = [{"class_weights": {"rule": "lesion-balanced", "weights": [1, 1, 2, 1, 0.5]}}, None]
    table = predictions_table([("Joint (scratch)", "Dataset504_ShebaJoint", collapsed, configs),
                               ("nnU-Net (ShebaJoint)", "Dataset504_ShebaJoint", learning, [None])],
                              handcrafted=_summary(true, true))
    first, second, reference = table.rows
    # collapsed: the first 26 slices (9 cysts, 10 hemangiomas, 7 metastases) called metastasis, the last 5
    # metastases called cyst: 7 right of 31
    assert first == ["Joint (scratch)", "Dataset504_ShebaJoint", "9 / 10 / 12", "5 / 0 / 26",
                     "collapsed to metastasis (26 of 31 calls)", f"{7 / 31:.2f}", "–", "–", "lesion-balanced"]
    # learning: 8 of 9 cysts (the ninth called hemangioma), 10 of 10 hemangiomas, 10 of 12 metastases (2 no
    # calls, counted wrong): 28 right of 31
    assert second[3:7] == ["8 / 11 / 10 (+2 no call)", "no", f"{28 / 31:.2f}", "–"] and second[8] == "–"
    assert reference[0] == HANDCRAFTED_LABEL and reference[3] == "9 / 10 / 12" and reference[4:6] == ["no", "1.00"]
    assert "60%" in table.caption


def test_recall_and_precision_of_a_segmenting_row():
    import numpy as np

    ref = np.array([[2, 2, 2, 2], [0, 0, 0, 0]])
    over = evaluate_slice("a", 0, np.array([[2, 2, 2, 2], [2, 2, 2, 2]]), ref)  # recall 1, precision 0.5
    half = evaluate_slice("b", 0, np.array([[2, 2, 0, 0], [0, 0, 0, 0]]), ref)  # recall 0.5, precision 1
    # a second fold of one slice that found half its lesion exactly: recall 0.5, precision 1
    other = evaluate_slice("c", 1, np.array([[2, 2, 0, 0], [0, 0, 0, 0]]), ref)
    row = predictions_table([("Seg", "Dataset503_ShebaSeg", summarise([over, half, other]), [])]).rows[0]
    # means over the three slices (recall (1 + 0.5 + 0.5) / 3, precision (0.5 + 1 + 1) / 3), not over the two
    # folds' means (0.625 and 0.5; 0.75 and 1)
    assert row[2:8] == ["–", "–", "–", "–", f"{2 / 3:.2f}", f"{2.5 / 3:.2f}"]


def test_a_reference_that_could_not_be_computed_says_why():
    row = predictions_table([], {"error": "fold 0 trains on no hemangioma"}).rows[0]
    assert row[0] == HANDCRAFTED_LABEL and row[2] == "not computed: fold 0 trains on no hemangioma"
    assert row[3:] == ["–"] * 6
