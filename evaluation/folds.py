"""Reading nnU-Net v2's cross-validation results tree, with clear errors for what is missing.

The layout is nnU-Net 2.8's own (``nnUNetTrainer.perform_actual_validation``)::

    $nnUNet_results/DatasetXXX_Name/<Trainer>__<Plans>__2d/
        dataset.json                      copied by nnU-Net at training start (keeps our extra keys)
        fold_N/validation/<case><file_ending>   predicted label map, ground truth's geometry
        fold_N/validation/<case>.npz      ``probabilities`` (C x z x y x x), with --npz / joint trainer
        fold_N/validation/classification.json   our classifier / Y-Net trainers:
                                          {case: {"probabilities": [p_cyst, p_hem, p_met], "predicted": type}}
    $nnUNet_preprocessed/DatasetXXX_Name/
        gt_segmentations/<case><file_ending>    ground truth
        splits_final.json                 [{"train": [...], "val": [...]}, ...] per fold
"""

from __future__ import annotations

import dataclasses
import os
import re
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from nnunet_joint.evaluation.metrics import LESION_LABEL_OFFSET, N_JOINT_CLASSES, head_type
from nnunet_joint import LESION_TYPES
from nnunet_joint import labels as label_coding
from nnunet_joint.crops import CROPS_FILE, FULL_LABELS_DIR, ROI_DIR, CropBox, cascade_labels
from nnunet_joint.errors import InputError
from nnunet_joint.io import read_image, read_json_file
from nnunet_joint.names import CLASSIFICATION_FILE

FOLD_FOLDER = re.compile(r"^fold_(\d+)$")
SPLITS_FILE = "splits_final.json"
GT_FOLDER = "gt_segmentations"


def type_index(value: Any, where: str | os.PathLike) -> int:
    """A lesion type given as a name (``"cyst"``) or an index (``0``) -> type index; an unknown one is bad input."""
    try:
        return label_coding.type_index(value)
    except ValueError:
        raise InputError(where, f"unknown lesion type {value!r} (expected one of {', '.join(LESION_TYPES)})") from None


# ----------------------------------------------------------------------------- dataset.json


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
    """What evaluation needs from ``dataset.json``.

    Attributes:
        path: the file, named in errors.
        label_values: the allowed label values.
        file_ending: nnU-Net's ``file_ending`` of images and label maps.
        lesion_types: case -> true type index from our extra key ``lesion_types``; ``None`` when
            the dataset has no types (LiTS).
    """

    path: Path
    label_values: frozenset[int]
    file_ending: str
    lesion_types: dict[str, int] | None

    @property
    def has_lesions(self) -> bool:
        """Lesion labels exist (a liver-only dataset has none, and no lesion metrics)."""
        return max(self.label_values) >= LESION_LABEL_OFFSET

    @property
    def is_joint(self) -> bool:
        """Labels carry the lesion type (0 bg, 1 liver, 2.. one per type)."""
        return max(self.label_values) == N_JOINT_CLASSES - 1

    def true_type(self, case_id: str) -> int | None:
        if self.lesion_types is None:
            return None
        if case_id not in self.lesion_types:
            raise InputError(self.path, f"'lesion_types' has no entry for case {case_id}")
        return self.lesion_types[case_id]


def read_dataset_json(path: str | os.PathLike) -> DatasetInfo:
    """Read and check ``dataset.json`` (labels as integers, no regions; optional ``lesion_types``)."""
    path = Path(path)
    content = read_json_file(path)
    labels = content.get("labels") if isinstance(content, dict) else None
    if not isinstance(labels, dict) or not labels:
        raise InputError(path, "no 'labels' mapping")
    values = []
    for name, value in labels.items():
        if not isinstance(value, int) or isinstance(value, bool):
            raise InputError(path, f"label {name!r} is {value!r}: region-based labels are not supported")
        values.append(value)
    if 0 not in values:
        raise InputError(path, "labels have no background (0)")
    raw_types = content.get("lesion_types")
    lesion_types = None
    if raw_types is not None:
        if not isinstance(raw_types, dict):
            raise InputError(path, "'lesion_types' must map case ids to lesion types")
        lesion_types = {str(case): type_index(value, path) for case, value in raw_types.items()}
    return DatasetInfo(path, frozenset(values), str(content.get("file_ending", ".nii.gz")), lesion_types)


