"""``nnunet_joint_evaluate``: the project's metrics on an nnU-Net trainer's cross-validation folds.

Reads each ``fold_N/validation`` folder that nnU-Net (and our classifier / Y-Net trainers) wrote,
compares it with the ground truth, and writes ``summary.json`` (per case, per fold, mean ± std
over folds) and ``summary.csv`` (per fold, mean, std, n) atomically::

    nnunet_joint_evaluate $nnUNet_results/Dataset504_ShebaJoint/nnUNetTrainerJoint__nnUNetPlans__2d

What a fold is evaluated for follows from what it holds: label maps give lesion and liver
metrics; ``classification.json`` gives the head's type (Y-Net, classifier); a joint dataset
without a head gives the majority-vote type, with the ``.npz`` probabilities as fallback.
"""

from __future__ import annotations

import argparse
import csv
import io
import os
from pathlib import Path
from typing import Sequence

from nnunet_joint.evaluation import folds as fold_io
from nnunet_joint.evaluation.metrics import (
    METRIC_NAMES,
    N_JOINT_CLASSES,
    SliceResult,
    evaluate_slice,
    format_mean_std,
    joint_slice_type,
    liver_dice,
    summarise,
)
from nnunet_joint.errors import InputError, cli_entry
from nnunet_joint.io import same_geometry, write_json, write_text
from nnunet_joint.names import CLASSIFICATION_FILE, SUMMARY_CSV, SUMMARY_JSON



def default_gt_dir(trainer_dir: Path) -> Path:
    """``$nnUNet_preprocessed/<DatasetXXX_Name>/gt_segmentations``, where nnU-Net keeps the ground truth."""
    preprocessed = os.environ.get("nnUNet_preprocessed")
    if not preprocessed:
        raise InputError(trainer_dir, "no --gt given and nnUNet_preprocessed is not set")
    return Path(preprocessed) / trainer_dir.resolve().parent.name / fold_io.GT_FOLDER


def evaluate_case(
    case_id: str,
    fold: int,
    validation: Path,
    gt_dir: Path,
    info: fold_io.DatasetInfo,
    segmentations: bool,
    classification: dict | None,
    full: fold_io.FullSlices | None = None,
) -> SliceResult:
    """One validation case: its label maps (when the fold has any) and its predicted type.

    With ``full`` (a cropped dataset), the predicted crop is pasted back into the original slice
    and combined as the cascade does (:func:`nnunet_joint.crops.cascade_labels`), and every metric
    compares it with the full-slice reference, so a lesion the crop lost counts as missed.
    """
    true_type = info.true_type(case_id)
    prediction = reference = probabilities = None
    liver = None
    if segmentations:
        reference_path = gt_dir / f"{case_id}{info.file_ending}"
        prediction_path = validation / f"{case_id}{info.file_ending}"
        if not prediction_path.exists():
            raise InputError(prediction_path, f"missing: no prediction for validation case {case_id} of fold {fold}")
        reference, reference_image = fold_io.read_label_map(reference_path, info)
        prediction, prediction_image = fold_io.read_label_map(prediction_path, info)
        mismatch = same_geometry(reference_image, prediction_image)
        if mismatch is not None:
            raise InputError(prediction_path, f"{mismatch.replace(' the image', ' the ground truth')} ({reference_path})")
        npz = validation / f"{case_id}.npz"
        if info.is_joint and classification is None and npz.exists():
            probabilities = fold_io.read_probabilities(npz, prediction.shape, N_JOINT_CLASSES)
        if full is not None:
            prediction = full.paste(case_id, prediction, info.file_ending)
            reference = full.reference(case_id, info)
            if probabilities is not None:
                probabilities = full.paste_probabilities(case_id, probabilities)
        liver = liver_dice(prediction >= 1, reference >= 1)  # liver includes its lesions

    type_probs = None
    pred_type = None
    if classification is not None:
        if case_id not in classification:
            raise InputError(validation / CLASSIFICATION_FILE, f"no entry for validation case {case_id}")
        type_probs, pred_type = classification[case_id]
    elif segmentations and info.is_joint:
        pred_type = joint_slice_type(prediction, probabilities)

    lesions = segmentations and info.has_lesions
    return evaluate_slice(
        case_id,
        fold,
        prediction if lesions else None,
        reference if lesions else None,
        true_type=true_type,
        pred_type=pred_type,
        type_probs=type_probs,
        liver_dice=liver,
    )


