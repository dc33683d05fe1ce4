"""Sheba-like raw folder -> two nnU-Net v2 raw datasets on liver crops, with patient-grouped folds.

* ``Dataset503_ShebaSeg``: background 0 / liver 1 / lesion 2 (segmentation baseline, Y-Net).
* ``Dataset504_ShebaJoint``: background 0 / liver 1 / cyst 2 / hemangioma 3 / metastasis 4
  (pixel-wise classification; lesion pixels take the slice's type, label ``2 + type index``).

Both hold the same cases, cropped to the largest liver component plus a margin
(:mod:`nnunet_joint.crops`), and the same ``splits_final.json`` (3 folds by patient, stratified by
type), written into the raw folder (nnU-Net copies it at planning) and, when known, into the
preprocessed folder.

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
from nnunet_joint.dataset_conversion.sheba_raw import PNG_HU_OFFSET_DEFAULT, PNG_SPACING_MM_DEFAULT, ShebaCase, load_raw_dataset
from nnunet_joint import LESION_TYPES
from nnunet_joint.crops import crop_to_liver
from nnunet_joint.errors import InputError, check_number, cli_entry
from nnunet_joint.io import write_json

SEG_LABELS = {"background": 0, "liver": 1, "lesion": 2}
JOINT_LABELS = {"background": 0, "liver": 1, **{t: 2 + i for i, t in enumerate(LESION_TYPES)}}


def case_label_maps(case: ShebaCase, liver: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Full-slice label maps (seg, joint); lesion pixels win over liver, inside or outside it."""
    seg = np.zeros(case.lesion.shape, dtype=np.uint8)
    seg[liver] = SEG_LABELS["liver"]
    joint = seg.copy()
    seg[case.lesion] = SEG_LABELS["lesion"]
    joint[case.lesion] = JOINT_LABELS[case.row.lesion_type]
    return seg, joint


#: Out-of-plane spacing nnU-Net expects for single-slice (2-D) images. nnU-Net puts the axis of
#: largest spacing first and trains its 2d configuration on the remaining two; a slice thinner
#: than its pixel size (0.6 mm slices at 0.8 mm pixels, or the tiny phantom) would otherwise be
#: cut along the wrong axis. The crop box keeps the true geometry for mapping predictions back.
SLICE_AXIS_SPACING_2D = 999.0


def as_nnunet_2d(image: sitk.Image) -> sitk.Image:
    """Give a 1 x H x W image nnU-Net's 2-D out-of-plane spacing (a copy; the input is untouched)."""
    if image.GetDimension() == 3 and image.GetSize()[2] == 1:
        image = sitk.Image(image)
        sx, sy, _ = image.GetSpacing()
        image.SetSpacing((sx, sy, SLICE_AXIS_SPACING_2D))
    return image


def stage1_livers(cases: Sequence[ShebaCase], liver_model: str | os.PathLike, folds, device: str) -> dict[str, np.ndarray]:
    """Liver masks of every slice predicted by the stage-1 model (the paper's cascade crop)."""
    import torch

    from nnunet_joint.inference.models import load_model

    model = load_model(liver_model, folds, torch.device(device))
    out = {}
    for case in cases:
        array = sitk.GetArrayFromImage(case.image).astype(np.float32)  # 1 x H x W
        sx, sy = case.image.GetSpacing()[:2]
        out[case.row.case_id] = model.predict(array, (SLICE_AXIS_SPACING_2D, sy, sx)).segmentation > 0
    return out


