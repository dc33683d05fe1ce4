""":func:`build_report`: experiments in, one document out, rendered and written with its data files."""

from __future__ import annotations

import datetime
import json
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

from nnunet_joint.evaluation.coverage import coverage_lines
from nnunet_joint.evaluation import published, statistics
from nnunet_joint.evaluation.report import document as doc
from nnunet_joint.evaluation.report import evidence as evidence_module
from nnunet_joint.evaluation.report import outputs, predictions, tables
from nnunet_joint.evaluation.report.evidence import ComparisonResult, Evidence
from nnunet_joint.evaluation.report.experiments import Experiment, Outcome
from nnunet_joint.evaluation.report.spread import spread_blocks, spread_summary
from nnunet_joint.evaluation.report.figure_set import make_figures, pretraining_curve_figure
from nnunet_joint.io import write_json, write_text
from nnunet_joint.names import (FREEZE_ENCODER, HIERARCHICAL_FREEZING, HIERARCHICAL_UNFREEZING, SUMMARY_CSV,
                                SUMMARY_JSON)

REPORT_MD = "report.md"
REPORT_HTML = "report.html"
TITLE = "nnunet_joint experiment report"
CAVEAT = (
    "The default data is a synthetic CT phantom (docs/data_formats.md, \"The phantom\"), not the Sheba set or LiTS, and the "
    "training budgets are far below the papers'. These numbers show that every code path runs and how the "
    "methods rank on the phantom; they are not comparable to the papers' numbers in absolute value."
)
#: The metrics' definitions as the report states them (evaluation.metrics computes them).
DEFINITIONS = (
    "Dice1 (seg Dice): lesion Dice (all types merged) of each validation slice, averaged over slices.",
    "Dice2 (global): Dice of the lesion TP/FP/FN summed over all validation slices of all folds together (large "
    "lesions weigh more); beside it the mean ± std of each fold's pooled Dice, as the spread over folds.",
    "seg recall: lesion pixel sensitivity per slice, averaged; success rate: fraction of slices whose predicted "
    "lesion overlaps the true lesion.",
    "cls acc: slice lesion type; joint and plain nnU-Net on the joint dataset: majority vote of the predicted "
    "lesion pixels (no lesion pixel: the type with the largest summed probability in the predicted liver); Y-Net "
    "and classifier: argmax of the head. A slice without a call counts as wrong.",
    "Every metric is computed on the full original slice. Every table shows one number per row and metric: the mean "
    "over all validation slices of all folds (Dice2: pooled TP/FP/FN), with the number of slices it stands on and "
    "the fold SD, the sample standard deviation (ddof 1) of the per-fold values (with one fold: \"1 fold\").",
)
#: Said wherever a fine-tuning schedule is compared: the EMBC paper names its schedules but not their details.
SCHEDULES_READING = (
    f"The fine-tuning schedules ({FREEZE_ENCODER}, {HIERARCHICAL_FREEZING}, {HIERARCHICAL_UNFREEZING}) are this "
    "project's reading of the EMBC paper: "
    "its text does not specify which blocks are frozen or for how many epochs (nnunet_joint/freezing.py)."
)
FINDINGS_TITLE = "What this run compared and found"
PRETRAINING_TITLE = "The pretraining source"
SPREAD_TITLE = "Run-to-run spread"


