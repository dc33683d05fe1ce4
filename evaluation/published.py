"""The two papers' published numbers (MIDL 2020 Table 1, EMBC 2019), as data.

Kept as plain dictionaries so the report, its ``summary.json`` and the tests read the same
numbers, and a reader can check them against the papers line by line.

* :data:`MIDL_TABLE1`: Heker & Greenspan, MIDL 2020, Table 1 (mean over 3 folds), as
  ``framework -> init -> metric -> value``; a metric the paper leaves blank ("–") is absent.
* :data:`EMBC_TABLE`: Heker, Ben-Cohen & Greenspan, EMBC 2019 (joint cascaded U-Net), as
  ``strategy -> metric -> value``.

Metric keys are :data:`evaluation.metrics.METRIC_NAMES`: ``cls_acc`` (accuracy), ``dice``
(Dice1, per-slice lesion Dice averaged over slices; MIDL's "seg Dice"), ``global_dice`` (Dice2,
pooled over slices), ``recall`` (lesion pixel sensitivity per slice), ``success_rate``.
"""

from __future__ import annotations

from nnunet_joint import names as vocabulary

#: Framework keys (the experiment's ``framework`` field) in the papers' row order, with their names
#: (the vocabulary of :mod:`nnunet_joint.names`).
FRAMEWORKS: dict[str, str] = {key: vocabulary.FRAMEWORKS[key].name for key in vocabulary.PAPER_FRAMEWORKS}

#: Weight initialisations, in the papers' column order.
INITS: tuple[str, ...] = vocabulary.INITS

#: MIDL 2020 Table 1: framework -> init -> metric -> published value.
MIDL_TABLE1: dict[str, dict[str, dict[str, float]]] = {
    "cls": {
        "scratch": {"cls_acc": 0.55},
        "ImageNet": {"cls_acc": 0.63},
        "LiTS": {"cls_acc": 0.76},
    },
    "seg": {
        "scratch": {"dice": 0.59, "recall": 0.59},
        "ImageNet": {"dice": 0.63, "recall": 0.67},
        "LiTS": {"dice": 0.71, "recall": 0.72},
    },
    "ynet": {
        "scratch": {"cls_acc": 0.43, "dice": 0.49, "recall": 0.43},
        "ImageNet": {"cls_acc": 0.68, "dice": 0.67, "recall": 0.65},
        "LiTS": {"cls_acc": 0.79, "dice": 0.71, "recall": 0.68},
    },
    "joint": {
        "scratch": {"cls_acc": 0.63, "dice": 0.57, "recall": 0.60},
        "ImageNet": {"cls_acc": 0.74, "dice": 0.64, "recall": 0.70},
        "LiTS": {"cls_acc": 0.86, "dice": 0.71, "recall": 0.76},
    },
}

#: MIDL Table 1's metric columns, in its order.
MIDL_METRICS: tuple[str, ...] = ("cls_acc", "dice", "recall")

#: EMBC 2019 fine-tuning strategies in the paper's row order: key -> (row name, init, schedule).
#: ``baseline`` is the joint model trained from scratch; the others start from LiTS weights.
EMBC_STRATEGIES: dict[str, tuple[str, str, str]] = {
    "baseline": ("baseline (scratch)", "scratch", vocabulary.NO_FREEZING),
    vocabulary.NO_FREEZING: ("no freezing", "LiTS", vocabulary.NO_FREEZING),
    vocabulary.HIERARCHICAL_FREEZING: ("hierarchical freezing", "LiTS", vocabulary.HIERARCHICAL_FREEZING),
    vocabulary.FREEZE_ENCODER: ("freeze encoder", "LiTS", vocabulary.FREEZE_ENCODER),
    vocabulary.HIERARCHICAL_UNFREEZING: ("hierarchical unfreezing", "LiTS", vocabulary.HIERARCHICAL_UNFREEZING),
}

#: EMBC 2019 table (joint cascaded U-Net): strategy -> metric -> published value.
EMBC_TABLE: dict[str, dict[str, float]] = {
    "baseline": {"dice": 0.49, "global_dice": 0.44, "success_rate": 0.89, "cls_acc": 0.56},
    vocabulary.NO_FREEZING: {"dice": 0.57, "global_dice": 0.55, "success_rate": 0.94, "cls_acc": 0.64},
    vocabulary.HIERARCHICAL_FREEZING: {"dice": 0.65, "global_dice": 0.60, "success_rate": 0.93, "cls_acc": 0.68},
    vocabulary.FREEZE_ENCODER: {"dice": 0.57, "global_dice": 0.54, "success_rate": 0.94, "cls_acc": 0.63},
    vocabulary.HIERARCHICAL_UNFREEZING: {"dice": 0.64, "global_dice": 0.60, "success_rate": 0.94, "cls_acc": 0.73},
}

#: EMBC table's metric columns, in its order (Dice1 / Dice2 / success rate / accuracy).
EMBC_METRICS: tuple[str, ...] = ("dice", "global_dice", "success_rate", "cls_acc")

#: The schedule of MIDL Table 1's cells (the MIDL comparison fine-tunes without freezing).
MIDL_SCHEDULE = vocabulary.NO_FREEZING

SOURCES: dict[str, str] = {
    "MIDL": "Heker & Greenspan, Joint Liver Lesion Segmentation and Classification via Transfer Learning, MIDL 2020, Table 1",
    "EMBC": "Heker, Ben-Cohen & Greenspan, Hierarchical Fine-Tuning for joint Liver Lesion Segmentation and "
    "Lesion Classification in CT, EMBC 2019",
}


def midl_value(framework: str, init: str, metric: str) -> float | None:
    """MIDL Table 1's number for one cell, ``None`` where the paper has none."""
    return MIDL_TABLE1.get(framework, {}).get(init, {}).get(metric)


def embc_strategy(framework: str, init: str, schedule: str) -> str | None:
    """The EMBC row an experiment corresponds to (joint framework only), else ``None``."""
    if framework != "joint":
        return None
    for key, (_, strategy_init, strategy_schedule) in EMBC_STRATEGIES.items():
        if (init, schedule) == (strategy_init, strategy_schedule):
            return key
    return None


def embc_value(framework: str, init: str, schedule: str, metric: str) -> float | None:
    """The EMBC table's number for an experiment and metric, ``None`` where the paper has none."""
    key = embc_strategy(framework, init, schedule)
    return None if key is None else EMBC_TABLE[key].get(metric)


def as_dict() -> dict:
    """Everything above as one JSON-serialisable dictionary (for ``summary.json``)."""
    return {
        "midl_table1": MIDL_TABLE1,
        "midl_schedule": MIDL_SCHEDULE,
        "embc_table": EMBC_TABLE,
        "embc_strategies": {k: {"row": r, "init": i, "schedule": s} for k, (r, i, s) in EMBC_STRATEGIES.items()},
        "sources": SOURCES,
    }
