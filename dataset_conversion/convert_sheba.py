"""Sheba-like raw folder -> two nnU-Net v2 raw datasets on liver crops, with patient-grouped folds.

* ``Dataset503_ShebaSeg``: background 0 / liver 1 / lesion 2 (segmentation baseline, Y-Net).
* ``Dataset504_ShebaJoint``: background 0 / liver 1 / cyst 2 / hemangioma 3 / metastasis 4
  (pixel-wise classification; lesion pixels take the slice's type; coding in :mod:`nnunet_joint.labels`).

Both hold the same cases, cropped to the liver region plus a margin (:mod:`nnunet_joint.crops`):
the stage-1 model's liver when one is given (the cascade, as in both papers), else the reference
liver and lesion masks; and the same ``splits_final.json`` (3 folds by patient, stratified by
type), written into the raw folder (nnU-Net copies it at planning) and, when known, into the
preprocessed folder. Beside nnU-Net's files each dataset keeps what full-slice scoring needs:
``crops.json`` (crop box per case, lesion coverage, stage-1 liver Dice), ``labelsFull/`` (the
reference labels on the whole slice) and ``roiFull/`` (the liver region the cascade keeps lesions
in).

Usage::

    nnunet_joint_convert_sheba RAW_DIR [--seg-id 503] [--joint-id 504] [--margin-mm 10] [--folds 3]
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import SimpleITK as sitk

from nnunet_joint.dataset_conversion.common import (
    FILE_ENDING,
    as_nnunet_2d,
    check_target_free,
    dataset_folder_name,
    label_image,
    make_splits,
    resolve_root,
    staged_datasets,
    storage_image,
    write_case,
    write_dataset_json,
    write_splits,
)
from nnunet_joint.dataset_conversion.sheba_raw import (PNG_HU_OFFSET_DEFAULT, PNG_SPACING_MM_DEFAULT, ShebaCase,
                                                      case_warnings, load_raw_dataset)
from nnunet_joint import LESION_TYPES
from nnunet_joint.crops import (
    CROPS_FILE,
    FULL_LABELS_DIR,
    MIN_COMPONENT_FRACTION,
    ROI_DIR,
    CropBox,
    crop_to_roi,
    roi_components,
)
from nnunet_joint.cpu import passive_openmp
from nnunet_joint.errors import InputError, check_number, cli_entry, warn
from nnunet_joint.evaluation.metrics import dice
from nnunet_joint.labels import JOINT_LABELS, SEG_LABELS
from nnunet_joint.names import (CROP_MARGIN_MM, DATASET_NAMES, JOINT_DATASET, SEG_DATASET, results_folder_name,
                                slice_spacing_zyx)
from nnunet_joint.io import file_sha256, write_json



def absent_type_problem(lesion_type: str) -> str:
    """What a lesion type without any case leaves empty: it cannot be learned, validated or reported."""
    return (f"no {lesion_type} case: the models never see a {lesion_type}; the {lesion_type} recall "
            f"(recall_{lesion_type} in summary.json, its column in the report's tables) will be empty and the "
            f"{lesion_type} row of every confusion matrix all zeros")


def case_label_maps(case: ShebaCase, liver: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Full-slice label maps (seg, joint); lesion pixels win over liver, inside or outside it."""
    seg = np.zeros(case.lesion.shape, dtype=np.uint8)
    seg[liver] = SEG_LABELS["liver"]
    joint = seg.copy()
    seg[case.lesion] = SEG_LABELS["lesion"]
    joint[case.lesion] = JOINT_LABELS[case.row.lesion_type]
    return seg, joint


def stage1_livers(cases: Sequence[ShebaCase], liver_model: str | os.PathLike, folds, device: str,
                  threads: int | None = None) -> dict[str, np.ndarray]:
    """Liver masks of every slice predicted by the stage-1 model (the paper's cascade crop), with ``threads``
    torch threads (default: every core this process may use)."""
    import torch

    from nnunet_joint.inference.models import PredictorSettings, load_model

    torch_device = torch.device(device)
    # nnunet_joint_predict's default settings: the crops are those a user's prediction makes
    model = load_model(liver_model, folds, torch_device, settings=PredictorSettings(
        tta=PredictorSettings.tta_default(torch_device), threads=threads))
    out = {}
    for case in cases:
        array = sitk.GetArrayFromImage(case.image).astype(np.float32)  # 1 x H x W
        sx, sy = case.image.GetSpacing()[:2]
        prediction = model.predict(array, slice_spacing_zyx((sy, sx)), probabilities=False)
        out[case.row.case_id] = prediction.segmentation > 0
    return out


