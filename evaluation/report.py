"""The experiment report: our numbers beside the papers', figures, and how the numbers were made.

:func:`build_report` takes the experiment matrix that the pipeline trained and evaluated (one
dictionary per experiment, :func:`evaluation.evaluate.evaluate_trainer_dir`'s summary inside)
and writes into one folder::

    report.md        tables (MIDL Table 1, EMBC fine-tuning, plain nnU-Net), figures, provenance
    report.html      the same, one self-contained file: figures inlined as base64 data URIs, no
                     scripts, no external assets, so it opens from disk (or an e-mail) anywhere
    figures/*.png    the figures report.md links to (relative paths)
    summary.json     every number: per experiment status, budget, aggregate and per-fold metrics,
                     confusion matrix; the papers' numbers; the tables' cell texts
    summary.csv      one row per experiment x metric, with the papers' numbers beside ours

Every file is written atomically (:mod:`nnunet_joint.io`). A cell of an experiment that did not
run shows its status text ("not run: no ImageNet weights given"), never a number, so a missing
result cannot pass for a measured one.
"""

from __future__ import annotations

import base64
import csv
import dataclasses
import datetime
import html
import io
import json
import os
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import SimpleITK as sitk

from nnunet_joint.evaluation import figures, published
from nnunet_joint.evaluation.metrics import METRIC_NAMES, format_mean_std
from nnunet_joint import LESION_TYPES
from nnunet_joint.errors import InputError
from nnunet_joint.io import read_image, write_json, write_text

FIGURES_DIR = "figures"
REPORT_MD = "report.md"
REPORT_HTML = "report.html"
SUMMARY_JSON = "summary.json"
SUMMARY_CSV = "summary.csv"
FILE_ENDING = ".nii.gz"

METRIC_LABELS: dict[str, str] = {
    "dice": "Dice1 (seg Dice)",
    "global_dice": "Dice2 (global)",
    "recall": "seg recall",
    "success_rate": "success rate",
    "cls_acc": "cls acc",
    "recall_cyst": "recall cyst",
    "recall_hemangioma": "recall hemangioma",
    "recall_metastasis": "recall metastasis",
    "liver_dice": "liver Dice",
}
#: Which MIDL Table 1 metrics each framework has (the paper's "–" cells are left out).
MIDL_ROWS: dict[str, tuple[str, ...]] = {
    "cls": ("cls_acc",),
    "seg": ("dice", "recall"),
    "ynet": published.MIDL_METRICS,
    "joint": published.MIDL_METRICS,
}
BASELINE_METRICS: tuple[str, ...] = ("dice", "global_dice", "recall", "success_rate", "cls_acc")
REQUIRED_KEYS = ("row", "framework", "init", "schedule", "trainer", "dataset", "trainer_dir", "status")
NOT_LISTED = "not run: not in the experiment list"
CAVEAT = (
    "The default data is a synthetic CT phantom (DESIGN.md section 3), not the Sheba set or LiTS, and the "
    "training budgets above are far below the papers'. These numbers show that every code path runs and how the "
    "methods rank on the phantom; they are not comparable to the papers' numbers in absolute value."
)


# ----------------------------------------------------------------------------- experiments


