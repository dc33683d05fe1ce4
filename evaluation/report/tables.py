"""The report's tables and its findings, built from experiments and their evidence as text cells.

The report's tables show the rows that ran (trained, or tried to and failed: a failure shows its
status text, never a number); the rows a profile does not run are named in one line instead
(:func:`evaluation.report.build.not_run_line`). With ``full=True`` the same functions build every
row of the papers' matrix, a row that did not run showing its status ("not run: ..."), for
``summary.json``. A measured cell holds one point estimate, the row's mean over all its
validation slices of all folds (:func:`row_estimate`; Dice2: TP/FP/FN pooled), the same number
the findings, the paired tests and the run-to-run table show for that row; type accuracy and
Dice1 add ``[low, high]``, the 95 % bootstrap interval over patients around that mean
(:mod:`evaluation.report.evidence`); after it, labelled, the slices it stands on and the fold SD
(sample SD, ddof 1, of the per-fold values), or "1 fold" (a standard deviation of one number
would read as precision).
"""

from __future__ import annotations

from typing import Mapping, Sequence

from nnunet_joint import names as vocabulary
from nnunet_joint.evaluation import published
from nnunet_joint.evaluation.report.document import Table
from nnunet_joint.evaluation.report.evidence import METRIC_WORDS, ComparisonResult, Evidence
from nnunet_joint.evaluation.report.experiments import Experiment, find, training_used
from nnunet_joint.evaluation.statistics import ALPHA, POWER, Interval, format_p, sample_sd

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
    "Ours: the mean over all validation slices of all folds, [a, b] its 95 % bootstrap interval over patients (cls "
    "acc and Dice1), then n = validation slices it stands on and the fold SD: the sample standard deviation "
    "(ddof 1) of the per-fold values, a spread, not the estimate's uncertainty (\"1 fold\" when there is one fold); "
    "Dice2 is pooled over the TP/FP/FN of all validation slices of all folds; –: no such metric, or a row this run "
    "did not train."
)
#: The same, short, for table captions.
CELL_LEGEND_SHORT = ("Ours: mean over all validation slices [95 % bootstrap interval over patients] (n = slices; "
                     "fold SD, ddof 1).")


def interval_text(interval: Interval | None) -> str:
    return "" if interval is None else f"[{interval.low:.2f}, {interval.high:.2f}]"


def ran(experiment: Experiment | None) -> bool:
    """The row trained, or tried to (a failure is a result the reader must see; "not run" is not)."""
    return experiment is not None and not experiment.status.startswith(NOT_RUN_PREFIX)


def fold_values(summary: Mapping, metric: str) -> list[tuple[float, int]]:
    """Per fold of an evaluation summary, ``(value, slices)`` of ``metric`` where it is defined."""
    out = []
    for fold in summary.get("per_fold") or []:
        entry = fold.get("metrics", {}).get(metric) or {}
        if entry.get("value") is not None:
            out.append((float(entry["value"]), int(entry.get("n") or 0)))
    return out


def row_estimate(summary: Mapping, metric: str) -> float | None:
    """A row's one number for ``metric``: its mean over all validation slices of all folds.

    Each fold's value is a mean over its ``n`` slices, so the slice-weighted mean of the folds is
    the mean over all slices (for type accuracy and Dice1 the same number as the bootstrap
    interval's centre); Dice2 is the Dice of the pooled TP/FP/FN. ``None`` when undefined.
    """
    entry = summary["aggregate"]["metrics"].get(metric) or {}
    if entry.get("pooled") is not None:
        return float(entry["pooled"])
    folds = fold_values(summary, metric)
    slices = sum(n for _, n in folds)
    return None if not slices else sum(v * n for v, n in folds) / slices


def estimate_text(summary: Mapping, metric: str, count: str, interval: Interval | None = None) -> str:
    """``"0.73 [0.65, 0.81] (n=93; fold SD 0.13)"``, ``"0.71 (n=30; 1 fold)"``; ``"–"`` when undefined.

    Args:
        summary: the evaluation summary (``aggregate`` and ``per_fold``).
        metric: the metric's name.
        count: what ``n`` counts, as it follows ``n=`` (``"332"``, ``"12 volumes"``).
        interval: the bootstrap interval of the same mean (its centre is the number shown).
    """
    value = interval.estimate if interval is not None else row_estimate(summary, metric)
    if value is None:
        return "–"
    folds = [v for v, _ in fold_values(summary, metric)]
    spread = sample_sd(folds)
    spread_text = "1 fold" if spread is None else f"fold SD {spread:.2f}"
    return f"{value:.2f}{'' if interval is None else ' ' + interval_text(interval)} (n={count}; {spread_text})"


def ours_cell(experiment: Experiment | None, metric: str, evidence: Evidence | None = None,
              full: bool = False) -> str:
    """``"0.73 [0.65, 0.81] (n=93; fold SD 0.13)"``; the status text if it failed (``full``: or did not run);
    else ``–``."""
    if experiment is None:
        return NOT_LISTED if full else "–"
    if not ran(experiment) and not full:
        return "–"
    if not experiment.done:
        return experiment.status
    entry = experiment.metric(metric)
    if entry is None:
        return "–"
    interval = None if evidence is None else evidence.interval(experiment, metric)
    return estimate_text(experiment.summary, metric, str(entry["n"]), interval)


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