def convert_sheba(
    raw_dir: str | os.PathLike,
    raw_root: str | os.PathLike | None = None,
    preprocessed_root: str | os.PathLike | None = None,
    seg_id: int = 503,
    joint_id: int = 504,
    seg_name: str = "ShebaSeg",
    joint_name: str = "ShebaJoint",
    margin_mm: float = 10.0,
    folds: int = 3,
    seed: int = 0,
    png_hu_offset: float = PNG_HU_OFFSET_DEFAULT,
    png_spacing: float = PNG_SPACING_MM_DEFAULT,
    overwrite: bool = False,
    liver_model: str | os.PathLike | None = None,
    liver_folds: Sequence[int | str] | None = None,
    device: str = "cpu",
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
            crop comes from its predicted liver (largest component), as the paper did for its
            private set, and cases need no liver mask. The liver label of the datasets is the given
            liver mask where there is one, else the predicted liver. If stage 1 finds no liver in a
            slice, the given liver mask (or, without one, the whole slice) is used and crops.json
            says so.
        liver_folds: folds of the stage-1 model (default: every trained fold, ensembled).
        device: ``cpu`` or ``cuda`` for stage 1.

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
    splits = make_splits(case_ids, patients, types, folds, seed, where=raw_dir / "cases.csv")

    predicted = stage1_livers(cases, liver_model, liver_folds, device) if liver_model is not None else {}
    crops: dict[str, dict] = {}
    with staged_datasets(destinations) as (seg_tmp, joint_tmp):
        for case in cases:
            cid = case.row.case_id
            stage1 = predicted.get(cid)
            if stage1 is not None and stage1.any():
                crop_mask, source = stage1, "stage-1 liver model"
            elif case.liver is not None:
                # The lesion is part of the organ the crop covers (LiTS merges tumour into liver).
                crop_mask = case.liver | case.lesion
                source = "given liver mask" + (" (stage 1 found no liver)" if liver_model else "")
            else:
                crop_mask, source = np.ones_like(case.lesion), "whole slice (stage 1 found no liver)"
            box = crop_to_liver(case.image, crop_mask, margin_mm)
            image = as_nnunet_2d(storage_image(box.crop_image(case.image)))
            liver = case.liver if case.liver is not None else (stage1 if stage1 is not None else crop_mask)
            seg, joint = case_label_maps(case, liver)
            write_case(seg_tmp, cid, image, label_image(box.crop_array(seg), image))
            write_case(joint_tmp, cid, image, label_image(box.crop_array(joint), image))
            lesion_kept = float(box.crop_array(case.lesion).sum() / case.lesion.sum())
            crops[cid] = {"image": case.row.image_rel, "crop": box.to_dict(), "crop_source": source,
                          "lesion_fraction_in_crop": lesion_kept}

        extra = {
            "lesion_types": {c.row.case_id: c.row.lesion_type for c in cases},
            "patients": {c.row.case_id: c.row.patient_id for c in cases},
            "lesion_type_order": list(LESION_TYPES),
            "source": {"format": "sheba-raw", "raw_dir": str(raw_dir.resolve()), "margin_mm": margin_mm,
                       "liver_model": None if liver_model is None else str(Path(liver_model).resolve())},
        }
        crops_json = {"source_dir": str(raw_dir.resolve()), "margin_mm": margin_mm, "cases": crops}
        for tmp, labels, name, what in (
            (seg_tmp, SEG_LABELS, seg_name, "liver-ROI crops, labels background/liver/lesion"),
            (joint_tmp, JOINT_LABELS, joint_name, "liver-ROI crops, lesion pixels labelled by lesion type"),
        ):
            write_dataset_json(tmp, labels, len(cases), name, f"Sheba-like CT slices, {what}", extra)
            write_json(crops_json, tmp / "crops.json")
            write_splits(splits, [tmp])

    splits_files = [d / "splits_final.json" for d in destinations]
    if pre_root is not None:
        pre_folders = [pre_root / f for f in (seg_folder, joint_folder)]
        write_splits(splits, pre_folders)
        splits_files += [f / "splits_final.json" for f in pre_folders]
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
    p.add_argument("--seg-id", type=int, default=503)
    p.add_argument("--joint-id", type=int, default=504)
    p.add_argument("--seg-name", default="ShebaSeg")
    p.add_argument("--joint-name", default="ShebaJoint")
    p.add_argument("--margin-mm", type=float, default=10.0, help="context around the liver box (default 10)")
    p.add_argument("--folds", type=int, default=3)
    p.add_argument("--seed", type=int, default=0, help="seed of the fold shuffling")
    p.add_argument("--png-hu-offset", type=float, default=PNG_HU_OFFSET_DEFAULT, help="PNG value minus this is HU")
    p.add_argument("--png-spacing", type=float, default=PNG_SPACING_MM_DEFAULT, help="PNG pixel size in mm")
    p.add_argument("--raw-root", default=None, help="nnU-Net raw folder (default $nnUNet_raw)")
    p.add_argument("--preprocessed-root", default=None, help="nnU-Net preprocessed folder (default $nnUNet_preprocessed)")
    p.add_argument("--overwrite", action="store_true", help="replace existing datasets")
    p.add_argument("--liver-model", default=None,
                   help="crop from this stage-1 model's predicted liver (nnU-Net results folder "
                        "<Trainer>__<Plans>__2d) instead of the given liver masks, as the paper did")
    p.add_argument("--liver-folds", nargs="+", default=None, help="folds of the stage-1 model (default: all trained)")
    p.add_argument("--device", default="cpu", choices=("cpu", "cuda"), help="device of the stage-1 model")
    return p


@cli_entry
def main(argv: Sequence[str] | None = None) -> int:
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