def crop_of_case(case: ShebaCase, stage1: np.ndarray | None, cascade: bool, margin_mm: float
                 ) -> tuple[dict, CropBox, np.ndarray]:
    """A case's crop: its ``crops.json`` entry, the box, and the liver region the box was made from.

    Cascade (a stage-1 model was given): the box of the stage-1 liver's pieces, as at inference; a
    lesion outside it is the cascade's error, kept in the full-slice scores. If stage 1 finds no
    liver the whole slice is the crop and the region is empty (the cascade then finds no lesion).
    Oracle (reference liver masks): the box of every piece of liver and lesion, so no lesion is cut.
    """
    lesion_pixels = int(case.lesion.sum())
    entry: dict = {"lesion_pixels": lesion_pixels}
    if cascade:
        roi = roi_components(stage1) if stage1 is not None and stage1.any() else np.zeros_like(case.lesion)
        box = crop_to_roi(case.image, roi if roi.any() else np.ones_like(roi), margin_mm, min_fraction=0.0)
        entry["crop_source"] = "stage-1 liver model" if roi.any() else "whole slice (stage 1 found no liver)"
        if case.liver is not None:
            entry["stage1_liver_dice"] = dice(stage1 if stage1 is not None else roi, case.liver | case.lesion)
    else:
        roi = case.liver | case.lesion  # LiTS counts tumour as liver; the lesion is part of the organ
        box = crop_to_roi(case.image, roi, margin_mm, min_fraction=0.0)
        entry["crop_source"] = "reference liver and lesion masks (oracle)"
    kept = int(box.crop_array(case.lesion).sum())
    entry.update(crop=box.to_dict(), lesion_pixels_in_crop=kept, lesion_fraction_in_crop=kept / lesion_pixels,
                 lesion_fraction_in_region=int((case.lesion & roi).sum()) / lesion_pixels)
    return entry, box, roi