def pretraining_blocks(record: Mapping[str, Any] | None, figure: doc.Figure | None) -> list[doc.Block]:
    """Source size against the target, the CT window of every row, and what the LiTS models learned
    (:func:`nnunet_joint.evaluation.pretraining.pretraining_record`)."""
    if not record:
        return [doc.Paragraph("This run recorded no pretraining source (no LiTS row ran).")]
    source, target = record["source"], record["target"]
    per_fold = ", ".join(f"{n} (fold {f})" for f, n in sorted(target["training_slices_per_fold"].items(),
                                                              key=lambda kv: int(kv[0])))
    ratio = record.get("ratio")
    lines = [f"source {source['dataset']}: {source['cases']} liver slices, {source['with_lesion']} with lesion",
             f"target {target['dataset']}: training slices per fold {per_fold or 'unknown'}",
             "lesion slices of the source per training slice of the target: "
             + ("unknown" if ratio is None else f"{ratio:.1f}x" + (
                 "" if ratio >= 10 else " (below 10x: not the papers' setting of a source much richer than the "
                 "target, so a transfer effect may not show)"))]
    window = record.get("ct_window")
    lines.append("CT window of every row (source and target plans alike): "
                 + ("nnU-Net's own per-dataset percentiles (no fixed window)" if window is None
                    else f"{window[0]:g} to {window[1]:g} HU, clipped, then mapped to [-2, 2]"))
    for model in record.get("models", []):
        dice = model.get("validation_lesion_dice")
        flat = {True: "its curve had flattened", False: "its curve was still rising at the end (trained too short "
                "to be the papers' strong source model)", None: "too few epochs recorded to tell whether its curve "
                "flattened"}[model.get("flattened")]
        lines.append(f"{model['name']}: validation lesion Dice "
                     + ("not recorded" if dice is None else f"{dice:.3f}") + f"; {flat}")
    blocks: list[doc.Block] = [doc.BulletList(lines)]
    if figure is not None:
        blocks.append(figure)
    return blocks


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "unknown"
    return f"{seconds:.0f} s ({datetime.timedelta(seconds=round(seconds))})"


def stage1_line(stage1: Mapping[str, Any] | None) -> str:
    """The stage-1 liver model's validation liver Dice per case (the cascade's first step)."""
    if not stage1 or not stage1.get("summary"):
        return "not run"
    dice = stage1["summary"]["aggregate"]["metrics"]["liver_dice"]
    volumes = f"{dice['n']} volumes"
    return (f"{stage1.get('trainer', '?')} on Dataset501: liver Dice per validation volume "
            f"{tables.estimate_text(stage1['summary'], 'liver_dice', volumes)}")


def statistics_definitions() -> list[str]:
    return [
        f"Bootstrap interval: {statistics.BOOTSTRAP_RESAMPLES:,} resamples (numpy default_rng, seed "
        f"{statistics.BOOTSTRAP_SEED}); each resample draws as many patients as were validated, with replacement, "
        f"and takes the mean over all their slices; the interval is the {statistics.CONFIDENCE * 100:g} % percentile "
        "interval of those means. Patients come from dataset.json's 'patients'; without them each slice is its "
        "own unit (the intervals table says so).",
        "Paired tests, on the validation slices both rows evaluated, with the patient as the unit: the effect is "
        "the difference of the two rows' means over those slices; its p-value a two-sided permutation test that "
        "flips the sign of each patient's mean difference, weighted by its slices (patients whose difference is 0 "
        f"left out: either sign gives the same statistic; exact over all 2^k sign patterns up to "
        f"{statistics.EXACT_MAX_PATIENTS} other patients, else {statistics.PERMUTATIONS:,} random patterns, seed "
        f"{statistics.PERMUTATION_SEED}, ten times more, up to {statistics.MAX_PERMUTATIONS:,}, while p lies within "
        f"{statistics.BORDERLINE_SE:g} standard errors of its Holm threshold; the table's p method says which); its "
        "interval a percentile bootstrap resampling patients with all their slices. The p-values of all the "
        "report's comparisons are Holm-corrected as one family; a difference is detected when the corrected p < "
        f"{statistics.ALPHA:g}. Without patients in dataset.json each slice counts as a patient; such a test is shown "
        "without a verdict, since slices of one patient are not independent and its p-value is too small.",
        "Smallest detectable difference: the mean difference over the slices that the sign-flip test detects with "
        f"probability {statistics.POWER:g} at Holm's first step (p < {statistics.ALPHA:g} / m, m the tests of this "
        f"report), from {statistics.POWER_SIMULATIONS:,} simulated studies of the same patients and slices (numpy "
        f"default_rng, seed {statistics.POWER_SEED}), each tested as above: the patients whose difference was 0 "
        "stay tied, the others are drawn from a normal distribution with the standard deviation of their observed "
        "differences. None when even the most extreme sign pattern cannot reach that level: its p is 2 / 2^k for "
        "the k patients whose difference is not 0, so 9 patients in a family of 21 (2 / 512 x 21 = 0.08) can detect "
        "nothing.",
        "Per-slice tests, for reference only: exact McNemar for the type (two-sided binomial test on the discordant "
        "slices) and Wilcoxon signed-rank for Dice1 (scipy.stats.wilcoxon defaults), uncorrected. They count "
        "slices as independent, which slices of one patient are not, so their p-values are too small.",
    ]