@dataclasses.dataclass
class Experiment:
    """One cell of the experiment matrix, as the pipeline describes it (see :func:`build_report`)."""

    row: str
    framework: str
    init: str
    schedule: str
    trainer: str
    dataset: str
    trainer_dir: Path
    status: str
    summary: dict | None = None
    budget: dict = dataclasses.field(default_factory=dict)

    @classmethod
    def from_dict(cls, entry: Mapping[str, Any]) -> "Experiment":
        missing = [k for k in REQUIRED_KEYS if k not in entry]
        if missing:
            raise ValueError(f"experiment {entry.get('trainer', entry)!r} lacks {', '.join(missing)}")
        status = str(entry["status"]).splitlines()[0] if str(entry["status"]).strip() else "failed: no status"
        summary = entry.get("summary")
        if status == "done" and summary is None:
            status = "failed: finished but has no evaluation summary"
        return cls(str(entry["row"]), str(entry["framework"]), str(entry["init"]), str(entry["schedule"]),
                   str(entry["trainer"]), str(entry["dataset"]), Path(entry["trainer_dir"]), status,
                   summary if status == "done" else None, dict(entry.get("budget") or {}))

    @property
    def done(self) -> bool:
        return self.status == "done"

    @property
    def key(self) -> str:
        """Unique name: the trainer alone is not (plain ``nnUNetTrainer`` runs on two datasets)."""
        return f"{self.dataset}/{self.trainer}"

    @property
    def label(self) -> str:
        """Short human label for figure titles and table rows."""
        if self.framework == "nnunet":
            return f"nnU-Net ({self.dataset.split('_', 1)[-1]})"
        name = published.FRAMEWORKS.get(self.framework, self.row)
        schedule = "" if self.schedule == published.MIDL_SCHEDULE else f", {self.schedule}"
        return f"{name} ({self.init}{schedule})"

    def metric(self, name: str) -> dict | None:
        """Aggregate entry ``{"mean", "std", "n", "n_folds"}``, ``None`` when not run or undefined."""
        if not self.done:
            return None
        entry = self.summary["aggregate"]["metrics"].get(name)
        return entry if entry is not None and entry.get("mean") is not None else None

    def paper(self) -> dict[str, dict[str, float]]:
        """The papers' numbers for this experiment: ``{"MIDL": {...}, "EMBC": {...}}`` (possibly empty)."""
        out: dict[str, dict[str, float]] = {}
        if self.schedule == published.MIDL_SCHEDULE and self.framework in published.MIDL_TABLE1:
            out["MIDL"] = dict(published.MIDL_TABLE1[self.framework].get(self.init, {}))
        strategy = published.embc_strategy(self.framework, self.init, self.schedule)
        if strategy is not None:
            out["EMBC"] = dict(published.EMBC_TABLE[strategy])
        return out


def find(experiments: Iterable[Experiment], framework: str, init: str | None = None,
         schedule: str | None = None) -> Experiment | None:
    """The first experiment matching the given fields (``None`` for a field: any value)."""
    for e in experiments:
        if e.framework == framework and init in (None, e.init) and schedule in (None, e.schedule):
            return e
    return None


# ----------------------------------------------------------------------------- cells and tables


def ours_cell(experiment: Experiment | None, metric: str) -> str:
    """``"0.71 ± 0.03 (n=332)"``; the status text for an experiment that did not run; ``–`` if undefined."""
    if experiment is None:
        return NOT_LISTED
    if not experiment.done:
        return experiment.status
    entry = experiment.metric(metric)
    return "–" if entry is None else f"{format_mean_std(entry)} (n={entry['n']})"