def convert_sheba(
    raw_dir: str | os.PathLike,
    raw_root: str | os.PathLike | None = None,
    preprocessed_root: str | os.PathLike | None = None,
    seg_id: int = SEG_DATASET,
    joint_id: int = JOINT_DATASET,
    seg_name: str = DATASET_NAMES[SEG_DATASET],
    joint_name: str = DATASET_NAMES[JOINT_DATASET],
    margin_mm: float = CROP_MARGIN_MM,
    folds: int = 3,
    seed: int = 0,
    png_hu_offset: float = PNG_HU_OFFSET_DEFAULT,
    png_spacing: float = PNG_SPACING_MM_DEFAULT,
    overwrite: bool = False,
    liver_model: str | os.PathLike | None = None,
    liver_folds: Sequence[int | str] | None = None,
    device: str = "cpu",
    threads: int | None = None,
) -> dict:
    """Convert a Sheba-like raw folder; every row is validated before anything is written.

    Args:
        raw_dir: folder with ``cases.csv``.
        raw_root: nnU-Net raw folder (default ``$nnUNet_raw``).
        preprocessed_root: nnU-Net preprocessed folder (default ``$nnUNet_preprocessed``, optional);
            when known, ``splits_final.json`` is written there too.
        margin_mm: context kept around the liver bounding box.
        folds: cross-validation folds (by patient, stratified by lesion type).
        seed: shuffling seed of the folds.
        overwrite: replace existing datasets with the same folder names.
        liver_model: a stage-1 nnU-Net results folder (``<Trainer>__<Plans>__2d``); when given, the
            crops are the cascade's (:func:`crop_of_case`), as both papers did, and cases need no
            liver mask; without it the crops come from the reference liver and lesion masks
            ("oracle" crops, which no user gets at inference). The liver label of the datasets is
            the given liver mask where there is one, else the predicted liver.
        liver_folds: folds of the stage-1 model (default: every trained fold, ensembled).
        device: ``cpu`` or ``cuda`` for stage 1.
        threads: torch CPU threads of stage 1 (default: every core this process may use); a caller
            that converts beside running trainings gives its share of the cores.

    Returns:
        ``{"seg_dataset": path, "joint_dataset": path, "cases": [...], "splits": [...],
        "splits_files": [...]}``.

    Raises:
        InputError: any problem with the input or the targets (nothing is written then).
    """
    margin_mm = check_number("--margin-mm", margin_mm, minimum=0)
    png_spacing = check_number("--png-spacing", png_spacing, minimum=0, strict=True)
    png_hu_offset = check_number("--png-hu-offset", png_hu_offset)
    if folds < 2:
        raise InputError(None, f"--folds must be at least 2, got {folds}")
    if seg_id == joint_id:
        raise InputError(None, f"--seg-id and --joint-id are both {seg_id}")
    raw_dir = Path(raw_dir)
    raw_root_path = resolve_root(raw_root, "nnUNet_raw", required=True)
    pre_root = resolve_root(preprocessed_root, "nnUNet_preprocessed", required=False)
    assert raw_root_path is not None
    seg_folder, joint_folder = dataset_folder_name(seg_id, seg_name), dataset_folder_name(joint_id, joint_name)
    destinations = [check_target_free(raw_root_path, f, overwrite) for f in (seg_folder, joint_folder)]

    cases = load_raw_dataset(raw_dir, png_spacing=png_spacing, png_hu_offset=png_hu_offset,
                             require_liver_mask=liver_model is None)
    case_ids = [c.row.case_id for c in cases]
    patients, types = [c.row.patient_id for c in cases], [c.row.lesion_type for c in cases]
    notes = [(raw_dir / "cases.csv", absent_type_problem(t)) for t in LESION_TYPES if t not in types]
    notes += [note for case in cases for note in case_warnings(case)]
    splits = make_splits(case_ids, patients, types, folds, seed, where=raw_dir / "cases.csv")

    predicted = stage1_livers(cases, liver_model, liver_folds, device, threads) if liver_model is not None else {}
    crops: dict[str, dict] = {}
    with staged_datasets(destinations) as (seg_tmp, joint_tmp):
        for tmp in (seg_tmp, joint_tmp):
            (tmp / FULL_LABELS_DIR).mkdir()
            (tmp / ROI_DIR).mkdir()
        for case in cases:
            cid = case.row.case_id
            entry, box, roi = crop_of_case(case, predicted.get(cid), liver_model is not None, margin_mm)
            image = as_nnunet_2d(storage_image(box.crop_image(case.image)))
            stage1 = predicted.get(cid)
            liver = case.liver if case.liver is not None else (stage1 if stage1 is not None else roi)
            seg, joint = case_label_maps(case, liver)
            for tmp, full in ((seg_tmp, seg), (joint_tmp, joint)):
                write_case(tmp, cid, image, label_image(box.crop_array(full), image))
                sitk.WriteImage(label_image(full, case.image), str(tmp / FULL_LABELS_DIR / f"{cid}{FILE_ENDING}"), True)
                sitk.WriteImage(label_image(roi, case.image), str(tmp / ROI_DIR / f"{cid}{FILE_ENDING}"), True)
            crops[cid] = {"image": case.row.image_rel, **entry}

        extra = {
            "lesion_types": {c.row.case_id: c.row.lesion_type for c in cases},
            "patients": {c.row.case_id: c.row.patient_id for c in cases},
            "lesion_type_order": list(LESION_TYPES),
            "source": {"format": "sheba-raw", "raw_dir": str(raw_dir.resolve()), "margin_mm": margin_mm,
                       "liver_model": None if liver_model is None else str(Path(liver_model).resolve())},
        }
        crops_json = {"source_dir": str(raw_dir.resolve()), "margin_mm": margin_mm,
                      "crop_mode": "cascade" if liver_model is not None else "oracle",
                      "min_component_fraction": MIN_COMPONENT_FRACTION if liver_model is not None else 0.0,
                      # which stage-1 model cut the crops, by content (a retrained stage 1 means new crops)
                      "stage1_checkpoint_sha256": None if liver_model is None else {
                          p.parent.name: file_sha256(p)
                          for p in sorted(Path(liver_model).glob("fold_*/checkpoint_final.pth"))
                          if liver_folds is None or p.parent.name in {f"fold_{f}" for f in liver_folds}},
                      "cases": crops}
        for tmp, labels, name, what in (
            (seg_tmp, SEG_LABELS, seg_name, "liver-ROI crops, labels background/liver/lesion"),
            (joint_tmp, JOINT_LABELS, joint_name, "liver-ROI crops, lesion pixels labelled by lesion type"),
        ):
            write_dataset_json(tmp, labels, len(cases), name, f"Sheba-like CT slices, {what}", extra)
            write_json(crops_json, tmp / CROPS_FILE)
            write_splits(splits, [tmp])

    splits_files = [d / "splits_final.json" for d in destinations]
    if pre_root is not None:
        pre_folders = [pre_root / f for f in (seg_folder, joint_folder)]
        write_splits(splits, pre_folders)
        splits_files += [f / "splits_final.json" for f in pre_folders]
    for where, problem in notes:  # once everything is written: a refusal prints only its error line
        warn(where, problem)
    return {
        "seg_dataset": destinations[0],
        "joint_dataset": destinations[1],
        "cases": case_ids,
        "splits": splits,
        "splits_files": splits_files,
    }


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="nnunet_joint_convert_sheba",
        description="Convert a Sheba-like raw folder (cases.csv + slices + masks) into two nnU-Net raw "
        "datasets on liver crops (segmentation and joint type labels) with patient-grouped folds.",
    )
    p.add_argument("raw_dir", help="folder with cases.csv")
    p.add_argument("--seg-id", type=int, default=SEG_DATASET)
    p.add_argument("--joint-id", type=int, default=JOINT_DATASET)
    p.add_argument("--seg-name", default=DATASET_NAMES[SEG_DATASET])
    p.add_argument("--joint-name", default=DATASET_NAMES[JOINT_DATASET])
    p.add_argument("--margin-mm", type=float, default=CROP_MARGIN_MM,
                   help="context around the liver box (default %(default)g)")
    p.add_argument("--folds", type=int, default=3)
    p.add_argument("--seed", type=int, default=0, help="seed of the fold shuffling")
    p.add_argument("--png-hu-offset", type=float, default=PNG_HU_OFFSET_DEFAULT, help="PNG value minus this is HU")
    p.add_argument("--png-spacing", type=float, default=PNG_SPACING_MM_DEFAULT, help="PNG pixel size in mm")
    p.add_argument("--raw-root", default=None, help="nnU-Net raw folder (default $nnUNet_raw)")
    p.add_argument("--preprocessed-root", default=None, help="nnU-Net preprocessed folder (default $nnUNet_preprocessed)")
    p.add_argument("--overwrite", action="store_true", help="replace existing datasets")
    p.add_argument("--liver-model", default=None,
                   help="crop from this stage-1 model's predicted liver (nnU-Net results folder "
                        f"{results_folder_name('<Trainer>', '<Plans>')}) instead of the given liver masks, as the paper did")
    p.add_argument("--liver-folds", nargs="+", default=None, help="folds of the stage-1 model (default: all trained)")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="device of the stage-1 model")
    return p


@cli_entry
def main(argv: Sequence[str] | None = None) -> int:
    passive_openmp()  # before torch is imported (stage 1 runs here with --liver-model): see nnunet_joint.cpu
    args = build_parser().parse_args(argv)
    from nnunet_joint.inference.models import parse_folds  # torch/nnU-Net only when needed

    result = convert_sheba(
        args.raw_dir,
        raw_root=args.raw_root,
        preprocessed_root=args.preprocessed_root,
        seg_id=args.seg_id,
        joint_id=args.joint_id,
        seg_name=args.seg_name,
        joint_name=args.joint_name,
        margin_mm=args.margin_mm,
        folds=args.folds,
        seed=args.seed,
        png_hu_offset=args.png_hu_offset,
        png_spacing=args.png_spacing,
        overwrite=args.overwrite,
        liver_model=args.liver_model,
        liver_folds=parse_folds(args.liver_folds),
        device=args.device,
    )
    print(f"wrote {result['seg_dataset']} and {result['joint_dataset']} ({len(result['cases'])} cases)")
    for f in result["splits_files"]:
        print(f"wrote {f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
