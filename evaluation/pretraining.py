"""What the LiTS pretraining had to learn from and what it learned, for the report.

Whether pretraining on LiTS helps can only be asked where the source is much richer in lesions
than the target (the papers pretrain on LiTS's thousands of lesion slices and fine-tune on 332
Sheba slices). The report therefore states, from the run's own files rather than from the
phantom's parameters (so it holds for a user's data too):

- the source's size: LiTS lesion dataset cases (liver slices) and those holding lesion label,
  counted in its ``labelsTr``;
- the target's: training slices per fold of the joint dataset (``splits_final.json``), and the
  ratio of source lesion slices to target training slices;
- the CT window every row normalised with (the plans' ``CTNormalization`` clip range);
- the pretrained model's validation lesion Dice (nnU-Net's ``validation/summary.json``) and its
  learning curve, with a plain verdict on whether the curve had flattened (:func:`curve_flattened`).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np

#: A curve has flattened when its last quarter of epochs gains less than this (in lesion Dice) over
#: the quarter before it. 0.02 is below the epoch-to-epoch wobble of a validation Dice on a few
#: hundred patches, so a smaller gain is not evidence that more training would help.
FLAT_GAIN = 0.02
#: Fewer recorded epochs than this cannot show a plateau (two quarters of at least two epochs).
MIN_EPOCHS_FOR_VERDICT = 8


def lesion_cases(raw_dataset: Path) -> dict[str, int]:
    """Cases of an nnU-Net raw dataset and how many hold its ``lesion`` label, read from ``labelsTr``.

    Raises:
        ValueError: ``dataset.json`` has no ``lesion`` label or ``labelsTr`` holds no file of its file ending.
    """
    import SimpleITK as sitk

    dataset = json.loads((raw_dataset / "dataset.json").read_text(encoding="utf-8"))
    label = dataset.get("labels", {}).get("lesion")
    if not isinstance(label, int):
        raise ValueError(f"{raw_dataset / 'dataset.json'}: no integer 'lesion' label")
    files = sorted((raw_dataset / "labelsTr").glob(f"*{dataset.get('file_ending', '.nii.gz')}"))
    if not files:
        raise ValueError(f"{raw_dataset / 'labelsTr'}: no label files")
    with_lesion = sum(bool(np.any(sitk.GetArrayFromImage(sitk.ReadImage(str(f))) == label)) for f in files)
    return {"cases": len(files), "with_lesion": int(with_lesion)}


def training_cases_per_fold(splits_file: Path, folds: Sequence[int]) -> dict[int, int]:
    """Training cases of each requested fold in nnU-Net's ``splits_final.json``."""
    splits = json.loads(splits_file.read_text(encoding="utf-8"))
    return {int(f): len(splits[f]["train"]) for f in folds if 0 <= int(f) < len(splits)}


def ct_window(plans_file: Path) -> tuple[float, float] | None:
    """The clip range ``CTNormalization`` applies with these plans (channel 0), ``None`` when no
    configuration normalises channel 0 as CT."""
    plans = json.loads(plans_file.read_text(encoding="utf-8"))
    schemes = {c.get("normalization_schemes", [None])[0] for c in plans.get("configurations", {}).values()}
    if "CTNormalization" not in schemes:
        return None
    properties = plans["foreground_intensity_properties_per_channel"]["0"]
    return float(properties["percentile_00_5"]), float(properties["percentile_99_5"])


def validation_dice(fold_dir: Path, label: int) -> float | None:
    """Mean Dice of ``label`` over the fold's validation cases (nnU-Net's ``validation/summary.json``)."""
    path = fold_dir / "validation" / "summary.json"
    if not path.is_file():
        return None
    value = json.loads(path.read_text(encoding="utf-8")).get("mean", {}).get(str(label), {}).get("Dice")
    return None if value is None or not math.isfinite(value) else float(value)


def curve_flattened(dice: Sequence[float | None]) -> bool | None:
    """Whether a validation Dice curve had flattened: its last quarter's mean gains less than
    :data:`FLAT_GAIN` over the quarter before. ``None`` with too few recorded epochs to say."""
    values = [d for d in dice if d is not None]
    if len(values) < MIN_EPOCHS_FOR_VERDICT:
        return None
    quarter = len(values) // 4
    last, before = values[-quarter:], values[-2 * quarter:-quarter]
    return float(np.mean(last)) - float(np.mean(before)) < FLAT_GAIN


def pretraining_record(source_raw: Path, target_splits: Path, folds: Sequence[int], plans_file: Path,
                       models: Sequence[tuple[str, Path]], lesion_label: int) -> dict[str, Any]:
    """Everything the report's pretraining section shows, as plain JSON (see the module docstring).

    Args:
        source_raw: the LiTS lesion dataset (nnU-Net raw folder).
        target_splits: the joint dataset's ``splits_final.json``.
        folds: the folds the run trained.
        plans_file: the plans the rows trained with (for the CT window).
        models: ``(name, fold folder)`` of each pretrained model (SE-ResNet, plain nnU-Net).
        lesion_label: the source's lesion label (for the validation Dice).
    """
    from nnunet_joint.evaluation.report.experiments import RecordError, read_learning_curve
    from nnunet_joint.names import LEARNING_CURVE_FILE

    source = lesion_cases(source_raw)
    per_fold = training_cases_per_fold(target_splits, folds) if target_splits.is_file() else {}
    most = max(per_fold.values(), default=0)
    window = ct_window(plans_file) if plans_file.is_file() else None
    record: dict[str, Any] = {
        "source": {"dataset": source_raw.name, **source},
        "target": {"dataset": target_splits.parent.name, "training_slices_per_fold": per_fold},
        "ratio": source["with_lesion"] / most if most else None,
        "ct_window": list(window) if window else None,
        "models": []}
    for name, fold_dir in models:
        curve_path = fold_dir / LEARNING_CURVE_FILE
        curve = None
        if curve_path.is_file():
            try:
                curve = read_learning_curve(curve_path, 0)
            except RecordError:
                curve = None
        record["models"].append({
            "name": name, "fold_dir": str(fold_dir), "validation_lesion_dice": validation_dice(fold_dir, lesion_label),
            "iterations": list(curve.iterations) if curve else [], "lesion_dice": list(curve.lesion_dice) if curve else [],
            "flattened": curve_flattened(curve.lesion_dice) if curve else None})
    return record