# ----------------------------------------------------------------------------- folds


def find_folds(trainer_dir: str | os.PathLike) -> list[int]:
    """The fold numbers with a ``fold_N`` folder (``fold_all`` is not a cross-validation fold)."""
    trainer_dir = Path(trainer_dir)
    if not trainer_dir.is_dir():
        raise InputError(trainer_dir, "results folder not found")
    folds = sorted(int(m.group(1)) for p in trainer_dir.iterdir() if p.is_dir() and (m := FOLD_FOLDER.match(p.name)))
    if not folds:
        raise InputError(trainer_dir, "no fold_N folder: not an nnU-Net trainer results folder (<Trainer>__<Plans>__<config>)")
    return folds


def validation_dir(trainer_dir: str | os.PathLike, fold: int) -> Path:
    """``fold_N/validation``, which nnU-Net writes when a fold's training (or ``--val``) finishes."""
    fold_dir = Path(trainer_dir) / f"fold_{fold}"
    if not fold_dir.is_dir():
        raise InputError(fold_dir, "fold folder not found")
    folder = fold_dir / "validation"
    if not folder.is_dir():
        raise InputError(folder, "not found: the fold has not finished (run nnUNetv2_train ... --val to validate it)")
    return folder


def read_splits(path: str | os.PathLike) -> list[dict[str, list[str]]]:
    """nnU-Net's ``splits_final.json``: one ``{"train": [...], "val": [...]}`` per fold."""
    splits = read_json_file(path)
    if not isinstance(splits, list) or not all(isinstance(s, dict) and isinstance(s.get("val"), list) for s in splits):
        raise InputError(path, "not an nnU-Net splits file (a list of {'train': [...], 'val': [...]})")
    return splits


def validation_cases(
    folder: Path,
    fold: int,
    file_ending: str,
    splits: list[dict] | None,
    splits_path: Path | None,
    classification: dict | None,
) -> list[str]:
    """The cases validated in ``fold``: from the splits when known, else what the folder holds."""
    if splits is not None:
        if fold >= len(splits):
            raise InputError(splits_path, f"has {len(splits)} fold(s), no fold {fold}")
        return [str(c) for c in splits[fold]["val"]]
    cases = sorted(p.name[: -len(file_ending)] for p in folder.iterdir() if p.name.endswith(file_ending))
    if not cases and classification is not None:
        cases = sorted(classification)
    if not cases:
        raise InputError(folder, f"no predictions (*{file_ending} or {CLASSIFICATION_FILE})")
    return cases


def has_segmentations(folder: Path, file_ending: str) -> bool:
    return any(p.name.endswith(file_ending) for p in folder.iterdir())


# ----------------------------------------------------------------------------- files of a case


def read_label_map(path: Path, info: DatasetInfo) -> tuple[np.ndarray, sitk.Image]:
    """Read a label map and check its values against ``dataset.json`` (array and image)."""
    image = read_image(path)
    array = sitk.GetArrayFromImage(image)
    if not np.issubdtype(array.dtype, np.integer):
        if not np.all(array == np.round(array)):
            raise InputError(path, "label map holds non-integer values (resampled with interpolation?)")
        array = array.astype(np.int64)
    found = set(np.unique(array).tolist())
    unknown = sorted(found - info.label_values)
    if unknown:
        raise InputError(path, f"label values {unknown} are not in {info.path.name} labels {sorted(info.label_values)}")
    return array, image