def paper_cell(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


@dataclasses.dataclass
class Table:
    """A table as text cells, rendered to Markdown and HTML from the same data."""

    key: str
    title: str
    caption: str
    header: list[str]
    rows: list[list[str]]

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


def midl_table(experiments: Sequence[Experiment]) -> Table:
    header = ["framework", "metric"]
    for init in published.INITS:
        header += [f"{init}: ours", f"{init}: paper"]
    rows = []
    for framework, name in published.FRAMEWORKS.items():
        for metric in MIDL_ROWS[framework]:
            row = [name, METRIC_LABELS[metric]]
            for init in published.INITS:
                experiment = find(experiments, framework, init, published.MIDL_SCHEDULE)
                row += [ours_cell(experiment, metric), paper_cell(published.midl_value(framework, init, metric))]
            rows.append(row)
    return Table(
        "midl", "Table 1 (MIDL)",
        "Four frameworks x three initialisations, fine-tuned without freezing. Ours: mean ± std over folds "
        "(n = validation slices the metric stands on); paper: MIDL 2020 Table 1, mean over 3 folds.",
        header, rows,
    )


def embc_table(experiments: Sequence[Experiment]) -> Table:
    header = ["strategy"]
    for metric in published.EMBC_METRICS:
        header += [f"{METRIC_LABELS[metric]}: ours", f"{METRIC_LABELS[metric]}: paper"]
    rows = []
    for key, (name, init, schedule) in published.EMBC_STRATEGIES.items():
        experiment = find(experiments, "joint", init, schedule)
        row = [f"{name} [joint, {init}, {schedule}]"]
        for metric in published.EMBC_METRICS:
            row += [ours_cell(experiment, metric), paper_cell(published.EMBC_TABLE[key][metric])]
        rows.append(row)
    return Table(
        "embc", "Fine-tuning (EMBC)",
        "Joint model: scratch baseline and four ways to fine-tune LiTS weights. Dice1 = mean per-slice lesion "
        "Dice, Dice2 = Dice pooled over slices, success = predicted lesion overlaps the true one, accuracy = "
        "majority vote of the predicted lesion pixels. Paper: EMBC 2019.",
        header, rows,
    )


def baseline_table(experiments: Sequence[Experiment]) -> Table:
    header = ["model", "dataset", *(METRIC_LABELS[m] for m in BASELINE_METRICS)]
    rows = []
    plain = [e for e in experiments if e.framework == "nnunet"]
    comparison = [find(experiments, "seg", "scratch", published.MIDL_SCHEDULE),
                  find(experiments, "joint", "scratch", published.MIDL_SCHEDULE)]
    for experiment in plain + [e for e in comparison if e is not None]:
        name = f"plain nnU-Net ({experiment.trainer})" if experiment.framework == "nnunet" else (
            f"ours for comparison: {experiment.label}")
        rows.append([name, experiment.dataset, *(ours_cell(experiment, m) for m in BASELINE_METRICS)])
    if not plain:
        rows.insert(0, ["plain nnU-Net (nnUNetTrainer)", "–", *([NOT_LISTED] * len(BASELINE_METRICS))])
    return Table(
        "nnunet", "Plain nnU-Net baselines",
        "nnU-Net's default 2d U-Net (nnUNetTrainer, its own architecture, no transfer) on the segmentation and "
        "joint datasets. On the joint dataset its label map carries the type, so its accuracy is the same "
        "majority vote as our joint model's; on the segmentation dataset it has no type (–).",
        header, rows,
    )


def budget_table(experiments: Sequence[Experiment]) -> Table:
    header = ["experiment", "trainer", "dataset", "init", "schedule", "epochs x iterations", "encoder", "status",
              "slices", "folds"]
    rows = []
    for e in experiments:
        epochs, iterations = e.budget.get("epochs"), e.budget.get("iterations")
        budget = "–" if epochs is None else f"{epochs} x {iterations}"
        slices = folds = "–"
        if e.done:
            slices, folds = str(e.summary["aggregate"]["n_slices"]), str(e.summary["aggregate"]["n_folds"])
        rows.append([e.label, e.trainer, e.dataset, e.init, e.schedule, budget, str(e.budget.get("encoder", "–")),
                     e.status, slices, folds])
    return Table("budgets", "Budgets per experiment", "Training budget and what each experiment stands on.",
                 header, rows)


# ----------------------------------------------------------------------------- rendering


def _md_escape(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def table_markdown(table: Table) -> str:
    lines = [f"### {table.title}", "", table.caption, "",
             "| " + " | ".join(_md_escape(h) for h in table.header) + " |",
             "|" + "|".join("---" for _ in table.header) + "|"]
    lines += ["| " + " | ".join(_md_escape(c) for c in row) + " |" for row in table.rows]
    return "\n".join(lines) + "\n"


def _cell_class(text: str) -> str:
    if text.startswith(("not run", "failed")):
        return ' class="status"'
    return ""


def table_html(table: Table) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in table.header)
    body = "".join(
        "<tr>" + "".join(f"<td{_cell_class(c)}>{html.escape(c)}</td>" for c in row) + "</tr>\n" for row in table.rows
    )
    return (f'<h3 id="{table.key}">{html.escape(table.title)}</h3>\n<p class="caption">{html.escape(table.caption)}</p>\n'
            f'<table class="{table.key}">\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}</tbody>\n</table>\n')


HTML_STYLE = """
body { font-family: -apple-system, "Segoe UI", "DejaVu Sans", Arial, sans-serif; margin: 24px auto; max-width: 1220px;
       color: #222; font-size: 14px; line-height: 1.4; padding: 0 12px; }
h1 { font-size: 24px; } h2 { font-size: 19px; border-bottom: 1px solid #ccc; padding-bottom: 3px; margin-top: 28px; }
h3 { font-size: 16px; margin-bottom: 4px; }
table { border-collapse: collapse; margin: 6px 0 14px 0; font-size: 12.5px; }
th, td { border: 1px solid #bbb; padding: 3px 7px; text-align: left; vertical-align: top; }
th { background: #eef1f5; }
tbody tr:nth-child(even) { background: #fafafa; }
td.status { color: #8a5a00; font-style: italic; }
p.caption { color: #555; margin: 2px 0 4px 0; }
p.caveat { background: #fff4e0; border-left: 4px solid #e69f00; padding: 8px 12px; }
figure { margin: 10px 0 20px 0; } figure img { max-width: 100%; border: 1px solid #ddd; }
figcaption { color: #555; font-size: 13px; }
pre { background: #f4f4f4; padding: 8px; overflow-x: auto; font-size: 12px; white-space: pre-wrap; }
"""


@dataclasses.dataclass
class FigureEntry:
    key: str
    title: str
    caption: str
    path: Path  # absolute

    def relative(self, out_dir: Path) -> str:
        return self.path.relative_to(out_dir).as_posix()


def _json_default(value: Any) -> Any:
    if isinstance(value, os.PathLike):
        return os.fspath(value)
    if isinstance(value, (np.integer, np.floating)):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return str(value)


def _format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "unknown"
    return f"{seconds:.0f} s ({datetime.timedelta(seconds=round(seconds))})"


def provenance_parts(meta: Mapping[str, Any], experiments: Sequence[Experiment]) -> dict[str, Any]:
    """What section (5) shows, as data shared by the Markdown and HTML renderings."""
    phantom = meta.get("phantom")
    return {
        "profile": str(meta.get("profile", "unknown")),
        "wall_time": _format_duration(meta.get("wall_time_s")),
        "commands": [str(c) if isinstance(c, str) else " ".join(map(str, c)) for c in meta.get("commands", [])],
        "versions": {str(k): str(v) for k, v in (meta.get("versions") or {}).items()},
        "phantom": None if phantom is None else json.dumps(phantom, indent=2, default=_json_default, sort_keys=True),
        "budgets": budget_table(experiments),
        "stage1": stage1_line(meta.get("stage1")),
    }


def stage1_line(stage1: Mapping[str, Any] | None) -> str:
    """The stage-1 liver model's validation liver Dice per case (the cascade's first step)."""
    if not stage1 or not stage1.get("summary"):
        return "not run"
    dice = stage1["summary"]["aggregate"]["metrics"]["liver_dice"]
    return (f"{stage1.get('trainer', '?')} on Dataset501: liver Dice per validation volume "
            f"{format_mean_std(dice)} (n={dice['n']} volumes)")


def render_markdown(tables: Sequence[Table], figure_entries: Sequence[FigureEntry], parts: dict, out_dir: Path,
                    notes: Sequence[str]) -> str:
    out = ["# nnunet_joint experiment report", "",
           f"Profile **{parts['profile']}**, wall time {parts['wall_time']}. Ours: mean ± std over "
           "cross-validation folds (population std), n = validation slices each number stands on.", "",
           f"> {CAVEAT}", "", "## Results", ""]
    for table in tables:
        out += [table_markdown(table)]
    out += ["## Figures", ""]
    for entry in figure_entries:
        out += [f"### {entry.title}", "", f"![{entry.title}]({entry.relative(out_dir)})", "", entry.caption, ""]
    out += notes_markdown(notes)
    out += ["## How these numbers were made", "", f"- profile: {parts['profile']}",
            f"- wall time of the run: {parts['wall_time']}", f"- stage 1 (liver): {parts['stage1']}", ""]
    out += [table_markdown(parts["budgets"]), "### Commands", "", "```"]
    out += parts["commands"] or ["(none recorded)"]
    out += ["```", "", "### Versions", "", "| package | version |", "|---|---|"]
    out += [f"| {_md_escape(k)} | {_md_escape(v)} |" for k, v in parts["versions"].items()]
    out += ["", "### Data", ""]
    if parts["phantom"] is None:
        out += ["User-supplied raw data (no phantom).", ""]
    else:
        out += ["Synthetic CT phantom, generated with these parameters:", "", "```json", parts["phantom"], "```", ""]
    out += [f"**Caveat.** {CAVEAT}", ""]
    return "\n".join(out)


def notes_markdown(notes: Sequence[str]) -> list[str]:
    return ([] if not notes else ["Notes:", "", *(f"- {n}" for n in notes), ""])


def render_html(tables: Sequence[Table], figure_entries: Sequence[FigureEntry], parts: dict,
                notes: Sequence[str]) -> str:
    esc = html.escape
    out = ['<!DOCTYPE html>', '<html lang="en"><head><meta charset="utf-8">',
           "<title>nnunet_joint experiment report</title>", f"<style>{HTML_STYLE}</style></head><body>",
           "<h1>nnunet_joint experiment report</h1>",
           f"<p>Profile <b>{esc(parts['profile'])}</b>, wall time {esc(parts['wall_time'])}. Ours: mean ± std over "
           "cross-validation folds (population std), n = validation slices each number stands on.</p>",
           f'<p class="caveat">{esc(CAVEAT)}</p>', "<h2>Results</h2>"]
    out += [table_html(t) for t in tables]
    out.append("<h2>Figures</h2>")
    for entry in figure_entries:
        data = base64.b64encode(entry.path.read_bytes()).decode("ascii")
        out.append(f'<figure id="{entry.key}"><h3>{esc(entry.title)}</h3>'
                   f'<img alt="{esc(entry.title)}" src="data:image/png;base64,{data}">'
                   f"<figcaption>{esc(entry.caption)}</figcaption></figure>")
    if notes:
        out.append("<p>Notes:</p><ul>" + "".join(f"<li>{esc(n)}</li>" for n in notes) + "</ul>")
    out += ["<h2>How these numbers were made</h2>",
            f"<ul><li>profile: {esc(parts['profile'])}</li><li>wall time of the run: {esc(parts['wall_time'])}</li>"
            f"<li>stage 1 (liver): {esc(parts['stage1'])}</li></ul>",
            table_html(parts["budgets"]), "<h3>Commands</h3>",
            f"<pre>{esc(chr(10).join(parts['commands']) or '(none recorded)')}</pre>", "<h3>Versions</h3>",
            "<table><thead><tr><th>package</th><th>version</th></tr></thead><tbody>"
            + "".join(f"<tr><td>{esc(k)}</td><td>{esc(v)}</td></tr>" for k, v in parts["versions"].items())
            + "</tbody></table>", "<h3>Data</h3>"]
    if parts["phantom"] is None:
        out.append("<p>User-supplied raw data (no phantom).</p>")
    else:
        out.append(f"<p>Synthetic CT phantom, generated with these parameters:</p><pre>{esc(parts['phantom'])}</pre>")
    out += [f'<p class="caveat"><b>Caveat.</b> {esc(CAVEAT)}</p>', "</body></html>", ""]
    return "\n".join(out)


# ----------------------------------------------------------------------------- summary files


def experiment_record(e: Experiment) -> dict:
    """Everything ``summary.json`` keeps about one experiment."""
    record = {
        "key": e.key, "label": e.label, "row": e.row, "framework": e.framework, "init": e.init,
        "schedule": e.schedule, "trainer": e.trainer, "dataset": e.dataset, "trainer_dir": str(e.trainer_dir),
        "status": e.status, "budget": e.budget, "paper": e.paper(),
        "aggregate": None, "per_fold": None, "fold_kinds": None,
    }
    if e.done:
        record["aggregate"] = e.summary["aggregate"]
        record["per_fold"] = e.summary["per_fold"]
        record["fold_kinds"] = e.summary.get("fold_kinds")
    return record


CSV_HEADER = ("experiment", "dataset", "framework", "init", "schedule", "status", "metric", "mean", "std", "n",
              "n_folds", "paper_midl", "paper_embc")


def _csv_number(value: float | int | None) -> str:
    return "" if value is None else repr(value)


def summary_csv(experiments: Sequence[Experiment]) -> str:
    """One row per experiment x metric; ``paper_midl``/``paper_embc`` where a paper reports that cell.

    Two paper columns, because for the joint model the two papers report different numbers for
    the same setting (e.g. scratch Dice1: MIDL 0.57, EMBC 0.49).
    """
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_HEADER)
    for e in experiments:
        paper = e.paper()
        for metric in METRIC_NAMES:
            entry = e.summary["aggregate"]["metrics"].get(metric, {}) if e.done else {}
            writer.writerow([e.trainer, e.dataset, e.framework, e.init, e.schedule, e.status, metric,
                             _csv_number(entry.get("mean")), _csv_number(entry.get("std")),
                             _csv_number(entry.get("n")), _csv_number(entry.get("n_folds")),
                             _csv_number(paper.get("MIDL", {}).get(metric)),
                             _csv_number(paper.get("EMBC", {}).get(metric))])
    return buffer.getvalue()


