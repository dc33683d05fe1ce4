"""The report's tables and its findings, built from experiments and their evidence as text cells.

The report's tables show the rows that ran (trained, or tried to and failed: a failure shows its
status text, never a number); the rows a profile does not run are named in one line instead
(:func:`evaluation.report.build.not_run_line`). With ``full=True`` the same functions build every
row of the papers' matrix, a row that did not run showing its status ("not run: ..."), for
``summary.json``. A measured cell reads ``mean ± std (n=slices)`` over folds, or
``mean (1 fold, n=slices)`` when there is one fold (a standard deviation of one number would read
as precision); type accuracy and Dice1 add ``[low, high]``, the 95 % bootstrap interval over
patients (:mod:`evaluation.report.evidence`); Dice2 leads with its pooled value
(:func:`evaluation.metrics.summarise`).
"""

from __future__ import annotations

from typing import Mapping, Sequence

from nnunet_joint import names as vocabulary
from nnunet_joint.evaluation import published
from nnunet_joint.evaluation.metrics import format_mean_std
from nnunet_joint.evaluation.report.document import Table
from nnunet_joint.evaluation.report.evidence import METRIC_WORDS, ComparisonResult, Evidence
from nnunet_joint.evaluation.report.experiments import Experiment, find, training_used
from nnunet_joint.evaluation.statistics import ALPHA, POWER, Interval, format_p

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
NOT_RUN_PREFIX = "not run"
NOT_LISTED = "not run: not in the experiment list"
CELL_LEGEND = (
    "Ours: mean ± std over folds (population std), or the value and \"1 fold\" when there is one fold; n = "
    "validation slices the metric stands on; for cls acc and Dice1, [a, b] is the 95 % bootstrap interval over "
    "patients of the mean over all validation slices; Dice2 is pooled over all validation slices of all folds, "
    "with the per-fold values' mean ± std beside it; –: no such metric, or a row this run did not train."
)
#: The same, short, for table captions.
CELL_LEGEND_SHORT = "Ours: mean ± std over folds (n = slices) [95 % bootstrap interval over patients]."


def interval_text(interval: Interval | None) -> str:
    return "" if interval is None else f"[{interval.low:.2f}, {interval.high:.2f}]"


def ran(experiment: Experiment | None) -> bool:
    """The row trained, or tried to (a failure is a result the reader must see; "not run" is not)."""
    return experiment is not None and not experiment.status.startswith(NOT_RUN_PREFIX)


def over_folds(entry: dict, count: str) -> str:
    """``"0.71 ± 0.03 (n=332)"`` over several folds, ``"0.71 (1 fold, n=110)"`` for one.

    Args:
        entry: an aggregate metric entry (``mean``, ``std``, ``n_folds``).
        count: what ``n`` counts, as it follows ``n=`` (``"332"``, ``"12 volumes"``).
    """
    if entry.get("n_folds") == 1 and entry.get("mean") is not None:
        return f"{entry['mean']:.2f} (1 fold, n={count})"
    return f"{format_mean_std(entry)} (n={count})"


def ours_cell(experiment: Experiment | None, metric: str, evidence: Evidence | None = None,
              full: bool = False) -> str:
    """``"0.71 ± 0.03 (n=332) [0.66, 0.76]"``; the status text if it failed (``full``: or did not run); else ``–``."""
    if experiment is None:
        return NOT_LISTED if full else "–"
    if not ran(experiment) and not full:
        return "–"
    if not experiment.done:
        return experiment.status
    entry = experiment.metric(metric)
    if entry is None:
        return "–"
    if entry.get("pooled") is not None:
        spread = "(1 fold)" if entry.get("n_folds") == 1 else f"folds {format_mean_std(entry)}"
        text = f"{entry['pooled']:.2f} pooled; {spread} (n={entry['n']})"
    else:
        text = over_folds(entry, str(entry["n"]))
    interval = None if evidence is None else evidence.interval(experiment, metric)
    return text if interval is None else f"{text} {interval_text(interval)}"


