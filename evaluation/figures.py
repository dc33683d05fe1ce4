"""The report's figures, drawn from plain data (matplotlib, Agg, object API).

Every function here takes numbers or arrays that :mod:`evaluation.report.figure_set` gathered, draws one
figure and writes it atomically as PNG (:func:`nnunet_joint.io.atomic_path`), so a killed report
never leaves a half image. ``Figure`` + ``FigureCanvasAgg`` (never pyplot's global state) keeps
the functions safe to call from anywhere and leaves no figure open.

Colours are the inference overlays' (:mod:`nnunet_joint.inference.overlays`), so a lesion type
has one colour everywhere in the project.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import to_rgba
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch

from nnunet_joint import LESION_TYPES
from nnunet_joint.inference.overlays import LIVER_COLOUR, TYPE_COLOURS
from nnunet_joint.io import atomic_path
from nnunet_joint.labels import type_label

#: Liver window of the overlay grid, as the paper's figures: width 400 HU, level 50 HU.
GRID_WINDOW_WIDTH_LEVEL = (400.0, 50.0)
#: Colour of a lesion whose type the model did not state (segmentation-only output).
UNTYPED_COLOUR = "#cc79a7"
INIT_COLOURS = {"scratch": "#999999", "ImageNet": "#0072b2", "LiTS": "#009e73"}
DPI = 100


def new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), dpi=DPI)
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig: Figure, path: str | os.PathLike) -> Path:
    """Write ``fig`` as PNG atomically (the temporary keeps the ``.png`` suffix matplotlib reads)."""
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", bbox_inches="tight")
    return path


# ----------------------------------------------------------------------------- classification


def confusion_matrices(items: Sequence[tuple[str, Sequence[Sequence[int]], Sequence[int]]],
                       path: str | os.PathLike, columns: int = 4) -> Path:
    """One confusion matrix per experiment (counts summed over folds), in a grid.

    Args:
        items: ``(title, 3 x 3 matrix [true][predicted], no-call count per true type)``.
        path: PNG to write.
        columns: matrices per row.

    Cells are coloured by the row-normalised fraction (the per-class recall on the diagonal), so
    experiments with different slice counts read alike; the count is written in each cell. Slices
    without a call (joint model predicted no lesion and had no probabilities) are listed under
    each matrix, because they are in no predicted column.
    """
    columns = max(1, min(columns, len(items)))
    rows = max(1, -(-len(items) // columns))
    fig = new_figure(3.2 * columns, 3.3 * rows)
    short = [name[:4] for name in LESION_TYPES]
    for index, (title, matrix, no_call) in enumerate(items):
        ax = fig.add_subplot(rows, columns, index + 1)
        counts = np.asarray(matrix, dtype=float)
        totals = counts.sum(axis=1, keepdims=True) + np.asarray(no_call, dtype=float)[:, None]
        fraction = np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)
        ax.imshow(fraction, cmap="Blues", vmin=0.0, vmax=1.0)
        for (i, j), value in np.ndenumerate(counts):
            ax.text(j, i, f"{int(value)}", ha="center", va="center", fontsize=9,
                    color="white" if fraction[i, j] > 0.6 else "black")
        ax.set_xticks(range(len(LESION_TYPES)), short, fontsize=8)
        ax.set_yticks(range(len(LESION_TYPES)), short, fontsize=8)
        ax.set_xlabel("predicted" + (f"  (no call: {sum(no_call)})" if sum(no_call) else ""), fontsize=8)
        ax.set_ylabel("true", fontsize=8)
        ax.set_title(title, fontsize=8)
    if not items:
        fig.text(0.5, 0.5, "no classifying experiment was evaluated", ha="center", va="center")
    fig.tight_layout()
    return save_figure(fig, path)


def per_class_recall(items: Sequence[tuple[str, Mapping[str, tuple[float | None, float | None]]]],
                     path: str | os.PathLike) -> Path:
    """Grouped bars: per experiment, the recall of each lesion type (over all slices, fold SD as error bar).

    Args:
        items: ``(experiment label, {type: (value, fold SD)})``; a ``None`` value means undefined
            (no slice of that type was validated) and draws no bar; a ``None`` SD (one fold) no error bar.
    """
    fig = new_figure(max(6.0, 0.75 * len(items) + 2.0), 4.2)
    ax = fig.add_subplot(1, 1, 1)
    width = 0.8 / len(LESION_TYPES)
    x = np.arange(len(items))
    for k, name in enumerate(LESION_TYPES):
        means = [np.nan if r.get(name, (None, None))[0] is None else r[name][0] for _, r in items]
        stds = [0.0 if r.get(name, (None, None))[1] is None else r[name][1] for _, r in items]  # one fold: none
        ax.bar(x + (k - 1) * width, means, width, yerr=stds, capsize=2, label=name, color=TYPE_COLOURS[name],
               error_kw={"elinewidth": 0.8})
    ax.set_xticks(x, [label for label, _ in items], rotation=35, ha="right", fontsize=8)
    ax.set_ylim(0, 1.2)
    ax.set_yticks(np.linspace(0, 1, 6))
    ax.set_ylabel("recall (all slices; bar: fold SD)")
    ax.set_title("Per-class recall of the lesion type")
    ax.legend(fontsize=8, ncols=3, loc="upper center")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    return save_figure(fig, path)


# ----------------------------------------------------------------------------- framework x init


def framework_init_bars(
    values: Mapping[str, Mapping[str, Mapping[str, tuple[float, float] | str]]],
    paper: Mapping[str, Mapping[str, Mapping[str, float]]],
    frameworks: Mapping[str, str],
    inits: Sequence[str],
    metrics: Mapping[str, str],
    path: str | os.PathLike,
) -> Path:
    """One panel per metric: groups = frameworks, bars = initialisations, fold SD error bars.

    Args:
        values: ``framework -> init -> metric -> (value, fold SD or None)`` for a measured cell, or a short
            status text (drawn as a label instead of a bar) for a cell that was not measured.
        paper: ``framework -> init -> metric -> value``; drawn as black ticks beside our bars.
        frameworks: framework key -> display name, in drawing order.
        inits: initialisations, in bar order.
        metrics: metric key -> axis label, one panel each.
    """
    fig = new_figure(5.2 * len(metrics), 4.2)
    width = 0.8 / len(inits)
    for panel, (metric, label) in enumerate(metrics.items()):
        ax = fig.add_subplot(1, len(metrics), panel + 1)
        shown = [f for f in frameworks if any(isinstance(values.get(f, {}).get(i, {}).get(metric), (tuple, str))
                                                or metric in paper.get(f, {}).get(i, {}) for i in inits)]
        for g, framework in enumerate(shown):
            for b, init in enumerate(inits):
                x = g + (b - (len(inits) - 1) / 2) * width
                cell = values.get(framework, {}).get(init, {}).get(metric)
                if isinstance(cell, tuple):
                    ax.bar(x, cell[0], width * 0.95, yerr=cell[1], capsize=3, color=INIT_COLOURS.get(init))
                elif isinstance(cell, str):
                    ax.text(x, 0.02, cell, rotation=90, ha="center", va="bottom", fontsize=7, color="#555555")
                published = paper.get(framework, {}).get(init, {}).get(metric)
                if published is not None:
                    ax.plot([x - width * 0.45, x + width * 0.45], [published, published], color="black", lw=2)
        ax.set_xticks(range(len(shown)), [frameworks[f] for f in shown], fontsize=8, rotation=15)
        ax.set_ylim(0, 1.25)  # headroom for the legend above the bars
        ax.set_yticks(np.linspace(0, 1, 6))
        ax.set_ylabel(f"{label} (all slices; bar: fold SD)", fontsize=9)
        ax.set_title(label)
        ax.grid(axis="y", alpha=0.3)
        handles = [Patch(color=INIT_COLOURS.get(i), label=i) for i in inits]
        handles.append(Line2D([], [], color="black", lw=2, label="paper (MIDL)"))
        ax.legend(handles=handles, fontsize=8, loc="upper center", ncols=len(handles))
    fig.tight_layout()
    return save_figure(fig, path)


# ----------------------------------------------------------------------------- overlay grid


@dataclasses.dataclass
class OverlayRow:
    """One row of the overlay grid: a validation case and the label maps of the same crop.

    Label maps use the joint coding (:mod:`nnunet_joint.labels`); a lesion whose type is unknown
    is ``-1`` (drawn in :data:`UNTYPED_COLOUR`). ``predictions`` holds one map per model shown
    (the joint model, then the Y-Net when one ran); ``titles`` the input's, the ground truth's and
    one per prediction.
    """

    case_id: str
    ct: np.ndarray
    aspect: float
    ground_truth: np.ndarray
    predictions: tuple[np.ndarray, ...]
    titles: tuple[str, ...]


def _overlay_rgba(labels: np.ndarray, alpha: float = 0.5) -> np.ndarray:
    rgba = np.zeros((*labels.shape, 4))
    for k, name in enumerate(LESION_TYPES):
        rgba[labels == type_label(k)] = to_rgba(TYPE_COLOURS[name], alpha)
    rgba[labels == -1] = to_rgba(UNTYPED_COLOUR, alpha)
    return rgba


def overlay_grid(rows: Sequence[OverlayRow], path: str | os.PathLike) -> Path:
    """The paper's Figure 2: columns input / ground truth / one per model, one row per case.

    CT in a liver window (W400/L50); lesions filled in their type's colour, liver outlined.
    """
    width_hu, level_hu = GRID_WINDOW_WIDTH_LEVEL
    n = max(1, len(rows))
    columns = max((2 + len(row.predictions) for row in rows), default=3)
    fig = new_figure(3.0 * columns, 3.1 * n + 0.5)
    for r, row in enumerate(rows):
        for c, labels in enumerate((None, row.ground_truth, *row.predictions)):
            ax = fig.add_subplot(n, columns, r * columns + c + 1)
            ax.imshow(row.ct, cmap="gray", vmin=level_hu - width_hu / 2, vmax=level_hu + width_hu / 2,
                      aspect=row.aspect, interpolation="nearest")
            if labels is not None:
                if (labels >= 1).any():
                    ax.contour(labels >= 1, levels=[0.5], colors=[LIVER_COLOUR], linewidths=0.8)
                ax.imshow(_overlay_rgba(labels), aspect=row.aspect, interpolation="nearest")
            ax.set_title(row.titles[c], fontsize=8)
            ax.set_axis_off()
    if not rows:
        fig.text(0.5, 0.5, "no validation case with a joint prediction", ha="center", va="center")
    handles = [Patch(color=TYPE_COLOURS[name], label=name) for name in LESION_TYPES]
    handles.append(Line2D([], [], color=LIVER_COLOUR, label="liver"))
    if any((labels == -1).any() for row in rows for labels in row.predictions):
        handles.append(Patch(color=UNTYPED_COLOUR, label="lesion (no type)"))
    fig.legend(handles=handles, loc="lower center", ncols=len(handles), fontsize=9, frameon=False)
    fig.tight_layout(rect=(0, 0.04 if n > 1 else 0.08, 1, 1))
    return save_figure(fig, path)


# ----------------------------------------------------------------------------- learning curves

#: Colours of the two validation curves (colour-blind safe, Okabe-Ito).
CURVE_COLOURS = {"lesion_dice": "#0072b2", "type_accuracy": "#d55e00"}
CURVE_LABELS = {"lesion_dice": "validation lesion Dice", "type_accuracy": "validation type accuracy"}
#: Markers telling the folds apart (the colour tells the metric).
FOLD_MARKERS = ("o", "s", "^", "D", "v", "P")
#: Accuracy of guessing among the lesion types: the line a typing curve must rise above.
CHANCE_ACCURACY = 1.0 / len(LESION_TYPES)


@dataclasses.dataclass
class CurveSeries:
    """One fold's learning curve: cumulative training iterations and the values (``None``: not produced)."""

    fold: int
    iterations: Sequence[int]
    lesion_dice: Sequence[float | None]
    type_accuracy: Sequence[float | None]