# ----------------------------------------------------------------------------- figures


def _rank(e: Experiment) -> tuple[int, int, str]:
    """Preference for the overlay grid's models: LiTS before ImageNet before scratch, NoFreeze first."""
    init_order = {"LiTS": 0, "ImageNet": 1, "scratch": 2}
    return init_order.get(e.init, 3), 0 if e.schedule == published.MIDL_SCHEDULE else 1, e.schedule


def _short_status(status: str) -> str:
    return "not run" if status.startswith("not run") else ("failed" if status.startswith("failed") else status[:12])


def bar_values(experiments: Sequence[Experiment]) -> dict:
    values: dict[str, dict[str, dict[str, Any]]] = {}
    for framework in published.FRAMEWORKS:
        for init in published.INITS:
            e = find(experiments, framework, init, published.MIDL_SCHEDULE)
            cells = values.setdefault(framework, {}).setdefault(init, {})
            for metric in ("cls_acc", "dice"):
                if metric not in MIDL_ROWS[framework]:
                    continue
                entry = None if e is None else e.metric(metric)
                if entry is not None:
                    cells[metric] = (entry["mean"], entry["std"])
                else:
                    cells[metric] = _short_status(NOT_LISTED if e is None else e.status) if (
                        e is None or not e.done) else "n/a"
    return values


