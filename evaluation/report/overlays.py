"""The overlay grid's data (the paper's Figure 2): which validation cases, and their label maps.

The grid shows, per chosen case, the CT crop, the ground truth, the joint model's prediction and,
when a Y-Net ran, the Y-Net's (its lesion coloured by its head's type): only models that exist.
Cases are chosen from the joint model's per-case results; images come from the run's
``nnUNet_raw`` and predictions from the trainer folders' ``fold_N/validation``. A case with a
file that cannot be read is left out of the grid, with a note saying which file.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from nnunet_joint import LESION_TYPES
from nnunet_joint.errors import InputError
from nnunet_joint.evaluation import figures
from nnunet_joint.evaluation.report.experiments import Experiment
from nnunet_joint.io import read_image
from nnunet_joint.labels import lesion_mask, type_label

FILE_ENDING = ".nii.gz"


def _squeezed(path: Path) -> tuple[np.ndarray, sitk.Image]:
    """A stored slice (``1 x H x W`` or ``H x W``) as an ``H x W`` array, with its image for the spacing."""
    image = read_image(path)
    return np.squeeze(sitk.GetArrayFromImage(image)), image


def _case_index(e: Experiment | None) -> dict[str, dict]:
    return {} if e is None else {c["case_id"]: c for c in e.cases}


def _type_name(index: int | None) -> str:
    if index is None:
        return "–"
    return "no call" if index < 0 else LESION_TYPES[index]


def choose_overlay_cases(joint: Experiment, per_type: int = 1, minimum: int = 3) -> list[dict]:
    """One validation case per lesion type: the one whose joint Dice is nearest its type's median.

    The median case shows typical behaviour rather than the best; ties go to the lower case id.
    If fewer types exist, more cases fill the grid up to ``minimum`` rows.
    """
    cases = [c for c in joint.cases if c.get("true_type") is not None and c.get("dice") is not None]
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
    """Read the chosen cases' CT, ground truth, joint and (when given) Y-Net predictions; unreadable cases noted."""
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
        if joint_map is None:
            continue
        predictions = [joint_map.astype(np.int16)]
        titles = [f"input: {case_id} (fold {fold})", f"ground truth: {_type_name(case['true_type'])}",
                  f"joint ({joint.init}): {_type_name(case.get('pred_type'))}, Dice {case['dice']:.2f}"]
        if ynet is not None:
            ynet_case = ynet_cases.get(case_id)
            if ynet_case is None:
                notes.append(f"overlay grid: case {case_id} left out: {ynet.label} has no validation result for it")
                continue
            path = ynet.trainer_dir / f"fold_{ynet_case['fold']}" / "validation" / f"{case_id}{FILE_ENDING}"
            seg = _read_prediction(path, truth.shape, notes)
            if seg is None:
                continue
            pred_type = ynet_case.get("pred_type")
            typed = seg.astype(np.int16)
            typed[lesion_mask(seg)] = -1 if pred_type is None or pred_type < 0 else type_label(pred_type)
            predictions.append(typed)
            probs = ynet_case.get("type_probs")
            p = f" (p={max(probs):.2f})" if probs else ""
            dice = ynet_case.get("dice")
            titles.append(f"Y-Net ({ynet.init}): {_type_name(pred_type)}{p}"
                          + ("" if dice is None else f", Dice {dice:.2f}"))
        rows.append(figures.OverlayRow(case_id, ct, aspect, truth.astype(np.int16), tuple(predictions), tuple(titles)))
    return rows


def _read_prediction(path: Path, shape: tuple[int, ...], notes: list[str]) -> np.ndarray | None:
    """A predicted label map of the ground truth's shape, or ``None`` and a note (the case is left out)."""
    try:
        array, _ = _squeezed(path)
    except InputError as e:
        notes.append(f"overlay grid: case left out: {e}")
        return None
    if array.shape != shape:
        notes.append(f"overlay grid: case left out: {path}: shape {array.shape} differs from the ground truth's "
                     f"{shape}")
        return None
    return array

