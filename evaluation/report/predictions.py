"""What each row predicts: type counts beside the true ones, the collapse flag, precision beside recall.

An accuracy alone hides the two ways the study's models failed before: a classifier that calls
nearly every slice one type scores the majority type's share (0.35-0.39 on the study's mix), and a
joint model whose class weights buy recall with precision over-segments while its recall looks
excellent. So every row that types shows how many slices it called each type next to how many
there are, and a row that put more than :data:`~nnunet_joint.evaluation.metrics.COLLAPSE_SHARE`
of its calls on one type is flagged; every row that segments shows its lesion precision next to
its recall, and the class-weight rule its folds trained with (``joint_config.json``).

The handcrafted reference (:mod:`nnunet_joint.evaluation.handcrafted`), when the study ran it,
is the last row: typing from features inside the reference lesion mask, no network, same folds.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from nnunet_joint import LESION_TYPES
from nnunet_joint.evaluation.metrics import COLLAPSE_SHARE
from nnunet_joint.evaluation.report.document import Table
from nnunet_joint.evaluation.report.experiments import Experiment
from nnunet_joint.evaluation.report.tables import row_estimate

#: The report's name for the handcrafted reference row.
HANDCRAFTED_LABEL = "handcrafted features (reference mask, random forest)"


def counts_text(counts: Mapping[str, int] | None) -> str:
    """``"9 / 10 / 12"`` in the order of :data:`LESION_TYPES`, with ``" (+2 no call)"`` when there are any."""
    if not counts or not sum(counts.values()):
        return "–"
    text = " / ".join(str(counts.get(name, 0)) for name in LESION_TYPES)
    return text + (f" (+{counts['no call']} no call)" if counts.get("no call") else "")


def collapse_text(aggregate: Mapping[str, Any]) -> str:
    """``"collapsed to metastasis (26 of 31)"``, ``"no"``, or ``"–"`` for a row that does not type."""
    predicted = aggregate.get("predicted_counts")
    if not predicted or not sum(predicted.values()):
        return "–"
    name = aggregate.get("collapsed_to")
    calls = sum(count for kind, count in predicted.items() if kind != "no call")
    return f"collapsed to {name} ({predicted[name]} of {calls} calls)" if name else "no"


def estimate_cell(summary: Mapping[str, Any], metric: str) -> str:
    """The row's one number for ``metric``, its mean over all validation slices (:func:`tables.row_estimate`)."""
    value = row_estimate(summary, metric)
    return "–" if value is None else f"{value:.2f}"


def weight_rules(configs: Sequence[Mapping[str, Any] | None]) -> str:
    """The class-weight rule(s) the folds recorded (``–``: none recorded, e.g. plain nnU-Net: unweighted CE)."""
    rules = sorted({str(c["class_weights"].get("rule", "inverse-frequency"))  # before the rule was recorded
                    for c in configs if c and isinstance(c.get("class_weights"), dict)})
    return ", ".join(rules) if rules else "–"


def prediction_row(label: str, dataset: str, summary: Mapping[str, Any],
                   configs: Sequence[Mapping[str, Any] | None] = ()) -> list[str]:
    """One row of the table from an evaluation summary (``per_fold`` and ``aggregate``)."""
    aggregate = summary["aggregate"]
    return [label, dataset, counts_text(aggregate.get("true_counts")), counts_text(aggregate.get("predicted_counts")),
            collapse_text(aggregate), estimate_cell(summary, "cls_acc"), estimate_cell(summary, "recall"),
            estimate_cell(summary, "precision"), weight_rules(configs)]


def predictions_table(rows: Sequence[tuple[str, str, Mapping[str, Any], Sequence[Mapping[str, Any] | None]]],
                      handcrafted: Mapping[str, Any] | None = None) -> Table:
    """One line per finished row: ``(label, dataset, evaluation summary, each fold's joint_config or None)``;
    ``handcrafted``: the reference's summary (``summarise``'s result), or ``{"error": why}``, last."""
    body = [prediction_row(*row) for row in rows]
    if handcrafted is not None and "error" in handcrafted:
        body.append([HANDCRAFTED_LABEL, "reference lesion masks", f"not computed: {handcrafted['error']}",
                     *["–"] * 6])
    elif handcrafted is not None:
        body.append(prediction_row(HANDCRAFTED_LABEL, "reference lesion masks", handcrafted))
    types = " / ".join(LESION_TYPES)
    header = ["experiment", "dataset", f"true ({types})", f"predicted ({types})", "collapsed", "cls acc",
              "seg recall", "seg precision", "class weights"]
    return Table("predictions", "What each row predicts",
                 f"Slices of each type over all validation folds, and how many each row called that type; a row is "
                 f"flagged collapsed when more than {COLLAPSE_SHARE:.0%} of its calls fall on one type (an accuracy "
                 f"near the majority type's share is then a collapse, not learning); cls acc over all those slices. "
                 f"The handcrafted reference types from features inside the reference lesion mask with a random "
                 f"forest on the same folds: how separable the types are on these data. Lesion pixel recall and "
                 f"precision, mean over slices (precision over the slices with a predicted lesion); class weights: "
                 f"the CE's rule of the row's trainings (– : unweighted, nnU-Net's).", header, body)


def experiments_predictions_table(experiments: Sequence[Experiment], handcrafted: Mapping[str, Any] | None) -> Table:
    """:func:`predictions_table` of the report's finished experiments, each with its folds' ``joint_config.json``."""
    return predictions_table([(e.label, e.dataset, e.summary, [r.config for r in e.records])
                              for e in experiments if e.done and e.summary is not None], handcrafted)
