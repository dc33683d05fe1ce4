"""The report's tables, built from experiments and their evidence as text cells.

A cell of an experiment that did not run shows its status text ("not run: no ImageNet weights
given"), never a number, so a missing result cannot pass for a measured one. A measured cell
reads ``mean ± std (n=slices)`` over folds; type accuracy and Dice1 add ``[low, high]``, the
95 % bootstrap interval over patients (:mod:`evaluation.report.evidence`); Dice2 leads with its
pooled value (:func:`evaluation.metrics.summarise`).
"""

from __future__ import annotations

from typing import Mapping, Sequence

from nnunet_joint import names as vocabulary
from nnunet_joint.evaluation import published
from nnunet_joint.evaluation.metrics import format_mean_std
from nnunet_joint.evaluation.report.document import Table
from nnunet_joint.evaluation.report.evidence import METRIC_WORDS, ComparisonResult, Evidence
from nnunet_joint.evaluation.report.experiments import Experiment, find, training_used
from nnunet_joint.evaluation.statistics import ALPHA, Interval, format_p

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
MIDL_ROWS: dict[str, tuple[str, ...]] = {f: vocabulary.FRAMEWORKS[f].metrics for f in vocabulary.PAPER_FRAMEWORKS}
BASELINE_METRICS: tuple[str, ...] = ("dice", "global_dice", "recall", "success_rate", "cls_acc")
NOT_LISTED = "not run: not in the experiment list"
CELL_LEGEND = (
    "Ours: mean ± std over folds (population std), n = validation slices the metric stands on; for cls acc and "
    "Dice1, [a, b] is the 95 % bootstrap interval over patients of the mean over all validation slices; Dice2 "
    "is pooled over all validation slices of all folds, with the mean ± std of the per-fold values beside it."
)
#: The same, short, for table captions.
CELL_LEGEND_SHORT = "Ours: mean ± std over folds (n = slices) [95 % bootstrap interval over patients]."


def interval_text(interval: Interval | None) -> str:
    return "" if interval is None else f"[{interval.low:.2f}, {interval.high:.2f}]"


def ours_cell(experiment: Experiment | None, metric: str, evidence: Evidence | None = None) -> str:
    """``"0.71 ± 0.03 (n=332) [0.66, 0.76]"``; the status text if not run; ``–`` if undefined."""
    if experiment is None:
        return NOT_LISTED
    if not experiment.done:
        return experiment.status
    entry = experiment.metric(metric)
    if entry is None:
        return "–"
    if entry.get("pooled") is not None:
        text = f"{entry['pooled']:.2f} pooled; folds {format_mean_std(entry)} (n={entry['n']})"
    else:
        text = f"{format_mean_std(entry)} (n={entry['n']})"
    interval = None if evidence is None else evidence.interval(experiment, metric)
    return text if interval is None else f"{text} {interval_text(interval)}"