def paper_cell(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def midl_cells_run(experiments: Sequence[Experiment], full: bool = False) -> tuple[list[str], list[str]]:
    """The frameworks and initialisations of MIDL Table 1 with at least one cell this run trained (``full``: all)."""
    cells = [(f, i) for f in published.FRAMEWORKS for i in published.INITS
             if full or ran(find(experiments, f, i, published.MIDL_SCHEDULE))]
    return ([f for f in published.FRAMEWORKS if any(c[0] == f for c in cells)],
            [i for i in published.INITS if any(c[1] == i for c in cells)])


def midl_table(experiments: Sequence[Experiment], evidence: Evidence, full: bool = False) -> Table | None:
    """MIDL Table 1's frameworks and initialisations that ran (``None`` when none did; ``full``: all)."""
    frameworks, inits = midl_cells_run(experiments, full)
    if not frameworks:
        return None
    header = ["framework", "metric"]
    for init in inits:
        header += [f"{init}: ours", f"{init}: paper"]
    rows = []
    for framework in frameworks:
        name = published.FRAMEWORKS[framework]
        for metric in MIDL_ROWS[framework]:
            row = [name, METRIC_LABELS[metric]]
            for init in inits:
                experiment = find(experiments, framework, init, published.MIDL_SCHEDULE)
                row += [ours_cell(experiment, metric, evidence, full),
                        paper_cell(published.midl_value(framework, init, metric))]
            rows.append(row)
    return Table("midl", "Table 1 (MIDL)",
                 "The paper's frameworks x initialisations this run trained, fine-tuned without freezing. "
                 f"{CELL_LEGEND_SHORT} Paper: MIDL 2020 Table 1, mean over 3 folds.", header, rows)


def embc_table(experiments: Sequence[Experiment], evidence: Evidence, full: bool = False) -> Table | None:
    """The EMBC strategies this run trained (``None`` when none did; ``full``: all)."""
    header = ["strategy"]
    for metric in published.EMBC_METRICS:
        header += [f"{METRIC_LABELS[metric]}: ours", f"{METRIC_LABELS[metric]}: paper"]
    rows = []
    for key, (name, init, schedule) in published.EMBC_STRATEGIES.items():
        experiment = find(experiments, "joint", init, schedule)
        if not (full or ran(experiment)):
            continue
        row = [f"{name} [joint, {init}, {schedule}]"]
        for metric in published.EMBC_METRICS:
            row += [ours_cell(experiment, metric, evidence, full), paper_cell(published.EMBC_TABLE[key][metric])]
        rows.append(row)
    if not rows:
        return None
    return Table("embc", "Fine-tuning (EMBC)",
                 "Joint model: scratch baseline and four ways to fine-tune LiTS weights. Dice1 = mean per-slice lesion "
                 "Dice, Dice2 = Dice of TP/FP/FN pooled over all validation slices of all folds, success = predicted "
                 "lesion overlaps the true one, accuracy = majority vote of the predicted lesion pixels. "
                 f"{CELL_LEGEND_SHORT} Paper: EMBC 2019.", header, rows)


def baseline_table(experiments: Sequence[Experiment], evidence: Evidence, full: bool = False) -> Table | None:
    """Plain nnU-Net rows that ran, beside our scratch rows on the same datasets (``None`` when none ran;
    ``full``: every row listed)."""
    header = ["model", "dataset", *(METRIC_LABELS[m] for m in BASELINE_METRICS)]
    rows = []
    plain = [e for e in experiments if e.framework == "nnunet" and (full or ran(e))]
    if not plain and not full:
        return None
    comparison = [find(experiments, "seg", "scratch", published.MIDL_SCHEDULE),
                  find(experiments, "joint", "scratch", published.MIDL_SCHEDULE)]
    for experiment in plain + [e for e in comparison if e is not None and (full or ran(e))]:
        name = f"plain nnU-Net ({experiment.trainer})" if experiment.framework == "nnunet" else (
            f"ours for comparison: {experiment.label}")
        rows.append([name, experiment.dataset, *(ours_cell(experiment, m, evidence, full) for m in BASELINE_METRICS)])
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


def signed(value: float) -> str:
    """``"+0.12"``; a value that rounds to zero reads ``"+0.00"``, never ``"-0.00"``."""
    return f"{0.0 if round(value, 2) == 0 else value:+.2f}"


def difference_text(r: ComparisonResult) -> str:
    """``"+0.12 [-0.05, +0.30]"``: the mean difference over the paired slices and its patient bootstrap interval."""
    t = r.patient
    return f"{signed(t.effect)} [{signed(t.low)}, {signed(t.high)}]"


def verdict(r: ComparisonResult) -> str:
    """The finding in words: detected (which way), or not detected and how large it would have had to be."""
    t = r.patient
    if r.detected:
        return f"detected: {r.comparison.a.label} {'higher' if t.effect > 0 else 'lower'}"
    if t.detectable is None:
        return (f"not detected; with {t.n_patients} {r.units} no difference can reach p < {ALPHA:g} "
                "(too few for the test)")
    return f"not detected at this sample size; smallest detectable difference {t.detectable:.2f}"


def paper_text(r: ComparisonResult) -> str:
    """The paper's difference, and whether a detected one of ours points the same way."""
    if r.paper_effect is None:
        return ""
    text = f"paper ({r.comparison.source}): {r.paper_effect:+.2f}"
    if r.detected and r.patient.effect != 0 and r.paper_effect != 0:
        same = (r.patient.effect > 0) == (r.paper_effect > 0)
        text += (", the same direction: the claim replicates in this run" if same
                 else ", the opposite direction: this run contradicts the claim")
    return text


def finding_sentence(r: ComparisonResult, family: int) -> str:
    """One line of "What this run compared and found": effect, interval, corrected p, in words."""
    t = r.patient
    text = (f"{r.comparison.question}, {METRIC_WORDS[r.metric]}: {r.comparison.a.label} {t.mean_a:.2f} vs "
            f"{r.comparison.b.label} {t.mean_b:.2f}; difference {difference_text(r)}, p = {format_p(r.p_holm)} "
            f"(Holm-corrected over {family} test{'s' if family > 1 else ''}; {t.n_patients} {r.units}): {verdict(r)}")
    paper = paper_text(r)
    return f"{text}; {paper}." if paper else f"{text}."


def comparisons_table(evidence: Evidence) -> Table:
    header = ["comparison (A vs B)", "metric", "patients", "slices", "A", "B", "A − B [95 % interval]",
              "p (patients)", "p (Holm)", f"smallest detectable (power {POWER:g})", "verdict",
              "per slice (slices not independent)", "paper A − B"]
    rows = []
    for r in evidence.tested:
        t, s = r.patient, r.per_slice
        patients = str(t.n_patients) if r.units == "patients" else f"– ({t.n_patients} slices as units)"
        rows.append([r.title, METRIC_WORDS[r.metric], patients, str(t.n_slices), f"{t.mean_a:.2f}", f"{t.mean_b:.2f}",
                     difference_text(r), format_p(t.p_value), format_p(r.p_holm),
                     "–" if t.detectable is None else f"{t.detectable:.2f}", verdict(r),
                     f"{s.test} p = {format_p(s.p_value)}",
                     "–" if r.paper_effect is None else f"{r.paper_effect:+.2f}"])
    return Table("paired", "Paired tests",
                 "The pairs the papers compare, on the validation slices both rows evaluated, with the patient as "
                 "the unit: A and B are the means over those slices; A − B with its 95 % paired bootstrap interval "
                 "(patients resampled with all their slices); p from a two-sided permutation test flipping the sign "
                 "of each patient's mean difference (weighted by its slices), then Holm-corrected over the "
                 f"{len(evidence.tested)} tests of this report; "
                 f"detected: Holm p < {ALPHA:g}; smallest detectable: the difference this many patients would detect "
                 f"with probability {POWER:g}. Per slice: exact McNemar (type) or Wilcoxon signed-rank (Dice1) on the "
                 "slices, uncorrected, shown for reference only: slices of one patient are not independent, so these "
                 "p-values are too small. Paper A − B: the same difference in the paper (MIDL Table 1; fine-tuning "
                 "rows: EMBC).", header, rows)


def budget_table(experiments: Sequence[Experiment], full: bool = False) -> Table:
    """The experiments that trained (or tried to; ``full``: every listed one), with what each training used."""
    header = ["experiment", "trainer", "dataset", "init", "schedule", "epochs x iterations", "budget from",
              "iterations trained (curve)", "network", "status", "slices", "folds"]
    rows = []
    for e in experiments:
        if not (full or ran(e)):
            continue
        used = training_used(e)
        slices = folds = "–"
        if e.done:
            slices, folds = str(e.summary["aggregate"]["n_slices"]), str(e.summary["aggregate"]["n_folds"])
        source = used.source if e.done else "requested (not trained)"
        budget, trained, network = used.budget, used.trained, used.network
        rows.append([e.label, e.trainer, e.dataset, e.init, e.schedule, budget, source, trained, network, e.status,
                     slices, folds])
    return Table("budgets", "Budgets per experiment",
                 "The experiments this run trained. What each training used: epochs x iterations per epoch and "
                 "the network as the fold folder's "
                 "joint_config.json records them; rows without that file (plain nnU-Net) show the budget the run "
                 "requested, and the network from nnU-Net's plans.json. Iterations trained: the last point of each "
                 "fold's learning curve.", header, rows)


def versions_table(versions: Mapping[str, str]) -> Table:
    return Table("versions", "Versions", "", ["package", "version"], [[str(k), str(v)] for k, v in versions.items()])
