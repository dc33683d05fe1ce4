"""How much of the lesions the cascade's crops keep, and how well stage 1 segments the liver, per fold.

Read from the converter's ``crops.json`` (per case: lesion pixels, lesion pixels inside the crop
and inside the stage-1 liver region, stage-1 liver Dice against the reference liver where one was
given) and the validation cases of each fold. These numbers say what the cascade costs before any
lesion model runs: a lesion outside the crop cannot be found, and the full-slice scores count it
as missed. (Inside the stage-1 liver is information only: lesions are not cut to it, see
:func:`nnunet_joint.crops.cascade_labels`.)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np

from nnunet_joint.crops import CROPS_FILE


def cascade_coverage(raw_dataset: Path, splits_file: Path, folds: Sequence[int]) -> dict | None:
    """Per fold: slices, lesion coverage of the crops and of the cascade region, slices that lost
    lesion, and the stage-1 liver Dice on the slices; ``None`` when the dataset has no ``crops.json``.

    Returns:
        ``{"crop_mode": ..., "per_fold": [{"fold", "n_slices", "lesion_in_crop", "lesion_in_region",
        "slices_losing_lesion" (to the crop), "stage1_liver_dice": {"mean", "std", "n"} | None}, ...]}``;
        coverages are lesion pixels kept / all lesion pixels of the fold's validation slices.
    """
    crops_path = raw_dataset / CROPS_FILE
    if not crops_path.is_file() or not splits_file.is_file():
        return None
    content = json.loads(crops_path.read_text(encoding="utf-8"))
    cases = content.get("cases", {})
    splits = json.loads(splits_file.read_text(encoding="utf-8"))
    per_fold = []
    for fold in folds:
        if fold >= len(splits):
            continue
        entries = [cases[c] for c in splits[fold]["val"] if c in cases]
        total = sum(e.get("lesion_pixels", 0) for e in entries)
        in_crop = sum(e.get("lesion_pixels_in_crop", e.get("lesion_pixels", 0)) for e in entries)
        in_region = sum(round(e.get("lesion_fraction_in_region", 1.0) * e.get("lesion_pixels", 0)) for e in entries)
        losing = sum(1 for e in entries if e.get("lesion_fraction_in_crop", 1.0) < 1.0)
        dices = [e["stage1_liver_dice"] for e in entries if e.get("stage1_liver_dice") is not None]
        per_fold.append({
            "fold": int(fold), "n_slices": len(entries),
            "lesion_in_crop": in_crop / total if total else None,
            "lesion_in_region": in_region / total if total else None,
            "slices_losing_lesion": losing,
            "stage1_liver_dice": {"mean": float(np.mean(dices)), "std": float(np.std(dices)), "n": len(dices)}
            if dices else None,
        })
    return {"crop_mode": content.get("crop_mode", "unknown"), "per_fold": per_fold}


def coverage_lines(coverage: dict | None) -> list[str]:
    """Sentences for the report: which crops were used and, per fold, what the cascade kept."""
    if coverage is None:
        return ["Crops: not recorded (no crops.json); scores are on the datasets' images as they are."]
    if coverage["crop_mode"] == "oracle":
        lines = ["Crops: ORACLE — the Sheba slices were cropped with their reference liver and lesion masks "
                 "(--oracle-crops), which no user has at inference; the scores are optimistic for that reason."]
    else:
        lines = ["Crops: cascade — the Sheba slices were cropped by the stage-1 liver model, as in both papers "
                 "and as nnunet_joint_predict does; every metric is computed on the full slice, so a lesion the "
                 "crop lost counts as missed."]
    for f in coverage["per_fold"]:
        parts = [f"fold {f['fold']} ({f['n_slices']} slices):"]
        if f["lesion_in_crop"] is not None:
            parts.append(f"lesion pixels inside the crop {f['lesion_in_crop']:.1%} "
                         f"({f['slices_losing_lesion']} slice(s) lost lesion to the crop); inside stage 1's liver "
                         f"{f['lesion_in_region']:.1%}")
        dice = f["stage1_liver_dice"]
        if dice is not None:
            parts.append(f"; stage-1 liver Dice on these slices {dice['mean']:.3f} ± {dice['std']:.3f} "
                         f"(n={dice['n']})")
        lines.append(" ".join(parts))
    return lines
