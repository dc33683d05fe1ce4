"""The report's figures: what each one shows, gathered from the experiments and drawn by :mod:`evaluation.figures`.

:mod:`evaluation.figures` draws from plain numbers; this module decides which experiments and
values go into each figure and writes its caption, so a figure and its caption come from one place.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

from nnunet_joint import LESION_TYPES
from nnunet_joint.evaluation import figures, published
from nnunet_joint.evaluation.report.document import Figure
from nnunet_joint.evaluation.report.experiments import LEARNING_CURVE_FILE, Experiment, find
from nnunet_joint.evaluation.report.overlays import overlay_rows
from nnunet_joint.evaluation.report.tables import MIDL_ROWS, fold_values, midl_cells_run, row_estimate
from nnunet_joint.evaluation.statistics import sample_sd
from nnunet_joint.names import DATASET_FOLDERS, JOINT_DATASET

FIGURES_DIR = "figures"


def _rank(e: Experiment) -> tuple[int, int, str]:
    """Preference for the overlay grid's models: LiTS before ImageNet before scratch, NoFreeze first."""
    init_order = {"LiTS": 0, "ImageNet": 1, "scratch": 2}
    return init_order.get(e.init, 3), 0 if e.schedule == published.MIDL_SCHEDULE else 1, e.schedule


def bar_values(experiments: Sequence[Experiment]) -> dict:
    """``framework -> init -> metric -> (estimate, fold SD)`` of MIDL Table 1's cells that ran (the tables' number,
    :func:`~evaluation.report.tables.row_estimate`), or ``"failed"``."""
    values: dict[str, dict[str, dict[str, Any]]] = {}
    frameworks, inits = midl_cells_run(experiments)
    for framework in frameworks:
        for init in inits:
            e = find(experiments, framework, init, published.MIDL_SCHEDULE)
            cells = values.setdefault(framework, {}).setdefault(init, {})
            for metric in ("cls_acc", "dice"):
                if metric not in MIDL_ROWS[framework]:
                    continue
                entry = None if e is None else e.metric(metric)
                if entry is not None:
                    cells[metric] = _estimate_spread(e, metric)
                elif e is not None and e.status.startswith("failed"):
                    cells[metric] = "failed"
    return values


def _estimate_spread(e: Experiment, metric: str) -> tuple[float | None, float | None]:
    """The row's number as the tables show it (mean over all slices) and its fold SD (ddof 1; ``None``: one fold)."""
    if e.metric(metric) is None:
        return None, None
    return row_estimate(e.summary, metric), sample_sd([v for v, _ in fold_values(e.summary, metric)])


def curve_panels(experiments: Sequence[Experiment]) -> list[figures.CurvePanel]:
    """One panel per finished experiment; one without any ``learning_curve.json`` says which folds lack it."""
    panels = []
    for e in experiments:
        if not e.done:
            continue
        series = [figures.CurveSeries(c.fold, c.iterations, c.lesion_dice, c.type_accuracy) for c in e.curves()]
        missing = [r.fold for r in e.records if r.curve is None]
        message = "no learning curve recorded" + (
            f"\n(no {LEARNING_CURVE_FILE} in fold {', '.join(map(str, missing))})" if missing else "")
        panels.append(figures.CurvePanel(e.label, series, message))
    return panels


