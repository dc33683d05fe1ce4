"""The project's metrics, defined once (docs/study.md, "Metrics").

Every table in the project is computed from these functions, so a number means the same thing
in a benchmark, a fold summary and a report.

Label conventions (the same in segmentation and joint datasets, so one definition serves both):

* segmentation datasets: 0 background, 1 liver, 2 lesion;
* joint datasets: 0 background, 1 liver, 2 cyst, 3 hemangioma, 4 metastasis, i.e. lesion type
  index = label - 2 in the order of :data:`nnunet_joint.LESION_TYPES`;
* "lesion" is ``label >= 2`` in both, so lesion Dice merges all types.

Units: the unit of every slice-wise metric is one case. The Sheba set's cases are 2-D slices;
a case stored as ``1 x H x W`` is squeezed, and a 3-D case is treated as one unit (its Dice is
one number over the whole volume).

Conventions decided here (and tested in ``tests/test_metrics.py``):

* **Empty masks, Dice**: both empty -> 1.0 (nothing to find, nothing found); exactly one empty
  -> 0.0. The Sheba reference lesion is never empty, so this only matters for LiTS-like data.
* **Empty reference, recall and success**: sensitivity and "prediction hits the lesion" are
  undefined without a reference lesion; they are ``None`` for that slice and the slice is left
  out of those means (each summary states the number of slices a metric stands on).
* **Majority vote** (joint framework) and its ties, the no-lesion fallback and lesion
  connectivity are :mod:`nnunet_joint.labels`' (one definition for metrics, figures and
  ``nnunet_joint_predict``).
* **No call**: a joint prediction without any lesion pixel and without probabilities gives
  :data:`NO_CALL` (-1). It counts as a wrong classification in accuracy and per-class recall, and
  appears in the ``no_call`` counts, not in the 3 x 3 confusion matrix.
* **Connected lesions** use full connectivity (8-neighbourhood in 2-D, 26 in 3-D): pixels that
  touch at a corner belong to one lesion, as a reader would see them.
* **Aggregation over folds**: a fold's value is the mean over its slices (Dice2: pooled
  TP/FP/FN over its slices); the aggregate is the mean and the sample standard deviation
  (``ddof=1``, the report's fold SD; ``None`` with one fold, where it is undefined) of the fold
  values, and ``n``, the number of slices the metric stands on in all folds together.
* **Dice2 over folds** (the papers' global Dice, pooled over all validation slices of all folds):
  the aggregate's Dice2 is ``pooled``, TP/FP/FN summed over every validation slice of every
  fold, not the mean of the per-fold Dice2 values (which would weigh a small fold's lesions
  more). The mean and std of the per-fold values stay beside it as the spread over folds.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Iterable, Sequence

import numpy as np
from sklearn.metrics import confusion_matrix, recall_score

from nnunet_joint import LESION_TYPES, labels

#: First lesion label; joint type index = label - LESION_LABEL_OFFSET (the coding of nnunet_joint.labels).
LESION_LABEL_OFFSET = labels.FIRST_LESION_LABEL
#: Number of classes of the joint label map (background, liver, one per lesion type).
N_JOINT_CLASSES = labels.N_JOINT_CLASSES
#: Predicted type when a joint prediction holds no lesion pixel and no probabilities were given.
NO_CALL = labels.NO_CALL
#: Type indices, the order of rows/columns of every confusion matrix.
TYPE_INDICES: tuple[int, ...] = tuple(range(len(LESION_TYPES)))

# ----------------------------------------------------------------------------- helpers


def _squeeze_case(array: np.ndarray) -> np.ndarray:
    """Drop singleton axes so a ``1 x H x W`` slice and an ``H x W`` slice compare equal."""
    array = np.asarray(array)
    squeezed = np.squeeze(array)
    return squeezed if squeezed.ndim >= 1 else array.reshape(1)


def _pair(prediction: np.ndarray, reference: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    prediction, reference = _squeeze_case(prediction), _squeeze_case(reference)
    if prediction.shape != reference.shape:
        raise ValueError(f"prediction shape {prediction.shape} differs from reference shape {reference.shape}")
    return prediction, reference


lesion_mask = labels.lesion_mask


def confusion_counts(prediction: np.ndarray, reference: np.ndarray) -> tuple[int, int, int]:
    """True positives, false positives and false negatives of two boolean masks."""
    prediction, reference = _pair(np.asarray(prediction, bool), np.asarray(reference, bool))
    tp = int(np.count_nonzero(prediction & reference))
    fp = int(np.count_nonzero(prediction & ~reference))
    fn = int(np.count_nonzero(~prediction & reference))
    return tp, fp, fn


def dice_from_counts(tp: int, fp: int, fn: int) -> float:
    """Dice = 2TP / (2TP + FP + FN); 1.0 when both masks are empty (see module conventions)."""
    denominator = 2 * tp + fp + fn
    return 1.0 if denominator == 0 else 2.0 * tp / denominator


def recall_from_counts(tp: int, fn: int) -> float | None:
    """Sensitivity TP / (TP + FN); ``None`` when the reference is empty (undefined)."""
    return None if tp + fn == 0 else tp / (tp + fn)


def precision_from_counts(tp: int, fp: int) -> float | None:
    """Share of predicted lesion pixels that are lesion; ``None`` when nothing was predicted (undefined)."""
    return tp / (tp + fp) if tp + fp else None


def hit_from_counts(tp: int, fn: int) -> bool | None:
    """Whether the prediction overlaps the reference by at least one pixel (a slice's term of the
    success rate); ``None`` when the reference is empty."""
    return None if tp + fn == 0 else tp > 0


# ----------------------------------------------------------------------------- segmentation


def dice(prediction: np.ndarray, reference: np.ndarray) -> float:
    """Dice of two boolean masks of one case (empty conventions in the module docstring)."""
    return dice_from_counts(*confusion_counts(prediction, reference))


def lesion_dice(prediction: np.ndarray, reference: np.ndarray) -> float:
    """Lesion Dice of two label maps, all lesion types merged (one slice's term of Dice1)."""
    return dice(lesion_mask(prediction), lesion_mask(reference))


def liver_dice(prediction: np.ndarray, reference: np.ndarray) -> float:
    """Liver Dice of one case (stage 1) from boolean liver masks.

    Callers build the masks, because "liver" depends on the dataset: ``label >= 1`` in lesion
    datasets (the liver includes its lesions), ``label == 1`` in liver-only datasets.
    """
    return dice(prediction, reference)


def global_dice(results: Iterable["SliceResult"]) -> float:
    """Dice2: Dice of TP/FP/FN pooled over all slices (large lesions weigh more)."""
    tp = fp = fn = 0
    for result in results:
        if result.dice is not None:
            tp, fp, fn = tp + result.tp, fp + result.fp, fn + result.fn
    return dice_from_counts(tp, fp, fn)


# ----------------------------------------------------------------------------- classification


def _squeezed_probabilities(probabilities: np.ndarray | None, shape: tuple[int, ...]) -> np.ndarray | None:
    if probabilities is None:
        return None
    probabilities = np.asarray(probabilities)
    if probabilities[0].size == int(np.prod(shape)):
        return probabilities.reshape((probabilities.shape[0], *shape))
    return probabilities  # labels.slice_type names the mismatch


def joint_slice_type(label_map: np.ndarray, probabilities: np.ndarray | None = None) -> int:
    """A joint prediction's slice type by the project's one vote (:func:`nnunet_joint.labels.slice_type`).

    Singleton axes are dropped first, so nnU-Net's ``1 x H x W`` maps and ``5 x 1 x H x W``
    probabilities work as they are.
    """
    label_map = _squeeze_case(label_map)
    return labels.slice_type(label_map, _squeezed_probabilities(probabilities, label_map.shape))


def label_lesions(label_map: np.ndarray) -> tuple[np.ndarray, int]:
    """Connected lesions of a label map (:func:`nnunet_joint.labels.lesion_components`)."""
    return labels.lesion_components(lesion_mask(_squeeze_case(label_map)))


def component_types(label_map: np.ndarray, probabilities: np.ndarray | None = None) -> list[int]:
    """Voted type of each connected lesion, in the order of :func:`label_lesions`' labels."""
    label_map = _squeeze_case(label_map)
    return labels.component_types(label_map, _squeezed_probabilities(probabilities, label_map.shape))[1]


def head_type(probabilities: Sequence[float]) -> int:
    """Y-Net / classifier slice type: argmax of the head's probabilities (lowest index on ties)."""
    probabilities = np.asarray(probabilities, dtype=np.float64)
    if probabilities.shape != (len(LESION_TYPES),):
        raise ValueError(f"expected {len(LESION_TYPES)} type probabilities, got shape {probabilities.shape}")
    return int(np.argmax(probabilities))


# ----------------------------------------------------------------------------- per slice


@dataclasses.dataclass(frozen=True)
class SliceResult:
    """Everything the summaries need about one evaluated case.

    Attributes:
        case_id: nnU-Net case identifier.
        fold: cross-validation fold the case was validated in.
        dice: lesion Dice of the case; ``None`` when lesions were not evaluated (a classifier
            without segmentation output, a liver-only dataset), which also leaves the case out of
            Dice2.
        recall: lesion sensitivity; ``None`` without a reference lesion.
        tp, fp, fn: lesion pixel counts, pooled into Dice2.
        success: predicted lesion overlaps the reference; ``None`` without a reference lesion.
        true_type: reference type index; ``None`` when unknown (e.g. LiTS).
        pred_type: predicted type index, ``NO_CALL``, or ``None`` when the framework does not
            classify (segmentation baseline).
        type_probs: per-type probabilities behind ``pred_type``, if any.
        liver_dice: stage-1 liver Dice of the case, if evaluated.
    """

    case_id: str
    fold: int
    dice: float | None
    recall: float | None
    tp: int
    fp: int
    fn: int
    success: bool | None
    true_type: int | None = None
    pred_type: int | None = None
    type_probs: tuple[float, ...] | None = None
    liver_dice: float | None = None

    def to_dict(self) -> dict:
        """Plain JSON-serialisable dictionary."""
        return dataclasses.asdict(self) | {"type_probs": None if self.type_probs is None else list(self.type_probs)}


def evaluate_slice(
    case_id: str,
    fold: int,
    prediction: np.ndarray | None,
    reference: np.ndarray | None,
    true_type: int | None = None,
    pred_type: int | None = None,
    type_probs: Sequence[float] | None = None,
    liver_dice: float | None = None,
) -> SliceResult:
    """Compare one case's predicted and reference label maps (lesion = ``label >= 2``).

    Pass ``None`` label maps for a case without segmentation output (classifier baseline, or a
    liver-only dataset where lesion metrics mean nothing): its lesion metrics are ``None``.
    """
    if prediction is None or reference is None:
        tp = fp = fn = 0
        seg: dict = {"dice": None, "recall": None, "success": None}
    else:
        tp, fp, fn = confusion_counts(lesion_mask(prediction), lesion_mask(reference))
        seg = {"dice": dice_from_counts(tp, fp, fn), "recall": recall_from_counts(tp, fn),
               "success": hit_from_counts(tp, fn)}
    return SliceResult(
        case_id=str(case_id),
        fold=int(fold),
        tp=tp,
        fp=fp,
        fn=fn,
        **seg,
        true_type=None if true_type is None else int(true_type),
        pred_type=None if pred_type is None else int(pred_type),
        type_probs=None if type_probs is None else tuple(float(p) for p in type_probs),
        liver_dice=None if liver_dice is None else float(liver_dice),
    )


# ----------------------------------------------------------------------------- aggregation

#: Metric names in the order tables show them.
METRIC_NAMES: tuple[str, ...] = (
    "dice",
    "global_dice",
    "recall",
    "precision",
    "success_rate",
    "cls_acc",
    *(f"recall_{name}" for name in LESION_TYPES),
    "liver_dice",
)


def _mean(values: Sequence[float | None]) -> tuple[float | None, int]:
    defined = [float(v) for v in values if v is not None]
    return (float(np.mean(defined)) if defined else None), len(defined)


def _classified(results: Sequence[SliceResult]) -> list[SliceResult]:
    return [r for r in results if r.true_type is not None and r.pred_type is not None]


#: A row whose predictions put more than this share of its slices on one type is flagged as collapsed.
#: The papers' mix (75 : 71 : 93) puts at most 39 % of the slices on one type, so a classifier that
#: learned anything predicts no type far above that; 60 % is one and a half times it, and well below
#: the 97 % (30 of 31 slices "cyst") of the collapsed LiTS classifier this flag was made for.
COLLAPSE_SHARE = 0.6


def type_counts(type_indices: Iterable[int]) -> dict[str, int]:
    """Slices per type name, plus ``"no call"``: the predicted (or true) types of a set of slices."""
    counts = {name: 0 for name in LESION_TYPES} | {"no call": 0}
    for index in type_indices:
        counts["no call" if index == NO_CALL else LESION_TYPES[index]] += 1
    return counts


def collapsed_type(predicted: dict[str, int], share: float = COLLAPSE_SHARE) -> str | None:
    """The type that more than ``share`` of the type calls fall on (:data:`COLLAPSE_SHARE`; no calls are not
    calls of a type, so they are left out of the count), else ``None``.

    An accuracy near the majority type's share with such a flag is a collapse, not learning. The share is
    absolute: on data where one type is itself more than 60 % of the slices, a model that learned would be
    flagged too; read the flag beside the true counts.
    """
    total = sum(count for name, count in predicted.items() if name != "no call")
    if total == 0:
        return None
    name, count = max(((n, c) for n, c in predicted.items() if n != "no call"), key=lambda item: item[1])
    return name if count / total > share else None


def classification_report(results: Sequence[SliceResult]) -> dict:
    """Accuracy, per-class recall, 3 x 3 confusion matrix and no-call counts of classified slices.

    Only slices with a known true type and a prediction count. ``NO_CALL`` predictions are
    wrong in accuracy and recall; the confusion matrix (rows true, columns predicted, order
    :data:`nnunet_joint.LESION_TYPES`) leaves them out and ``no_call`` counts them per true type.
    """
    classified = _classified(results)
    y_true = [r.true_type for r in classified]
    y_pred = [r.pred_type for r in classified]
    if not classified:
        recalls: list[float | None] = [None] * len(LESION_TYPES)
        matrix = np.zeros((len(LESION_TYPES),) * 2, dtype=int)
        accuracy = None
    else:
        recalls = [float(v) for v in recall_score(y_true, y_pred, labels=list(TYPE_INDICES), average=None, zero_division=0)]
        matrix = confusion_matrix(y_true, y_pred, labels=list(TYPE_INDICES))
        accuracy = float(np.mean(np.asarray(y_true) == np.asarray(y_pred)))
    support = [sum(1 for t in y_true if t == k) for k in TYPE_INDICES]
    no_call = [sum(1 for t, p in zip(y_true, y_pred) if t == k and p == NO_CALL) for k in TYPE_INDICES]
    return {
        "cls_acc": accuracy,
        "n": len(classified),
        "per_class_recall": {name: (recalls[k] if support[k] else None) for k, name in enumerate(LESION_TYPES)},
        "support": support,
        "confusion_matrix": matrix.astype(int).tolist(),
        "no_call": no_call,
        "true_counts": type_counts(y_true),
        "predicted_counts": (predicted := type_counts(y_pred)),
        "collapsed_to": collapsed_type(predicted),
    }


def fold_metrics(results: Sequence[SliceResult]) -> dict[str, dict]:
    """Each metric of one fold as ``{"value": float | None, "n": slices it stands on}``."""
    metrics: dict[str, dict] = {}
    for name, values in (
        ("dice", [r.dice for r in results]),
        ("recall", [r.recall for r in results]),
        ("precision", [None if r.dice is None else precision_from_counts(r.tp, r.fp) for r in results]),
        ("success_rate", [None if r.success is None else float(r.success) for r in results]),
        ("liver_dice", [r.liver_dice for r in results]),
    ):
        value, n = _mean(values)
        metrics[name] = {"value": value, "n": n}
    n_segmented = sum(1 for r in results if r.dice is not None)
    metrics["global_dice"] = {"value": global_dice(results) if n_segmented else None, "n": n_segmented}
    report = classification_report(results)
    metrics["cls_acc"] = {"value": report["cls_acc"], "n": report["n"]}
    for k, name in enumerate(LESION_TYPES):
        metrics[f"recall_{name}"] = {"value": report["per_class_recall"][name], "n": report["support"][k]}
    return {name: metrics[name] for name in METRIC_NAMES}


def summarise(results: Iterable[SliceResult]) -> dict:
    """Per-fold metrics and their mean ± std over folds, as plain JSON-serialisable data.

    Returns:
        ``{"per_fold": [{"fold", "n_slices", "metrics": {name: {"value", "n"}},
        "confusion_matrix", "no_call", "predicted_counts", "collapsed_to"}, ...], "aggregate": {"n_folds",
        "n_slices", "metrics": {name: {"mean", "std", "n", "n_folds"}}, "confusion_matrix", "no_call",
        "true_counts", "predicted_counts", "collapsed_to"}}``: the counts per type name (and ``"no call"``)
        of the classified slices, and the type more than :data:`COLLAPSE_SHARE` of them were called, if any.
        ``std`` is the sample std (``ddof=1``) over the folds where the metric is defined (``None``
        with fewer than two);
        ``n`` counts slices over all folds; matrices and no-call counts are summed over folds.
        A metric defined in no fold has ``mean``/``std`` ``None``. Dice2's entry also has
        ``pooled``: the Dice of TP/FP/FN summed over all slices of all folds, the figure tables
        show as Dice2 (``mean``/``std`` of the per-fold values are its spread over folds).
    """
    results = list(results)
    by_fold: dict[int, list[SliceResult]] = {}
    for result in results:
        by_fold.setdefault(result.fold, []).append(result)

    per_fold = []
    for fold in sorted(by_fold):
        fold_results = by_fold[fold]
        report = classification_report(fold_results)
        per_fold.append(
            {
                "fold": int(fold),
                "n_slices": len(fold_results),
                "metrics": fold_metrics(fold_results),
                "confusion_matrix": report["confusion_matrix"],
                "no_call": report["no_call"],
                "predicted_counts": report["predicted_counts"],
                "collapsed_to": report["collapsed_to"],
            }
        )

    aggregate_metrics = {}
    for name in METRIC_NAMES:
        values = [f["metrics"][name]["value"] for f in per_fold if f["metrics"][name]["value"] is not None]
        aggregate_metrics[name] = {
            "mean": float(np.mean(values)) if values else None,
            "std": float(np.std(values, ddof=1)) if len(values) > 1 else None,
            "n": int(sum(f["metrics"][name]["n"] for f in per_fold)),
            "n_folds": len(values),
        }
    segmented = [r for r in results if r.dice is not None]
    aggregate_metrics["global_dice"]["pooled"] = global_dice(segmented) if segmented else None
    n_types = len(LESION_TYPES)
    matrix = np.zeros((n_types, n_types), dtype=int)
    no_call = np.zeros(n_types, dtype=int)
    for f in per_fold:
        matrix += np.asarray(f["confusion_matrix"], dtype=int)
        no_call += np.asarray(f["no_call"], dtype=int)
    return {
        "per_fold": per_fold,
        "aggregate": {
            "n_folds": len(per_fold),
            "n_slices": len(results),
            "metrics": aggregate_metrics,
            "confusion_matrix": matrix.tolist(),
            "no_call": no_call.tolist(),
            "true_counts": (everything := classification_report(results))["true_counts"],
            "predicted_counts": everything["predicted_counts"],
            "collapsed_to": everything["collapsed_to"],
        },
    }


def format_mean_std(metric: dict, digits: int = 2) -> str:
    """``"0.71 ± 0.03"`` for an aggregate metric entry (``"0.71 (1 fold)"`` without a fold SD), ``"–"``
    when undefined."""
    if metric.get("mean") is None or (isinstance(metric["mean"], float) and math.isnan(metric["mean"])):
        return "–"
    if metric.get("std") is None:
        return f"{metric['mean']:.{digits}f} (1 fold)"
    return f"{metric['mean']:.{digits}f} ± {metric['std']:.{digits}f}"