@dataclasses.dataclass
class CurvePanel:
    """One experiment's panel: its folds overlaid, or ``message`` when it has no curve."""

    title: str
    series: Sequence[CurveSeries]
    message: str = "no learning curve recorded"


def learning_curves(panels: Sequence[CurvePanel], path: str | os.PathLike, columns: int = 4) -> Path:
    """One small panel per experiment: validation lesion Dice and type accuracy vs training iterations.

    Folds are overlaid (one marker per fold); the dashed line is chance accuracy (1/3), drawn in
    panels that show a type accuracy. A panel without curves says so instead of staying blank.
    """
    columns = max(1, min(columns, len(panels)))
    rows = max(1, -(-len(panels) // columns))
    legend_height = 0.4  # inches below the panels
    fig = new_figure(3.3 * columns, 2.6 * rows + legend_height)
    folds_seen: set[int] = set()
    for index, panel in enumerate(panels):
        ax = fig.add_subplot(rows, columns, index + 1)
        typed = False
        for series in panel.series:
            folds_seen.add(series.fold)
            marker = FOLD_MARKERS[series.fold % len(FOLD_MARKERS)]
            for key in ("lesion_dice", "type_accuracy"):
                points = [(x, y) for x, y in zip(series.iterations, getattr(series, key)) if y is not None]
                if points:
                    typed |= key == "type_accuracy"
                    ax.plot(*zip(*points), color=CURVE_COLOURS[key], marker=marker, markersize=4, lw=1.1, alpha=0.85)
        if typed:
            ax.axhline(CHANCE_ACCURACY, color="#666666", ls="--", lw=0.9)
        if not panel.series:
            ax.text(0.5, 0.5, panel.message, transform=ax.transAxes, ha="center", va="center", fontsize=8,
                    color="#555555", wrap=True)
            ax.set_xticks([])
        ax.set_ylim(0, 1.02)
        ax.set_title(panel.title, fontsize=8)
        ax.tick_params(labelsize=7)
        ax.set_xlabel("training iterations", fontsize=7)
        ax.grid(alpha=0.3)
    if not panels:
        fig.text(0.5, 0.5, "no finished experiment", ha="center", va="center")
    handles = [Line2D([], [], color=CURVE_COLOURS[k], lw=1.5, label=CURVE_LABELS[k]) for k in CURVE_COLOURS]
    handles.append(Line2D([], [], color="#666666", ls="--", lw=0.9, label="chance accuracy (1/3)"))
    handles += [Line2D([], [], color="black", marker=FOLD_MARKERS[f % len(FOLD_MARKERS)], ls="none", markersize=4,
                       label=f"fold {f}") for f in sorted(folds_seen)]
    fig.legend(handles=handles, loc="lower center", ncols=min(len(handles), 6), fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, legend_height / (2.6 * rows + legend_height), 1, 1))
    return save_figure(fig, path)