def make_figures(experiments: Sequence[Experiment], out_dir: Path, meta: Mapping[str, Any],
                 notes: list[str]) -> list[Figure]:
    """Draw every figure into ``out_dir/figures``; what could not be drawn goes to ``notes``."""
    folder = out_dir / FIGURES_DIR
    entries: list[Figure] = []

    frameworks, inits = midl_cells_run(experiments)
    if frameworks:
        path = figures.framework_init_bars(
            bar_values(experiments), published.MIDL_TABLE1, {f: published.FRAMEWORKS[f] for f in frameworks}, inits,
            {"cls_acc": "cls acc", "dice": "seg Dice (Dice1)"}, folder / "bars_framework_init.png")
        entries.append(Figure(
            "bars", "Frameworks x initialisation",
            "MIDL Table 1's cells this run trained (fine-tuned without freezing): our mean over all validation slices, "
            "the tables' number (error bar: fold SD, ddof 1, none with one fold); black ticks: the paper's numbers.",
            path))

    classifiers = [e for e in experiments if e.metric("cls_acc") is not None]
    path = figures.confusion_matrices(
        [(e.label, e.summary["aggregate"]["confusion_matrix"], e.summary["aggregate"]["no_call"]) for e in classifiers],
        folder / "confusion_matrices.png")
    entries.append(Figure(
        "confusion", "Confusion matrices",
        "Validation slices of all folds (rows: true type, columns: predicted). Colour: fraction of the row.", path))

    recall_items = [(e.label, {t: _estimate_spread(e, f"recall_{t}") for t in LESION_TYPES}) for e in classifiers]
    path = figures.per_class_recall(recall_items, folder / "per_class_recall.png")
    entries.append(Figure("recall", "Per-class recall", "Recall of each lesion type over all validation slices "
                          "(error bar: fold SD, ddof 1).", path))

    panels = curve_panels(experiments)
    without = [p.title for p in panels if not p.series]
    path = figures.learning_curves(panels, folder / "learning_curves.png")
    entries.append(Figure(
        "curves", "Learning curves",
        f"Per finished experiment, each fold's {LEARNING_CURVE_FILE}: validation lesion Dice (all types merged, "
        "pooled over the epoch's validation patches) and validation type accuracy against cumulative training "
        "iterations, folds overlaid; dashed: chance accuracy (1/3). A curve that still rises at its end was "
        "stopped before it converged."
        + ("" if not without else f" Without a recorded curve: {', '.join(without)}."), path))

    joints = sorted((e for e in experiments if e.framework == "joint" and e.done), key=_rank)
    if joints:
        joint = joints[0]
        ynets = sorted((e for e in experiments if e.framework == "ynet" and e.done),
                       key=lambda e: (e.init != joint.init, _rank(e)))
        ynet = ynets[0] if ynets else None
        raw_root = meta.get("raw_root")
        rows = [] if raw_root is None else overlay_rows(
            joint, ynet, Path(raw_root), str(meta.get("images_dataset", DATASET_FOLDERS[JOINT_DATASET])), notes)
        if raw_root is None:
            notes.append("overlay grid: no raw_root given, so no images to draw")
        elif not rows:
            notes.append(f"overlay grid: no drawable validation case of {joint.label}")
        path = figures.overlay_grid(rows, folder / "overlay_grid.png")
        models = f"{joint.label}" + ("" if ynet is None else f" and {ynet.label}")
        entries.append(Figure(
            "overlays", "Overlays (as the paper's Figure 2)",
            f"Validation cases, one per lesion type (the case whose joint Dice is nearest its type's median, not "
            f"the best); models: {models}. CT window W400/L50; lesions filled in their type's colour (Y-Net: the "
            "colour of its head's predicted type), liver outlined in yellow.", path))
    else:
        notes.append("overlay grid: no joint experiment finished, so there is none")
    return entries


def pretraining_curve_figure(record: Mapping[str, Any] | None, out_dir: Path) -> Figure | None:
    """The LiTS models' validation lesion Dice against iterations (``meta["pretraining"]``), or ``None``."""
    models = [m for m in (record or {}).get("models", []) if m.get("iterations")]
    if not models:
        return None
    panels = [figures.CurvePanel(m["name"], [figures.CurveSeries(0, m["iterations"], m["lesion_dice"],
                                                                 [None] * len(m["iterations"]))]) for m in models]
    path = figures.learning_curves(panels, out_dir / FIGURES_DIR / "pretraining_curves.png", columns=2)
    return Figure("pretraining", "Pretraining curves",
                  "Each LiTS model's validation lesion Dice (lesion label of the source dataset, pooled over the "
                  "epoch's validation patches) against training iterations. A curve that still rises at its end "
                  "was stopped before it converged.", path)