def read_probabilities(path: Path, shape: tuple[int, ...], n_classes: int) -> np.ndarray:
    """nnU-Net's ``<case>.npz`` softmax (key ``probabilities``), checked against the label map's shape."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            probabilities = np.asarray(npz["probabilities"])
    except (OSError, ValueError, KeyError, zipfile.BadZipFile) as e:
        raise InputError(path, f"cannot read nnU-Net probabilities ({e})") from None
    if probabilities.shape[0] != n_classes or probabilities[0].size != int(np.prod(shape)):
        raise InputError(
            path, f"probabilities of shape {probabilities.shape} do not fit {n_classes} classes x label map {shape}"
        )
    return probabilities.reshape((n_classes, *shape))


def read_classification(folder: Path) -> dict[str, tuple[tuple[float, ...] | None, int]] | None:
    """``classification.json`` as case -> (type probabilities, predicted type index); ``None`` if absent.

    The predicted type is the argmax of the probabilities (the metric is defined once, in
    :func:`evaluation.metrics.head_type`); ``"predicted"`` is used only when no probabilities are given.
    """
    path = folder / CLASSIFICATION_FILE
    if not path.exists():
        return None
    content = read_json_file(path)
    if not isinstance(content, dict):
        raise InputError(path, "must map case ids to {'probabilities': [...], 'predicted': type}")
    out: dict[str, tuple[tuple[float, ...] | None, int]] = {}
    for case, entry in content.items():
        if not isinstance(entry, dict):
            raise InputError(path, f"case {case}: entry must be an object")
        probabilities = entry.get("probabilities")
        if probabilities is not None:
            if (
                not isinstance(probabilities, list)
                or len(probabilities) != len(LESION_TYPES)
                or not all(isinstance(p, (int, float)) and not isinstance(p, bool) for p in probabilities)
            ):
                raise InputError(path, f"case {case}: 'probabilities' must be {len(LESION_TYPES)} numbers")
            probs = tuple(float(p) for p in probabilities)
            out[str(case)] = (probs, head_type(probs))
        elif "predicted" in entry:
            out[str(case)] = (None, type_index(entry["predicted"], path))
        else:
            raise InputError(path, f"case {case}: neither 'probabilities' nor 'predicted'")
    return out


# ----------------------------------------------------------------------------- full-slice scoring


@dataclasses.dataclass(frozen=True)
class FullSlices:
    """What scoring a cropped dataset on its original slices needs (the converter wrote it).

    Attributes:
        folder: the raw dataset folder holding ``crops.json``, ``labelsFull/`` and ``roiFull/``.
        cases: ``crops.json``'s per-case entries (crop box on the full slice, lesion coverage, ...).
        crop_mode: ``cascade`` (stage-1 crops, what a user gets) or ``oracle`` (reference masks).
    """

    folder: Path
    cases: dict[str, dict]
    crop_mode: str

    def box(self, case_id: str) -> CropBox:
        entry = self.cases.get(case_id)
        if entry is None or "crop" not in entry:
            raise InputError(self.folder / CROPS_FILE, f"no crop recorded for case {case_id}")
        return CropBox.from_dict(entry["crop"])

    def reference(self, case_id: str, info: DatasetInfo) -> np.ndarray:
        """The full-slice reference label map."""
        return read_label_map(self.folder / FULL_LABELS_DIR / f"{case_id}{info.file_ending}", info)[0]

    def roi(self, case_id: str, file_ending: str) -> np.ndarray:
        """The liver region of the crop (stage 1's liver for cascade crops, the reference's for oracle crops)."""
        path = self.folder / ROI_DIR / f"{case_id}{file_ending}"
        return sitk.GetArrayFromImage(read_image(path)) > 0

    def paste(self, case_id: str, prediction: np.ndarray, file_ending: str) -> np.ndarray:
        """A crop's predicted label map on the full slice, combined as the cascade does."""
        box = self.box(case_id)
        pasted = box.paste(np.asarray(prediction).reshape(box.shape), fill=0)
        return cascade_labels(pasted, self.roi(case_id, file_ending))

    def paste_probabilities(self, case_id: str, probabilities: np.ndarray) -> np.ndarray:
        box = self.box(case_id)
        return box.paste(probabilities.reshape((probabilities.shape[0], *box.shape)), fill=0.0)


def find_full_slices(raw_dataset: Path | None) -> FullSlices | None:
    """The dataset's full-slice scoring data, or ``None`` when it has none (LiTS volumes, old conversions)."""
    if raw_dataset is None or not (raw_dataset / CROPS_FILE).is_file() or not (raw_dataset / FULL_LABELS_DIR).is_dir():
        return None
    content = read_json_file(raw_dataset / CROPS_FILE)
    if not isinstance(content, dict) or not isinstance(content.get("cases"), dict):
        raise InputError(raw_dataset / CROPS_FILE, "no 'cases' mapping")
    return FullSlices(raw_dataset, content["cases"], str(content.get("crop_mode", "unknown")))