def not_run_line(experiments: Sequence[Experiment], profile: str) -> str | None:
    """One line naming the papers' rows this run did not train, and which profiles run them (``None``: all ran)."""
    from nnunet_joint.study.profiles import PROFILES  # the profiles' row lists

    groups: dict[tuple[Outcome, tuple[str, ...]], list[str]] = {}
    for e in experiments:
        if e.outcome.not_run_reason is None:
            continue
        runs = tuple(name for name, p in PROFILES.items() if name != profile and (
            p.rows is None or e.trainer in p.rows or f"{e.trainer}@{e.dataset}" in p.rows))
        if e.init == "ImageNet" or e.outcome.kind == Outcome.NOT_SELECTED:
            runs = ()  # every profile lists them; what they lack is the weights, or a place in --rows
        groups.setdefault((e.outcome, runs), []).append(e.label)
    if not groups:
        return None
    parts = []
    for (outcome, runs), labels in groups.items():
        reason = outcome.not_run_reason
        names = ", ".join(runs[:-1]) + f" and {runs[-1]}" if len(runs) > 1 else "".join(runs)
        where = (f"run by the {names} profile{'s' if len(runs) > 1 else ''}" if runs
                 else "run when --imagenet-weights is given"
                 if outcome.kind == Outcome.NEEDS_IMAGENET_WEIGHTS else "run without --rows, or named in it"
                 if outcome.kind == Outcome.NOT_SELECTED else "")
        parts.append(f"{', '.join(labels)} (not run: {reason}{'; ' + where if where else ''})")
    return "The papers' rows this run did not train: " + "; ".join(parts) + "."


def findings_blocks(evidence: Evidence) -> list[doc.Block]:
    """"What this run compared and found": one line per comparison and metric, and what it could not address."""
    tested = evidence.tested
    blocks: list[doc.Block] = []
    if tested:
        blocks.append(doc.BulletList([tables.finding_sentence(r, len(tested)) for r in tested]))
        against_nnunet = any(r.comparison.b.framework == "nnunet" for r in tested)
        blocks.append(doc.Paragraph(
            "Each line tests one of the papers' claims, A vs B, A being the row the papers found better"
            + (" (SE-ResNet vs plain nnU-Net asks whether the papers' networks beat nnU-Net's own on the same labels, "
               "which the papers did not test)" if against_nnunet else "")
            + ". Difference: A − B over the validation slices both rows evaluated, with its 95 % paired bootstrap "
            "interval over patients; p: two-sided permutation test flipping whole patients, Holm-corrected over every "
            "comparison above; details under Paired comparisons."))
    else:
        blocks.append(doc.Paragraph(
            "No pair the papers compare has both of its rows finished, so nothing is compared."))
    if any(r.comparison.question == "fine-tuning vs no freezing" for r in tested):
        blocks.append(doc.Paragraph(SCHEDULES_READING))
    unaddressed = _untested_titles([r for r in evidence.untested if _not_trained(r)])
    if unaddressed:
        blocks.append(doc.Paragraph(f"Not addressed (a row this run did not train): {unaddressed}."))
    problems = _untested_titles([r for r in evidence.untested if not _not_trained(r)], reasons=True)
    if problems:
        blocks.append(doc.Paragraph(f"Not tested: {problems}."))
    return blocks


def _not_trained(r: ComparisonResult) -> bool:
    """A side of the pair was not trained (as opposed to: trained and failed, or shares no slice)."""
    sides = (r.comparison.a, r.comparison.b)
    return not any(tables.ran(s.experiment) and not s.experiment.done for s in sides) and not all(
        tables.ran(s.experiment) for s in sides)