def evaluate_fold(
    trainer_dir: Path,
    fold: int,
    gt_dir: Path,
    info: fold_io.DatasetInfo,
    splits: list[dict] | None,
    splits_path: Path | None,
    full: fold_io.FullSlices | None = None,
) -> tuple[list[SliceResult], str]:
    """All validation cases of one fold, and what the fold was evaluated as."""
    validation = fold_io.validation_dir(trainer_dir, fold)
    classification = fold_io.read_classification(validation)
    segmentations = fold_io.has_segmentations(validation, info.file_ending) or classification is None
    cases = fold_io.validation_cases(validation, fold, info.file_ending, splits, splits_path, classification)
    results = [evaluate_case(c, fold, validation, gt_dir, info, segmentations, classification, full)
               for c in cases]
    if classification is not None:
        kind = "segmentation+head" if segmentations else "classification"
    elif info.is_joint:
        kind = "joint"
    else:
        kind = "segmentation" if info.has_lesions else "liver"
    return results, kind


def evaluate_trainer_dir(
    trainer_dir: str | os.PathLike,
    gt_dir: str | os.PathLike | None = None,
    dataset_json: str | os.PathLike | None = None,
    folds: Sequence[int] | None = None,
    splits_file: str | os.PathLike | None = None,
    raw_dataset: str | os.PathLike | None = None,
) -> dict:
    """Evaluate the cross-validation folds of one nnU-Net trainer results folder.

    Args:
        trainer_dir: ``$nnUNet_results/DatasetXXX_Name/<Trainer>__<Plans>__<config>``.
        gt_dir: ground-truth label maps; default ``$nnUNet_preprocessed/<dataset>/gt_segmentations``.
        dataset_json: default the copy nnU-Net keeps in ``trainer_dir``.
        folds: default every ``fold_N`` folder found.
        splits_file: the folds' validation cases; default ``splits_final.json`` beside ``gt_dir``
            when it exists (then a missing prediction is an error), else the cases each
            validation folder holds.
        raw_dataset: the dataset's raw folder (default ``$nnUNet_raw/<dataset>``); when it holds
            the converter's ``crops.json`` and ``labelsFull/``, every case is scored on its full
            original slice (predictions pasted back through the crop box), else on the files as
            they are.

    Returns:
        :func:`evaluation.metrics.summarise`'s dictionary plus ``"cases"`` (one entry per case),
        ``"fold_kinds"`` and the inputs used, all plain JSON data.
    """
    trainer_dir = Path(trainer_dir)
    found = fold_io.find_folds(trainer_dir)
    folds = found if folds is None else [int(f) for f in folds]
    if not folds:
        raise InputError(trainer_dir, "no folds selected")
    gt_dir = default_gt_dir(trainer_dir) if gt_dir is None else Path(gt_dir)
    if not gt_dir.is_dir():
        raise InputError(gt_dir, "ground-truth folder not found")
    dataset_json = trainer_dir / "dataset.json" if dataset_json is None else Path(dataset_json)
    info = fold_io.read_dataset_json(dataset_json)
    if splits_file is None and (gt_dir.parent / fold_io.SPLITS_FILE).is_file():
        splits_file = gt_dir.parent / fold_io.SPLITS_FILE
    splits_path = None if splits_file is None else Path(splits_file)
    splits = None if splits_path is None else fold_io.read_splits(splits_path)

    if raw_dataset is None and os.environ.get("nnUNet_raw"):
        raw_dataset = Path(os.environ["nnUNet_raw"]) / gt_dir.resolve().parent.name
    full = fold_io.find_full_slices(None if raw_dataset is None else Path(raw_dataset))
    results: list[SliceResult] = []
    kinds: dict[str, str] = {}
    for fold in folds:
        fold_results, kinds[str(fold)] = evaluate_fold(trainer_dir, fold, gt_dir, info, splits, splits_path, full)
        results += fold_results
    summary = summarise(results)
    summary.update(
        trainer_dir=str(trainer_dir.resolve()),
        gt_dir=str(gt_dir.resolve()),
        dataset_json=str(dataset_json.resolve()),
        splits_file=None if splits_path is None else str(splits_path.resolve()),
        folds=folds,
        fold_kinds=kinds,
        scored_on="full slices" if full is not None else "the dataset's images as they are",
        crop_mode=None if full is None else full.crop_mode,
        cases=[r.to_dict() for r in results],
    )
    return summary


