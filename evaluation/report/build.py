""":func:`build_report`: experiments in, one document out, rendered and written with its data files."""

from __future__ import annotations

import datetime
import json
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

from nnunet_joint.evaluation.coverage import coverage_lines
from nnunet_joint.evaluation import published, statistics
from nnunet_joint.evaluation.metrics import format_mean_std
from nnunet_joint.evaluation.report import document as doc
from nnunet_joint.evaluation.report import evidence as evidence_module
from nnunet_joint.evaluation.report import outputs, tables
from nnunet_joint.evaluation.report.evidence import Evidence
from nnunet_joint.evaluation.report.experiments import Experiment
from nnunet_joint.evaluation.report.figure_set import make_figures
from nnunet_joint.io import write_json, write_text
from nnunet_joint.names import SUMMARY_CSV, SUMMARY_JSON

REPORT_MD = "report.md"
REPORT_HTML = "report.html"
TITLE = "nnunet_joint experiment report"
CAVEAT = (
    "The default data is a synthetic CT phantom (docs/data_formats.md, \"The phantom\"), not the Sheba set or LiTS, and the "
    "training budgets above are far below the papers'. These numbers show that every code path runs and how the "
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
    "Every metric is computed on the full original slice, and every table shows mean ± std (population std) over "
    "folds with the number of slices it stands on.",
)


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "unknown"
    return f"{seconds:.0f} s ({datetime.timedelta(seconds=round(seconds))})"


def stage1_line(stage1: Mapping[str, Any] | None) -> str:
    """The stage-1 liver model's validation liver Dice per case (the cascade's first step)."""
    if not stage1 or not stage1.get("summary"):
        return "not run"
    dice = stage1["summary"]["aggregate"]["metrics"]["liver_dice"]
    return (f"{stage1.get('trainer', '?')} on Dataset501: liver Dice per validation volume "
            f"{format_mean_std(dice)} (n={dice['n']} volumes)")


def statistics_definitions() -> list[str]:
    return [
        f"Bootstrap interval: {statistics.BOOTSTRAP_RESAMPLES:,} resamples (numpy default_rng, seed "
        f"{statistics.BOOTSTRAP_SEED}); each resample draws as many patients as were validated, with replacement, "
        f"and takes the mean over all their slices; the interval is the {statistics.CONFIDENCE * 100:g} % percentile "
        "interval of those means. Patients come from dataset.json's 'patients'; without them each slice is its "
        "own unit (the intervals table says so).",
        "Paired tests, on the validation slices both rows evaluated: exact McNemar for the type (two-sided binomial "
        "test on the discordant slices, scipy.stats.binomtest), Wilcoxon signed-rank for per-slice Dice1 "
        "(scipy.stats.wilcoxon defaults: equal slices dropped; exact for up to 50 slices without ties, else "
        f"approximated). A difference is called supported when p < {statistics.ALPHA:g} (two-sided), with no "
        "correction for the number of tests; otherwise it is indistinguishable from noise at this sample size.",
    ]


def comparison_blocks(evidence: Evidence) -> list[doc.Block]:
    """The paired tests as a table and in words: which differences are supported, which are noise."""
    tested = evidence.tested
    if not tested:
        blocks: list[doc.Block] = [doc.Paragraph(
            "No pair the papers compare has both of its rows finished, so no difference is tested.")]
    else:
        supported = [r for r in tested if r.test.supported]
        noise = [r for r in tested if not r.test.supported]
        blocks = [tables.comparisons_table(evidence)]
        blocks.append(doc.BulletList([tables.comparison_sentence(r) for r in supported],
                                     f"Supported differences (p < {statistics.ALPHA:g}):") if supported else
                      doc.Paragraph(f"No tested difference is supported at p < {statistics.ALPHA:g}."))
        if noise:
            blocks.append(doc.BulletList([tables.comparison_sentence(r) for r in noise],
                                         f"Not supported, indistinguishable from noise (p ≥ {statistics.ALPHA:g}):"))
        blocks.append(doc.Paragraph(
            f"{len(tested)} tests were run without correction: if no method differed, about "
            f"{statistics.ALPHA * len(tested):.1f} of them would come out supported by chance alone."))
    untested = list(dict.fromkeys(f"{r.title}: {r.reason}" for r in evidence.untested))
    if untested:
        blocks.append(doc.BulletList(untested, "Not tested, because a row did not finish:"))
    return blocks


def build_document(experiments: Sequence[Experiment], evidence: Evidence, figure_entries: Sequence[doc.Figure],
                   meta: Mapping[str, Any], notes: Sequence[str]) -> doc.Document:
    """The whole report as one document (rendered to Markdown and HTML alike)."""
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
    return doc.Document(TITLE, [
        doc.Paragraph(f"Profile {profile}, wall time {wall_time} (of the reproduce call that wrote this report; a "
                      f"resumed run counts only what that call did). {tables.CELL_LEGEND}"),
        doc.Paragraph(CAVEAT, kind="caveat"),
        doc.Section("Results", [doc.BulletList(coverage_lines(meta.get("cascade")), "The cascade's crops:"),
                                tables.midl_table(experiments, evidence), tables.embc_table(experiments, evidence),
                                tables.baseline_table(experiments, evidence),
                                tables.intervals_table(experiments, evidence)], "results"),
        doc.Section("Paired comparisons", comparison_blocks(evidence), "comparisons"),
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


def build_report(experiments: Sequence[Mapping[str, Any]], out_dir: str | os.PathLike, meta: Mapping[str, Any]) -> dict:
    """Write the experiment report (tables, paired tests, figures, provenance, summary files) into ``out_dir``.

    Args:
        experiments: one dictionary per experiment with ``row``, ``framework`` (``joint``,
            ``ynet``, ``cls``, ``seg`` or ``nnunet``), ``init`` (``scratch``, ``ImageNet``,
            ``LiTS`` or ``-``), ``schedule`` (``NoFreeze``, ``FreezeEnc``, ``HierFreeze``,
            ``HierUnfreeze``), ``trainer``, ``dataset``, ``trainer_dir``, ``status`` (``"done"``,
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
    document = build_document(parsed, evidence, figure_entries, meta, notes)

    summary = {
        "generated": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "meta": dict(meta),
        "caveat": CAVEAT,
        "published": published.as_dict(),
        "statistics": statistics.definitions(),
        "experiments": [outputs.experiment_record(e, evidence) for e in parsed],
        "paired_tests": [r.to_dict() for r in evidence.results],
        "tables": {t.key: t.to_dict() for t in document.tables()},
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