def paper_cell(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def midl_table(experiments: Sequence[Experiment], evidence: Evidence) -> Table:
    header = ["framework", "metric"]
    for init in published.INITS:
        header += [f"{init}: ours", f"{init}: paper"]
    rows = []
    for framework, name in published.FRAMEWORKS.items():
        for metric in MIDL_ROWS[framework]:
            row = [name, METRIC_LABELS[metric]]
            for init in published.INITS:
                experiment = find(experiments, framework, init, published.MIDL_SCHEDULE)
                row += [ours_cell(experiment, metric, evidence),
                        paper_cell(published.midl_value(framework, init, metric))]
            rows.append(row)
    return Table("midl", "Table 1 (MIDL)",
                 "Four frameworks x three initialisations, fine-tuned without freezing. "
                 f"{CELL_LEGEND_SHORT} Paper: MIDL 2020 Table 1, mean over 3 folds.", header, rows)


def embc_table(experiments: Sequence[Experiment], evidence: Evidence) -> Table:
    header = ["strategy"]
    for metric in published.EMBC_METRICS:
        header += [f"{METRIC_LABELS[metric]}: ours", f"{METRIC_LABELS[metric]}: paper"]
    rows = []
    for key, (name, init, schedule) in published.EMBC_STRATEGIES.items():
        experiment = find(experiments, "joint", init, schedule)
        row = [f"{name} [joint, {init}, {schedule}]"]
        for metric in published.EMBC_METRICS:
            row += [ours_cell(experiment, metric, evidence), paper_cell(published.EMBC_TABLE[key][metric])]
        rows.append(row)
    return Table("embc", "Fine-tuning (EMBC)",
                 "Joint model: scratch baseline and four ways to fine-tune LiTS weights. Dice1 = mean per-slice lesion "
                 "Dice, Dice2 = Dice of TP/FP/FN pooled over all validation slices of all folds, success = predicted "
                 "lesion overlaps the true one, accuracy = majority vote of the predicted lesion pixels. "
                 f"{CELL_LEGEND_SHORT} Paper: EMBC 2019.", header, rows)


def baseline_table(experiments: Sequence[Experiment], evidence: Evidence) -> Table:
    header = ["model", "dataset", *(METRIC_LABELS[m] for m in BASELINE_METRICS)]
    rows = []
    plain = [e for e in experiments if e.framework == "nnunet"]
    comparison = [find(experiments, "seg", "scratch", published.MIDL_SCHEDULE),
                  find(experiments, "joint", "scratch", published.MIDL_SCHEDULE)]
    for experiment in plain + [e for e in comparison if e is not None]:
        name = f"plain nnU-Net ({experiment.trainer})" if experiment.framework == "nnunet" else (
            f"ours for comparison: {experiment.label}")
        rows.append([name, experiment.dataset, *(ours_cell(experiment, m, evidence) for m in BASELINE_METRICS)])
    if not plain:
        rows.insert(0, ["plain nnU-Net (nnUNetTrainer)", "–", *([NOT_LISTED] * len(BASELINE_METRICS))])
    return Table("nnunet", "Plain nnU-Net baselines",
                 "nnU-Net's default 2d U-Net (nnUNetTrainer, its own architecture, no transfer) on the segmentation "
                 "and joint datasets. On the joint dataset its label map carries the type, so its accuracy is the same "
                 "majority vote as our joint model's; on the segmentation dataset it has no type (–). "
                 f"{CELL_LEGEND_SHORT}",
                 header, rows)


def intervals_table(experiments: Sequence[Experiment], evidence: Evidence) -> Table:
    """Per finished experiment: the slice-pooled accuracy and Dice1 with their intervals, and the units."""
    header = ["experiment", "dataset", "cls acc (all slices)", "Dice1 (all slices)", "slices", "resampled units"]
    rows = []
    for e in experiments:
        if not e.done:
            continue
        cells = []
        for metric in ("cls_acc", "dice"):
            interval = evidence.interval(e, metric)
            cells.append("–" if interval is None else f"{interval.estimate:.2f} {interval_text(interval)}")
        units = [i for i in evidence.intervals.get(e.key, {}).values()]
        n_slices = str(e.summary["aggregate"]["n_slices"])
        unit = "–" if not units else (f"{units[0].n_patients} patients" if e.patients is not None
                                      else f"{units[0].n_patients} slices (dataset.json lists no patients)")
        rows.append([e.label, e.dataset, *cells, n_slices, unit])
    return Table("intervals", "Bootstrap intervals",
                 "Mean over all validation slices of all folds, and its 95 % percentile bootstrap interval: patients "
                 "(dataset.json 'patients') resampled with replacement, each patient with all its slices.",
                 header, rows)


# ----------------------------------------------------------------------------- paired comparisons


def verdict(result: ComparisonResult) -> str:
    if result.test is None:
        return f"not tested: {result.reason}"
    return f"supported (p < {ALPHA:g})" if result.test.supported else f"noise (p ≥ {ALPHA:g})"


def comparisons_table(evidence: Evidence) -> Table:
    header = ["comparison (A vs B)", "metric", "test", "paired slices", "A", "B", "A − B", "paper A − B", "p",
              "verdict"]
    rows = []
    for r in evidence.tested:
        t = r.test
        paper = "–" if r.paper_effect is None else f"{r.paper_effect:+.2f}"
        rows.append([r.title, METRIC_WORDS[r.metric], t.test, str(t.n), f"{t.mean_a:.2f}", f"{t.mean_b:.2f}",
                     f"{t.effect:+.2f}", paper, format_p(t.p_value), verdict(r)])
    return Table("paired", "Paired tests",
                 "The pairs the papers compare, on the validation slices both rows evaluated. Type: exact McNemar test "
                 "(two-sided binomial test on the slices only one of the two typed right); Dice1: Wilcoxon signed-rank "
                 f"test on per-slice Dice (slices with equal Dice dropped). Supported: p < {ALPHA:g}, two-sided, no "
                 "correction for the number of tests. Paper A − B: the same difference in the paper (MIDL Table 1; "
                 "fine-tuning rows: EMBC).", header, rows)


def comparison_sentence(r: ComparisonResult) -> str:
    t = r.test
    text = (f"{r.title}, {METRIC_WORDS[r.metric]}: {t.mean_a:.2f} vs {t.mean_b:.2f} ({t.effect:+.2f} on {t.n} paired "
            f"slices, {t.test} p = {format_p(t.p_value)})")
    if r.paper_effect is None:
        return text
    if not t.supported or t.effect == 0 or r.paper_effect == 0:
        return f"{text}; paper: {r.paper_effect:+.2f}"
    agrees = (t.effect > 0) == (r.paper_effect > 0)
    return f"{text}; paper: {r.paper_effect:+.2f}, {'the same direction' if agrees else 'the opposite direction'}"


def budget_table(experiments: Sequence[Experiment]) -> Table:
    header = ["experiment", "trainer", "dataset", "init", "schedule", "epochs x iterations", "budget from",
              "iterations trained (curve)", "network", "status", "slices", "folds"]
    rows = []
    for e in experiments:
        used = training_used(e)
        slices = folds = "–"
        if e.done:
            slices, folds = str(e.summary["aggregate"]["n_slices"]), str(e.summary["aggregate"]["n_folds"])
        source = used.source if e.done else "requested (not trained)"
        budget, trained, network = used.budget, used.trained, used.network
        rows.append([e.label, e.trainer, e.dataset, e.init, e.schedule, budget, source, trained, network, e.status,
                     slices, folds])
    return Table("budgets", "Budgets per experiment",
                 "What each training used: epochs x iterations per epoch and the network as the fold folder's "
                 "joint_config.json records them; rows without that file (plain nnU-Net) show the budget the run "
                 "requested, and the network from nnU-Net's plans.json. Iterations trained: the last point of each "
                 "fold's learning curve.", header, rows)


def versions_table(versions: Mapping[str, str]) -> Table:
    return Table("versions", "Versions", "", ["package", "version"], [[str(k), str(v)] for k, v in versions.items()])