def _untested_titles(results: Sequence[ComparisonResult], reasons: bool = False) -> str:
    """The untested pairs, once each (a pair has a result per metric)."""
    titles = dict.fromkeys(f"{r.title} ({r.reason})" if reasons else r.title for r in results)
    return "; ".join(titles)


def comparison_blocks(evidence: Evidence) -> list[doc.Block]:
    """The paired tests in detail (the findings at the top say them in words)."""
    if not evidence.tested:
        return [doc.Paragraph("No pair the papers compare has both of its rows finished, so no difference is tested.")]
    return [tables.comparisons_table(evidence)]


def build_document(experiments: Sequence[Experiment], evidence: Evidence, figure_entries: Sequence[doc.Figure],
                   meta: Mapping[str, Any], notes: Sequence[str],
                   pretraining_figure: doc.Figure | None = None) -> doc.Document:
    """The whole report as one document (rendered to Markdown and HTML alike): the answer first."""
    phantom = meta.get("phantom")
    commands = [str(c) if isinstance(c, str) else " ".join(map(str, c)) for c in meta.get("commands", [])]
    versions = {str(k): str(v) for k, v in (meta.get("versions") or {}).items()}
    profile, wall_time = str(meta.get("profile", "unknown")), format_duration(meta.get("wall_time_s"))
    figures_section: list[doc.Block] = list(figure_entries)
    if notes:
        figures_section.append(doc.BulletList(list(notes), "Notes:"))
    data: list[doc.Block] = ([doc.Paragraph("User-supplied raw data (no phantom).")] if phantom is None else [
        doc.Paragraph("Synthetic CT phantom, generated with these parameters:"),
        doc.Code(json.dumps(phantom, indent=2, default=outputs.json_default, sort_keys=True), "json")])
    result_tables = [t for t in (tables.midl_table(experiments, evidence), tables.embc_table(experiments, evidence),
                                 tables.baseline_table(experiments, evidence)) if t is not None]
    not_run = not_run_line(experiments, profile)
    return doc.Document(TITLE, [
        doc.Paragraph(f"Profile {profile}, wall time {wall_time} (of the reproduce call that wrote this report; a "
                      "resumed run counts only what that call did)."),
        doc.Section(FINDINGS_TITLE, findings_blocks(evidence), "findings"),
        doc.Paragraph(CAVEAT, kind="caveat"),
        doc.Section("Results", [doc.Paragraph(tables.CELL_LEGEND),
                                doc.BulletList(coverage_lines(meta.get("cascade")), "The cascade's crops:"),
                                *result_tables, tables.intervals_table(experiments, evidence),
                                predictions.experiments_predictions_table(experiments, meta.get("handcrafted")),
                                *([doc.Paragraph(not_run)] if not_run else [])], "results"),
        doc.Section("Paired comparisons", comparison_blocks(evidence), "comparisons"),
        doc.Section(SPREAD_TITLE, spread_blocks(meta.get("repeats"), experiments, evidence), "spread"),
        doc.Section(PRETRAINING_TITLE, pretraining_blocks(meta.get("pretraining"), pretraining_figure), "pretraining"),
        doc.Section("Figures", figures_section, "figures"),
        doc.Section("How these numbers were made", [
            doc.BulletList([f"profile: {profile}",
                            f"wall time of the reproduce call that wrote this report: {wall_time}",
                            f"stage 1 (liver): {stage1_line(meta.get('stage1'))}"]),
            tables.budget_table(experiments),
            doc.Section("Definitions", [doc.BulletList([*DEFINITIONS, *statistics_definitions()])]),
            doc.Section("Commands", [doc.Code("\n".join(commands) or "(none recorded)")]),
            tables.versions_table(versions),
            doc.Section("Data", data),
            doc.Paragraph(CAVEAT, lead="Caveat."),
        ], "provenance"),
    ])


def full_tables(experiments: Sequence[Experiment], evidence: Evidence) -> list[doc.Table]:
    """The result and budget tables with every listed row, for ``summary.json`` (the report shows the rows that ran)."""
    return [tables.midl_table(experiments, evidence, full=True), tables.embc_table(experiments, evidence, full=True),
            tables.baseline_table(experiments, evidence, full=True), tables.budget_table(experiments, full=True)]