def _mean_std(entry: dict | None) -> tuple[float | None, float | None]:
    return (None, None) if entry is None else (entry["mean"], entry["std"])


def classifying(experiments: Sequence[Experiment]) -> list[Experiment]:
    return [e for e in experiments if e.metric("cls_acc") is not None]


def _squeezed(path: Path) -> tuple[np.ndarray, sitk.Image]:
    image = read_image(path)
    return np.squeeze(sitk.GetArrayFromImage(image)), image


def _case_index(e: Experiment | None) -> dict[str, dict]:
    return {} if e is None else {c["case_id"]: c for c in e.summary.get("cases", [])}


def _type_name(index: int | None) -> str:
    if index is None:
        return "–"
    return "no call" if index < 0 else LESION_TYPES[index]


def choose_overlay_cases(joint: Experiment, per_type: int = 1, minimum: int = 3) -> list[dict]:
    """One validation case per lesion type: the one whose joint Dice is nearest its type's median.

    The median case shows typical behaviour rather than the best; ties go to the lower case id.
    If fewer types exist, more cases fill the grid up to ``minimum`` rows.
    """
    cases = [c for c in joint.summary.get("cases", []) if c.get("true_type") is not None and c.get("dice") is not None]
    chosen: list[dict] = []
    leftovers: list[tuple[float, str, dict]] = []
    for k in range(len(LESION_TYPES)):
        of_type = [c for c in cases if c["true_type"] == k]
        if not of_type:
            continue
        median = float(np.median([c["dice"] for c in of_type]))
        ranked = sorted(of_type, key=lambda c: (round(abs(c["dice"] - median), 9), c["case_id"]))
        chosen += ranked[:per_type]
        leftovers += [(abs(c["dice"] - median), c["case_id"], c) for c in ranked[per_type:]]
    for _, _, case in sorted(leftovers, key=lambda t: t[:2])[: max(0, minimum - len(chosen))]:
        chosen.append(case)
    return chosen