# ----------------------------------------------------------------------------- outputs


def _number(value: float | int | None) -> str:
    return "" if value is None else (str(value) if isinstance(value, int) else f"{value:.6g}")


def summary_csv(summary: dict) -> str:
    """One row per fold, then ``mean``, ``std`` and ``n`` (slices each metric stands on)."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["fold", "n_slices", *METRIC_NAMES])
    for fold in summary["per_fold"]:
        writer.writerow([fold["fold"], fold["n_slices"], *(_number(fold["metrics"][m]["value"]) for m in METRIC_NAMES)])
    aggregate = summary["aggregate"]
    for row in ("mean", "std", "n"):
        writer.writerow([row, aggregate["n_slices"], *(_number(aggregate["metrics"][m][row]) for m in METRIC_NAMES)])
    return buffer.getvalue()


def format_table(summary: dict, digits: int = 3) -> str:
    """A console table of the metrics defined in at least one fold: mean ± std, n, per fold."""
    folds = summary["per_fold"]
    header = ["metric", "mean ± std", "n", *(f"fold {f['fold']}" for f in folds)]
    rows = [header]
    for name in METRIC_NAMES:
        metric = summary["aggregate"]["metrics"][name]
        if metric["mean"] is None:
            continue
        per_fold = [f["metrics"][name]["value"] for f in folds]
        rows.append(
            [name, format_mean_std(metric, digits), str(metric["n"]),
             *("–" if v is None else f"{v:.{digits}f}" for v in per_fold)]
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(r, widths))) for r in rows)


def write_summary(summary: dict, out_dir: str | os.PathLike) -> tuple[Path, Path]:
    """Write ``summary.json`` and ``summary.csv`` atomically into ``out_dir``."""
    out_dir = Path(out_dir)
    json_path, csv_path = out_dir / SUMMARY_JSON, out_dir / SUMMARY_CSV
    write_json(summary, json_path)
    write_text(summary_csv(summary), csv_path)
    return json_path, csv_path


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="nnunet_joint_evaluate",
        description="Lesion Dice (per slice and pooled), recall, success rate, lesion-type accuracy, "
        "per-class recall, confusion matrix and liver Dice of an nnU-Net trainer's cross-validation folds, "
        "mean ± std over folds.",
    )
    p.add_argument("trainer_dir", help="$nnUNet_results/DatasetXXX_Name/<Trainer>__<Plans>__<config>")
    p.add_argument("--gt", help="ground-truth folder (default $nnUNet_preprocessed/<dataset>/gt_segmentations)")
    p.add_argument("--dataset-json", help="dataset.json (default the copy in TRAINER_DIR)")
    p.add_argument("--splits", help="splits_final.json (default beside the ground-truth folder, if present)")
    p.add_argument("--folds", type=int, nargs="+", help="folds to evaluate (default every fold_N folder)")
    p.add_argument("--raw-dataset", help="the dataset's raw folder, for full-slice scoring of cropped datasets "
                                         "(default $nnUNet_raw/<dataset>)")
    p.add_argument("-o", "--output", help="folder for summary.json and summary.csv (default TRAINER_DIR)")
    return p


@cli_entry
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    summary = evaluate_trainer_dir(args.trainer_dir, args.gt, args.dataset_json, args.folds, args.splits,
                                   args.raw_dataset)
    json_path, csv_path = write_summary(summary, args.output or args.trainer_dir)
    print(format_table(summary))
    print(f"{summary['aggregate']['n_slices']} cases in {len(summary['per_fold'])} fold(s); wrote {json_path} and {csv_path}")
    return 0


if __name__ == "__main__":
    main()
