"""The overlay grid's data (the paper's Figure 2): which validation cases, and their label maps.

The grid shows, per chosen case, the CT crop, the ground truth, the joint model's prediction and
the Y-Net's (its lesion coloured by its head's type). Cases are chosen from the joint model's
per-case results; images come from the run's ``nnUNet_raw`` and predictions from the trainer
folders' ``fold_N/validation``. A file that cannot be read leaves its panel empty and a note.
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
                    typed[lesion_mask(seg)] = -1 if pred_type is None or pred_type < 0 else type_label(pred_type)
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
    """A predicted label map of the ground truth's shape, or ``None`` (and a note) when unusable."""
    try:
        array, _ = _squeezed(path)
    except InputError as e:
        notes.append(f"overlay grid: {e}")
        return None
    if array.shape != shape:
        notes.append(f"overlay grid: {path}: shape {array.shape} differs from the ground truth's {shape}")
        return None
    return array