def overlay_rows(joint: Experiment, ynet: Experiment | None, raw_root: Path, images_dataset: str,
                 notes: list[str]) -> list[figures.OverlayRow]:
    """Read the chosen cases' CT, ground truth, joint and Y-Net predictions (missing ones noted)."""
    raw = Path(raw_root) / images_dataset
    ynet_cases = _case_index(ynet)
    rows = []
    for case in choose_overlay_cases(joint):
        case_id, fold = case["case_id"], case["fold"]
        try:
            ct, ct_image = _squeezed(raw / "imagesTr" / f"{case_id}_0000{FILE_ENDING}")
            truth, _ = _squeezed(raw / "labelsTr" / f"{case_id}{FILE_ENDING}")
        except InputError as e:
            notes.append(f"overlay grid: case {case_id} left out: {e}")
            continue
        spacing = ct_image.GetSpacing()
        aspect = float(spacing[1]) / float(spacing[0])
        joint_path = joint.trainer_dir / f"fold_{fold}" / "validation" / f"{case_id}{FILE_ENDING}"
        joint_map = _read_prediction(joint_path, truth.shape, notes)
        true_name = _type_name(case["true_type"])
        joint_title = (f"joint ({joint.init}): {_type_name(case.get('pred_type'))}, Dice {case['dice']:.2f}")
        ynet_map, ynet_title = None, "Y-Net: not run"
        if ynet is not None:
            ynet_case = ynet_cases.get(case_id)
            ynet_title = f"Y-Net ({ynet.init}): no prediction for this case"
            if ynet_case is not None:
                path = ynet.trainer_dir / f"fold_{ynet_case['fold']}" / "validation" / f"{case_id}{FILE_ENDING}"
                seg = _read_prediction(path, truth.shape, notes)
                pred_type = ynet_case.get("pred_type")
                if seg is not None:
                    typed = seg.astype(np.int16)
                    typed[seg >= 2] = -1 if pred_type is None or pred_type < 0 else 2 + pred_type
                    ynet_map = typed
                probs = ynet_case.get("type_probs")
                p = f" (p={max(probs):.2f})" if probs else ""
                dice = ynet_case.get("dice")
                ynet_title = (f"Y-Net ({ynet.init}): {_type_name(pred_type)}{p}"
                              + ("" if dice is None else f", Dice {dice:.2f}"))
        rows.append(figures.OverlayRow(
            case_id, ct, aspect, truth.astype(np.int16), None if joint_map is None else joint_map.astype(np.int16),
            ynet_map, (f"input: {case_id} (fold {fold})", f"ground truth: {true_name}", joint_title, ynet_title)))
    return rows