NO_PATIENTS = "no verdict: patients missing"


def verdict(r: ComparisonResult) -> str:
    """The finding in words: detected (which way), or not detected and how large it would have had to be;
    no verdict when the units are slices (dataset.json names no patients)."""
    t = r.patient
    if not r.has_patients:
        return (f"{NO_PATIENTS} (dataset.json names none, so each slice counted as a patient; slices of one "
                "patient are not independent, so this p-value is too small to decide anything)")
    if r.detected:
        return f"detected: {r.comparison.a.label} {'higher' if t.effect > 0 else 'lower'}"
    if t.detectable is None:
        who = (f"only {t.n_patients - t.tied} of {t.n_patients} patients differ (the others tie), so"
               if t.tied else f"with {t.n_patients} patients")
        return (f"not detected; {who} the smallest possible p is {t.smallest_p:.2g}, not below Holm's first step "
                f"{detectable_level(t)}: no difference is detectable with so few")
    return f"not detected at this sample size; smallest detectable difference {t.detectable:.2f}"


def detectable_level(t) -> str:
    """``"0.05/21 = 0.0024"``: the level the smallest detectable difference was computed at."""
    family = round(ALPHA / t.detectable_alpha)
    return f"{ALPHA:g}/{family} = {t.detectable_alpha:.2g}" if family > 1 else f"{ALPHA:g}"


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
    family = len(evidence.tested)
    level = f"{ALPHA:g}/{family} = {ALPHA / family:.2g}" if family > 1 else f"{ALPHA:g}"
    header = ["comparison (A vs B)", "metric", "patients", "slices", "A", "B", "A − B [95 % interval]",
              "p (patients)", "p method", "p (Holm)", f"smallest detectable (α {level}, power {POWER:g})", "verdict",
              "per slice (slices not independent)", "paper A − B"]
    rows = []
    for r in evidence.tested:
        t, s = r.patient, r.per_slice
        patients = str(t.n_patients) if r.has_patients else f"– ({t.n_patients} slices as units)"
        detectable = ("– (no patients)" if not r.has_patients else "none" if t.detectable is None
                      else f"{t.detectable:.2f}")
        rows.append([r.title, METRIC_WORDS[r.metric], patients, str(t.n_slices), f"{t.mean_a:.2f}", f"{t.mean_b:.2f}",
                     difference_text(r), format_p(t.p_value), t.method, format_p(r.p_holm), detectable, verdict(r),
                     f"{s.test} p = {format_p(s.p_value)}",
                     "–" if r.paper_effect is None else f"{r.paper_effect:+.2f}"])
    return Table("paired", "Paired tests",
                 "The pairs the papers compare, on the validation slices both rows evaluated, with the patient as "
                 "the unit: A and B are the means over those slices (the rows' numbers in the tables above when both "
                 "rows evaluated the same slices); A − B with its 95 % paired bootstrap interval "
                 "(patients resampled with all their slices); p from a two-sided permutation test flipping the sign "
                 "of each patient's mean difference (weighted by its slices; p method: exact, or Monte Carlo with "
                 "more sign patterns where p lay within 3 standard errors of its Holm threshold), then Holm-corrected "
                 f"over the {family} tests of this report; detected: Holm p < {ALPHA:g}, never with slices as units "
                 "(dataset.json without patients); smallest detectable: the mean difference the sign-flip test "
                 f"detects with probability {POWER:g} at Holm's first step (α {level}), from simulated studies of "
                 "these patients (none: even the most extreme sign pattern cannot reach that level). Per slice: exact "
                 "McNemar (type) or Wilcoxon signed-rank (Dice1) on the slices, uncorrected, shown for reference "
                 "only: slices of one patient are not independent, so these p-values are too small. Paper A − B: the "
                 "same difference in the paper (MIDL Table 1; fine-tuning rows: EMBC).", header, rows)


def budget_table(experiments: Sequence[Experiment], full: bool = False) -> Table:
    """The experiments that trained (or tried to; ``full``: every listed one), with what each training used."""
    header = ["experiment", "trainer", "dataset", "init", "schedule", "epochs x iterations", "budget from",
              "iterations trained (curve)", "network", "learning rate", "status", "slices", "folds"]
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
        rows.append([e.label, e.trainer, e.dataset, e.init, e.schedule, budget, source, trained, network,
                     used.learning_rate, e.status, slices, folds])
    return Table("budgets", "Budgets per experiment",
                 "The experiments this run trained. What each training used: epochs x iterations per epoch and "
                 "the network as the fold folder's "
                 "joint_config.json records them; rows without that file (plain nnU-Net) show the budget the run "
                 "requested, and the network from nnU-Net's plans.json. Iterations trained: the last point of each "
                 "fold's learning curve. Learning rate: the recipe and its peak, and for a row with a classification "
                 "head the head's share of it (its own parameter group; 1x: a build before the head had one).",
                 header, rows)


def versions_table(versions: Mapping[str, str]) -> Table:
    return Table("versions", "Versions", "", ["package", "version"], [[str(k), str(v)] for k, v in versions.items()])
