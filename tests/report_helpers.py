"""Helpers shared by the report tests: fake fold files as the trainers write them, and reading report.md tables."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Sequence

import numpy as np
import SimpleITK as sitk


def write_slice(path: Path, array: np.ndarray) -> None:
    """A 2-D slice as nnU-Net stores it: 1 x H x W."""
    image = sitk.GetImageFromArray(array[None])
    image.SetSpacing((0.8, 0.8, 999.0))
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path))


def read_slice(path: Path) -> np.ndarray:
    return np.squeeze(sitk.GetArrayFromImage(sitk.ReadImage(str(path))))


def write_learning_curve(fold_dir: Path, framework: str, iterations_per_epoch: int,
                         lesion_dice: Sequence[float | None], type_accuracy: Sequence[float | None]) -> None:
    """``fold_N/learning_curve.json`` in the trainers' format: one entry per epoch, cumulative iterations."""
    epochs = [{"epoch": i, "iterations": (i + 1) * iterations_per_epoch, "train_loss": 1.0 / (i + 1),
               "val_loss": 1.1 / (i + 1), "lesion_dice": d, "type_accuracy": a}
              for i, (d, a) in enumerate(zip(lesion_dice, type_accuracy))]
    fold_dir.mkdir(parents=True, exist_ok=True)
    (fold_dir / "learning_curve.json").write_text(json.dumps({"framework": framework, "epochs": epochs}))


def write_joint_config(fold_dir: Path, epochs: int, iterations: int, encoder: str, patch: Sequence[int]) -> None:
    """The keys of ``fold_N/joint_config.json`` the report reads (our trainers write more)."""
    fold_dir.mkdir(parents=True, exist_ok=True)
    (fold_dir / "joint_config.json").write_text(json.dumps({
        "num_epochs": epochs, "num_iterations_per_epoch": iterations, "num_val_iterations_per_epoch": 1,
        "architecture": {"encoder": encoder, "patch_size": list(patch)}}))


#: Joint labels and lesion type names as the converters write them (dataset.json).
JOINT_LABELS = {"background": 0, "liver": 1, "cyst": 2, "hemangioma": 3, "metastasis": 4}
TYPE_NAMES = ("cyst", "hemangioma", "metastasis")


def write_joint_dataset(folder: Path, cases: Sequence[dict], splits: list[dict]) -> dict:
    """A preprocessed joint dataset: ``dataset.json`` (with our ``lesion_types`` and ``patients``), splits, gt.

    Args:
        folder: ``nnUNet_preprocessed/DatasetXXX_Name`` (created).
        cases: dicts with ``id``, ``type`` (index), ``patient`` and ``label`` (the 2-D label map).
        splits: nnU-Net's ``splits_final.json`` content.

    Returns:
        the ``dataset.json`` content (trainer folders hold a copy).
    """
    dataset_json = {"labels": JOINT_LABELS, "file_ending": ".nii.gz",
                    "lesion_types": {c["id"]: TYPE_NAMES[c["type"]] for c in cases},
                    "patients": {c["id"]: c["patient"] for c in cases}}
    folder.mkdir(parents=True)
    (folder / "dataset.json").write_text(json.dumps(dataset_json))
    (folder / "splits_final.json").write_text(json.dumps(splits))
    for case in cases:
        write_slice(folder / "gt_segmentations" / f"{case['id']}.nii.gz", case["label"])
    return dataset_json


def md_table(markdown: str, title: str) -> list[list[str]]:
    """Rows (header first) of the Markdown table under ``### title``."""
    block = markdown.split(f"### {title}\n", 1)[1].splitlines()
    start = next(i for i, line in enumerate(block) if line.startswith("|"))
    lines = []
    for line in block[start:]:
        if not line.startswith("|"):
            break
        lines.append(line)
    rows = [[c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line)[1:-1]] for line in lines]
    return [rows[0]] + rows[2:]


def cell(rows: list[list[str]], first: str, column: str, second: str | None = None) -> str:
    """The cell in ``column`` of the row whose first cell is ``first`` (and second ``second``)."""
    header = rows[0]
    for row in rows[1:]:
        if row[0] == first and (second is None or row[1] == second):
            return row[header.index(column)]
    raise AssertionError(f"no row {first!r}/{second!r}")