def _read_prediction(path: Path, shape: tuple[int, ...], notes: list[str]) -> np.ndarray | None:
    try:
        array, _ = _squeezed(path)
    except InputError as e:
        notes.append(f"overlay grid: {e}")
        return None
    if array.shape != shape:
        notes.append(f"overlay grid: {path}: shape {array.shape} differs from the ground truth's {shape}")
        return None
    return array


def make_figures(experiments: Sequence[Experiment], out_dir: Path, meta: Mapping[str, Any],
                 notes: list[str]) -> list[FigureEntry]:
    folder = out_dir / FIGURES_DIR
    entries: list[FigureEntry] = []

    path = figures.framework_init_bars(
        bar_values(experiments), published.MIDL_TABLE1, published.FRAMEWORKS, published.INITS,
        {"cls_acc": "cls acc", "dice": "seg Dice (Dice1)"}, folder / "bars_framework_init.png")
    entries.append(FigureEntry(
        "bars", "Frameworks x initialisation",
        "Mean ± std over folds of MIDL Table 1's cells (fine-tuned without freezing); black ticks: the paper's "
        "numbers; a grey label instead of a bar: the experiment did not run.", path))

    classifiers = classifying(experiments)
    path = figures.confusion_matrices(
        [(e.label, e.summary["aggregate"]["confusion_matrix"], e.summary["aggregate"]["no_call"]) for e in classifiers],
        folder / "confusion_matrices.png")
    entries.append(FigureEntry(
        "confusion", "Confusion matrices",
        "Validation slices of all folds (rows: true type, columns: predicted). Colour: fraction of the row.", path))

    recall_items = [(e.label, {t: _mean_std(e.metric(f"recall_{t}")) for t in LESION_TYPES}) for e in classifiers]
    path = figures.per_class_recall(recall_items, folder / "per_class_recall.png")
    entries.append(FigureEntry("recall", "Per-class recall", "Recall of each lesion type, mean ± std over folds.", path))

    joints = sorted((e for e in experiments if e.framework == "joint" and e.done), key=_rank)
    if joints:
        joint = joints[0]
        ynets = sorted((e for e in experiments if e.framework == "ynet" and e.done),
                       key=lambda e: (e.init != joint.init, _rank(e)))
        ynet = ynets[0] if ynets else None
        raw_root = meta.get("raw_root")
        rows = [] if raw_root is None else overlay_rows(
            joint, ynet, Path(raw_root), str(meta.get("images_dataset", "Dataset504_ShebaJoint")), notes)
        if raw_root is None:
            notes.append("overlay grid: no raw_root given, so no images to draw")
        elif not rows:
            notes.append(f"overlay grid: no drawable validation case of {joint.label}")
        path = figures.overlay_grid(rows, folder / "overlay_grid.png")
        models = f"{joint.label}" + ("" if ynet is None else f" and {ynet.label}")
        entries.append(FigureEntry(
            "overlays", "Overlays (as the paper's Figure 2)",
            f"Validation cases, one per lesion type (the case whose joint Dice is nearest its type's median, not "
            f"the best); models: {models}. CT window W400/L50; lesions filled in their type's colour (Y-Net: the "
            "colour of its head's predicted type), liver outlined in yellow.", path))
    else:
        notes.append("overlay grid: no joint experiment finished, so there is none")
    return entries