def build_report(experiments: Sequence[Mapping[str, Any]], out_dir: str | os.PathLike, meta: Mapping[str, Any]) -> dict:
    """Write the experiment report (tables, paired tests, figures, provenance, summary files) into ``out_dir``.

    Args:
        experiments: one dictionary per experiment with ``row``, ``framework`` (``joint``,
            ``ynet``, ``cls``, ``seg`` or ``nnunet``), ``init`` (``scratch``, ``ImageNet``,
            ``LiTS`` or ``-``), ``schedule`` (``NoFreeze``, ``FreezeEnc``, ``HierFreeze``,
            ``HierUnfreeze``), ``trainer``, ``dataset``, ``trainer_dir``, ``status`` (an
            :class:`~nnunet_joint.evaluation.report.experiments.Outcome`, or its text: ``"done"``,
            ``"not run: <why>"`` or ``"failed: <why>"``), ``summary``
            (:func:`~evaluation.evaluate.evaluate_trainer_dir`'s result, or ``None``), optional
            ``folds`` and ``budget`` (the requested ``{"epochs", "iterations", "encoder"}``; what
            a training used is read from its fold folders' ``joint_config.json`` when present).
        out_dir: the report folder (created).
        meta: ``commands``, ``versions``, ``profile``, ``wall_time_s``, ``phantom`` (its
            parameters or ``None``), ``raw_root`` (the run's ``nnUNet_raw``), ``images_dataset``
            (the joint dataset whose images the overlay grid shows) and ``stage1``.

    Returns:
        ``{"report_md", "report_html", "summary_json", "summary_csv": Path, "figures": [Path],
        "notes": [str], "summary": the summary.json content}``.

    Raises:
        ValueError: an entry lacks a required key, or an experiment is listed twice (before
            anything is written).
    """
    notes: list[str] = []
    parsed = [Experiment.from_dict(e, notes) for e in experiments]
    keys = [e.key for e in parsed]
    duplicates = sorted({k for k in keys if keys.count(k) > 1})
    if duplicates:
        raise ValueError(f"experiments listed twice: {', '.join(duplicates)}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    evidence = evidence_module.gather(parsed)
    notes += [f"{e.label}: dataset.json lists no patients, so its intervals resample slices, not patients"
              for e in parsed if e.done and e.patients is None]
    figure_entries = make_figures(parsed, out_dir, meta, notes)
    document = build_document(parsed, evidence, figure_entries, meta, notes,
                              pretraining_curve_figure(meta.get("pretraining"), out_dir))

    summary = {
        "generated": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "meta": dict(meta),
        "caveat": CAVEAT,
        "published": published.as_dict(),
        "statistics": statistics.definitions(),
        "experiments": [outputs.experiment_record(e, evidence) for e in parsed],
        "paired_tests": [r.to_dict() for r in evidence.results],
        "spread": spread_summary(meta.get("repeats"), parsed, evidence),
        "tables": {t.key: t.to_dict() for t in [*document.tables(), *full_tables(parsed, evidence)]},
        "figures": [entry.relative(out_dir) for entry in figure_entries],
        "notes": notes,
    }
    paths = {name: out_dir / name for name in (REPORT_MD, REPORT_HTML, SUMMARY_JSON, SUMMARY_CSV)}
    write_json(summary, paths[SUMMARY_JSON], default=outputs.json_default)
    write_text(outputs.summary_csv(parsed, evidence), paths[SUMMARY_CSV])
    write_text(doc.to_markdown(document, out_dir), paths[REPORT_MD])
    write_text(doc.to_html(document), paths[REPORT_HTML])
    return {
        "report_md": paths[REPORT_MD], "report_html": paths[REPORT_HTML], "summary_json": paths[SUMMARY_JSON],
        "summary_csv": paths[SUMMARY_CSV], "figures": [e.path for e in figure_entries], "notes": notes,
        "summary": json.loads(json.dumps(summary, default=outputs.json_default)),
    }