# ----------------------------------------------------------------------------- entry point


def build_report(experiments: Sequence[Mapping[str, Any]], out_dir: str | os.PathLike, meta: Mapping[str, Any]) -> dict:
    """Write the experiment report (tables, figures, provenance, summary files) into ``out_dir``.

    Args:
        experiments: one dictionary per experiment with ``row``, ``framework`` (``joint``,
            ``ynet``, ``cls``, ``seg`` or ``nnunet``), ``init`` (``scratch``, ``ImageNet``,
            ``LiTS`` or ``-``), ``schedule`` (``NoFreeze``, ``FreezeEnc``, ``HierFreeze``,
            ``HierUnfreeze``), ``trainer``, ``dataset``, ``trainer_dir``, ``status`` (``"done"``,
            ``"not run: <why>"`` or ``"failed: <why>"``), ``summary``
            (:func:`~evaluation.evaluate.evaluate_trainer_dir`'s result, or ``None``) and
            ``budget`` (``{"epochs", "iterations", "encoder"}``).
        out_dir: the report folder (created).
        meta: ``commands``, ``versions``, ``profile``, ``wall_time_s``, ``phantom`` (its
            parameters or ``None``), ``raw_root`` (the run's ``nnUNet_raw``) and
            ``images_dataset`` (the joint dataset whose images the overlay grid shows).

    Returns:
        ``{"report_md", "report_html", "summary_json", "summary_csv": Path, "figures": [Path],
        "notes": [str], "summary": the summary.json content}``.
    """
    parsed = [Experiment.from_dict(e) for e in experiments]
    keys = [e.key for e in parsed]
    duplicates = sorted({k for k in keys if keys.count(k) > 1})
    if duplicates:
        raise ValueError(f"experiments listed twice: {', '.join(duplicates)}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    notes: list[str] = []
    tables = [midl_table(parsed), embc_table(parsed), baseline_table(parsed)]
    figure_entries = make_figures(parsed, out_dir, meta, notes)
    parts = provenance_parts(meta, parsed)

    summary = {
        "generated": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "meta": dict(meta),
        "caveat": CAVEAT,
        "published": published.as_dict(),
        "experiments": [experiment_record(e) for e in parsed],
        "tables": {t.key: t.to_dict() for t in tables + [parts["budgets"]]},
        "figures": [entry.relative(out_dir) for entry in figure_entries],
        "notes": notes,
    }
    paths = {name: out_dir / name for name in (REPORT_MD, REPORT_HTML, SUMMARY_JSON, SUMMARY_CSV)}
    write_json(summary, paths[SUMMARY_JSON], default=_json_default)
    write_text(summary_csv(parsed), paths[SUMMARY_CSV])
    write_text(render_markdown(tables, figure_entries, parts, out_dir, notes), paths[REPORT_MD])
    write_text(render_html(tables, figure_entries, parts, notes), paths[REPORT_HTML])
    return {
        "report_md": paths[REPORT_MD], "report_html": paths[REPORT_HTML], "summary_json": paths[SUMMARY_JSON],
        "summary_csv": paths[SUMMARY_CSV], "figures": [e.path for e in figure_entries], "notes": notes,
        "summary": json.loads(json.dumps(summary, default=_json_default)),
    }
