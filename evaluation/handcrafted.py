"""The handcrafted reference row: lesion types from intensity, texture and shape features, no network.

Every deep row of the study types a slice from what a network learned. This row types it from a
few numbers a radiologist would name (how dense the lesion is, how it compares with the liver
around it, how uniform it is, how big and how round), measured inside the **reference** lesion
mask, with a scikit-learn classifier trained and scored on the same folds and patients as the
deep rows. It answers a question no deep row can: how separable are the types on this data at
all? A deep row far below it has not learned what the data offers; a deep row near it is
limited by the data, not by the model. (It sees the reference mask, which no deep row does, so
it is a reference, not a competitor.)

Inputs are what ``nnunet_joint_convert_sheba`` writes: ``dataset.json`` (``lesion_types``,
``patients``), ``imagesTr/<case>_0000`` (CT in HU, the liver crop) and ``labelsTr/<case>``
(0 background, 1 liver, 2.. lesion; every lesion label is merged into one lesion mask, so the
segmentation and the joint dataset give the same features), and ``splits_final.json``. The full
slices (``labelsFull/``) have no CT beside them, so features come from the crop; a cascade crop
that cut part of a lesion away (``crops.json``'s ``lesion_fraction_in_crop``) is listed in the
summary.

Usage::

    nnunet_joint_handcrafted $nnUNet_raw/Dataset504_ShebaJoint \\
        --splits $nnUNet_preprocessed/Dataset504_ShebaJoint/splits_final.json --out handcrafted/

writes ``summary.json`` and ``summary.csv`` (the same metrics, per fold and mean ± std, as
``nnunet_joint_evaluate`` writes for a deep row) and ``features.csv`` (every case's features, fold,
true and predicted type).
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import math
import os
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import SimpleITK as sitk
from scipy import ndimage, stats
from skimage.feature import graycomatrix, graycoprops
from skimage.measure import regionprops
from sklearn.ensemble import RandomForestClassifier
from sklearn.impute import SimpleImputer
from sklearn.pipeline import Pipeline

from nnunet_joint import LESION_TYPES
from nnunet_joint import labels as label_coding
from nnunet_joint.errors import InputError, cli_entry, warn
from nnunet_joint.names import DATASET_FOLDERS, JOINT_DATASET
from nnunet_joint.evaluation import folds as fold_io
from nnunet_joint.evaluation.evaluate import format_table, write_summary
from nnunet_joint.evaluation.metrics import (
    SliceResult,
    classification_report,
    evaluate_slice,
    head_type,
    summarise,
)
from nnunet_joint.io import read_image, same_geometry, write_text

FEATURES_CSV = "features.csv"

# ----------------------------------------------------------------------------- one slice


@dataclasses.dataclass(frozen=True)
class LesionSlice:
    """What the features of one case are measured on.

    Attributes:
        ct: the CT slice in HU (H x W, float64).
        lesion: the reference lesion mask, every lesion label merged.
        liver: the liver label (lesion pixels are not liver).
        spacing_yx: pixel size in mm (rows, columns).
    """

    ct: np.ndarray
    lesion: np.ndarray
    liver: np.ndarray
    spacing_yx: tuple[float, float]


def _undefined(count: int) -> tuple[float, ...]:
    """A group's features when the lesion is empty (a crop that cut it away): the classifier imputes them."""
    return (math.nan,) * count


# ----------------------------------------------------------------------------- intensity


def intensity_features(s: LesionSlice) -> tuple[float, ...]:
    """HU statistics of the lesion pixels.

    * ``lesion_mean_hu``: the density a reader judges first (cyst water-like, metastasis
      hypodense, hemangioma towards the blood pool).
    * ``lesion_std_hu``: homogeneity (a simple cyst is flat, a nodular hemangioma is not).
    * ``lesion_p10_hu``, ``lesion_p50_hu``, ``lesion_p90_hu``: the dark part (necrosis), the
      typical value robust to a rim, and the bright part (enhancing nodules or rim).
    * ``lesion_skewness``: a few bright pixels in a dark lesion (nodules, rim) skew it right;
      0 for a constant lesion.

    Population statistics (``ddof=0``); percentiles by numpy's linear interpolation.
    """
    values = s.ct[s.lesion].astype(np.float64)
    if values.size == 0:
        return _undefined(6)
    std = float(values.std())
    skewness = 0.0 if std == 0.0 else float(stats.skew(values, bias=True))
    p10, p50, p90 = (float(v) for v in np.percentile(values, (10, 50, 90)))
    return float(values.mean()), std, p10, p50, p90, skewness


# ----------------------------------------------------------------------------- contrast

#: Liver pixels within this distance (mm, centre to centre) of the lesion form the ring it is compared with:
#: about a typical lesion's radius, and at least three pixels at the coarsest study spacing (3.2 mm).
RING_MM = 10.0
#: Lesion pixels within this distance (mm) of the nearest non-lesion pixel are its rim, the rest its core:
#: one pixel at 3.2 mm spacing (diagonal neighbours included), about the rim of a metastasis at 1 mm.
RIM_MM = 5.0


def surrounding_ring(s: LesionSlice) -> np.ndarray:
    """Liver pixels at most :data:`RING_MM` from the nearest lesion pixel."""
    distance = ndimage.distance_transform_edt(~s.lesion, sampling=s.spacing_yx)
    return s.liver & ~s.lesion & (distance <= RING_MM)


def lesion_rim(s: LesionSlice) -> np.ndarray:
    """Lesion pixels at most :data:`RIM_MM` from the nearest non-lesion pixel (the image's edge counts as one)."""
    padded = np.pad(s.lesion, 1, constant_values=False)
    depth = ndimage.distance_transform_edt(padded, sampling=s.spacing_yx)[1:-1, 1:-1]
    return s.lesion & (depth <= RIM_MM)


def contrast_features(s: LesionSlice) -> tuple[float, ...]:
    """The lesion against the liver around it, and its rim against its core.

    * ``ring_mean_hu``: the surrounding liver's enhancement (the contrast phase of the patient),
      which the absolute lesion HU must be read against.
    * ``lesion_minus_ring_hu``: hypo- or hyperdense relative to its own liver, the radiologist's
      first word on a lesion; independent of the phase and the scanner's calibration.
    * ``rim_minus_core_hu``: peripheral enhancement (a metastasis's rim, a hemangioma's
      peripheral nodules) or a necrotic centre make the rim brighter than the core; a cyst's
      rim and core are alike. Undefined (imputed) when the lesion has no core pixel.
    """
    if not s.lesion.any():
        return _undefined(3)
    ring = surrounding_ring(s)
    lesion_mean = float(s.ct[s.lesion].mean())
    ring_mean = float(s.ct[ring].mean()) if ring.any() else math.nan
    rim = lesion_rim(s)
    core = s.lesion & ~rim
    rim_minus_core = float(s.ct[rim].mean() - s.ct[core].mean()) if core.any() else math.nan
    return ring_mean, lesion_mean - ring_mean, rim_minus_core


# ----------------------------------------------------------------------------- texture

#: HU window quantised for the co-occurrence matrix: water (cysts, 0 HU) to the blood pool
#: (enhancing nodules, ~250 HU), with room below for noise; values outside are clipped.
GLCM_HU_WINDOW = (-50.0, 250.0)
#: Grey levels of the window (9.4 HU each): coarse enough that the slice noise does not
#: scatter a homogeneous lesion over many levels, fine enough to see a rim or a nodule.
GLCM_LEVELS = 32
#: Neighbours one pixel apart in the four directions (0, 45, 90, 135 degrees), pooled: a lesion's
#: texture has no orientation, and pooling gives a small lesion enough pairs.
GLCM_ANGLES = (0.0, np.pi / 4, np.pi / 2, 3 * np.pi / 4)
GLCM_PROPERTIES = ("contrast", "homogeneity", "energy", "correlation")


def grey_levels(hu: np.ndarray) -> np.ndarray:
    """HU -> grey level 0 .. :data:`GLCM_LEVELS` - 1 in :data:`GLCM_HU_WINDOW` (clipped outside it)."""
    low, high = GLCM_HU_WINDOW
    levels = np.floor((np.clip(hu, low, high) - low) / (high - low) * GLCM_LEVELS)
    return np.minimum(levels, GLCM_LEVELS - 1).astype(np.int64)


def lesion_cooccurrence(s: LesionSlice) -> np.ndarray:
    """The symmetric co-occurrence counts of lesion-pixel pairs (levels x levels x 1 x 1).

    Computed by :func:`skimage.feature.graycomatrix` on the lesion's bounding box, where every
    non-lesion pixel is put on an extra level 0 and its row and column are dropped afterwards:
    a pair counts only when both pixels are lesion.
    """
    box = ndimage.find_objects(s.lesion.astype(np.uint8))[0]
    image = np.where(s.lesion[box], grey_levels(s.ct[box]) + 1, 0).astype(np.uint16)
    counts = graycomatrix(image, distances=[1], angles=list(GLCM_ANGLES), levels=GLCM_LEVELS + 1, symmetric=True)
    return counts[1:, 1:].sum(axis=3, keepdims=True)


def texture_features(s: LesionSlice) -> tuple[float, ...]:
    """Haralick properties of the lesion's grey-level co-occurrence (:func:`skimage.feature.graycoprops`).

    * ``glcm_contrast``: how different neighbours are (rim, nodules, an ill-defined margin's
      gradient: high; a cyst: low).
    * ``glcm_homogeneity``: the same question weighted towards small differences.
    * ``glcm_energy``: how few grey-level pairs make up the lesion (a flat cyst: close to 1).
    * ``glcm_correlation``: whether neighbours' levels rise together (smooth gradients) or not
      (noise); skimage gives 1 when a lesion has one level only.

    Undefined (imputed) for a lesion without a pair of neighbouring pixels.
    """
    if not s.lesion.any():
        return _undefined(len(GLCM_PROPERTIES))
    counts = lesion_cooccurrence(s)
    if counts.sum() == 0:
        return _undefined(len(GLCM_PROPERTIES))
    return tuple(float(graycoprops(counts, name)[0, 0]) for name in GLCM_PROPERTIES)


# ----------------------------------------------------------------------------- shape


def shape_features(s: LesionSlice) -> tuple[float, ...]:
    """Size and form of the lesions (:func:`skimage.measure.regionprops`, in mm through the spacing).

    * ``lesion_area_mm2``: all lesion pixels x pixel area; hemangiomas run larger here, metastases
      come in all sizes.
    * ``lesion_count``: connected lesions (full connectivity, the project's rule in
      :mod:`nnunet_joint.labels`); metastases are often several.
    * ``largest_eccentricity``: of the largest lesion's ellipse of inertia (0 a circle): a cyst is
      round, a hemangioma lobulated.
    * ``largest_solidity``: its area over its convex hull's (1 convex): lobulated or irregular
      margins (hemangioma, metastasis) fall below a cyst's.
    """
    if not s.lesion.any():
        return _undefined(4)
    components, count = label_coding.lesion_components(s.lesion)
    regions = regionprops(components, spacing=s.spacing_yx)
    largest = max(regions, key=lambda region: region.area)
    area = float(np.count_nonzero(s.lesion)) * s.spacing_yx[0] * s.spacing_yx[1]
    return area, float(count), float(largest.eccentricity), float(largest.solidity)


# ----------------------------------------------------------------------------- the feature list

#: Each group: the names of its features, in the order its function returns them.
FEATURE_GROUPS: tuple[tuple[tuple[str, ...], Callable[[LesionSlice], tuple[float, ...]]], ...] = (
    (("lesion_mean_hu", "lesion_std_hu", "lesion_p10_hu", "lesion_p50_hu", "lesion_p90_hu", "lesion_skewness"),
     intensity_features),
    (("ring_mean_hu", "lesion_minus_ring_hu", "rim_minus_core_hu"), contrast_features),
    (tuple(f"glcm_{name}" for name in GLCM_PROPERTIES), texture_features),
    (("lesion_area_mm2", "lesion_count", "largest_eccentricity", "largest_solidity"), shape_features),
)
#: Every feature, in the columns' order.
FEATURE_NAMES: tuple[str, ...] = tuple(name for names, _ in FEATURE_GROUPS for name in names)


def slice_features(s: LesionSlice) -> np.ndarray:
    """The :data:`FEATURE_NAMES` of one slice (NaN where a feature is undefined)."""
    values: list[float] = []
    for names, function in FEATURE_GROUPS:
        group = function(s)
        assert len(group) == len(names), (function.__name__, len(group), names)
        values += group
    return np.asarray(values, dtype=np.float64)


# ----------------------------------------------------------------------------- reading the dataset


def read_lesion_slice(raw_dataset: Path, case_id: str, info: fold_io.DatasetInfo) -> LesionSlice:
    """A case's CT crop and reference masks from ``imagesTr`` / ``labelsTr``, checked to share one geometry."""
    image_path = raw_dataset / "imagesTr" / f"{case_id}_0000{info.file_ending}"
    label_path = raw_dataset / "labelsTr" / f"{case_id}{info.file_ending}"
    for path in (image_path, label_path):
        if not path.is_file():
            raise InputError(path, f"not found: case {case_id} of the splits is not in the raw dataset")
    image = read_image(image_path)
    label_map, label_image = fold_io.read_label_map(label_path, info)
    problem = same_geometry(image, label_image)
    if problem is not None:
        raise InputError(label_path, problem)
    ct = np.squeeze(sitk.GetArrayFromImage(image)).astype(np.float64)
    label_map = np.squeeze(label_map)
    if ct.ndim != 2:
        raise InputError(image_path, f"a 2-D slice is expected (1 x H x W), got shape {image.GetSize()[::-1]}")
    sx, sy = image.GetSpacing()[:2]
    return LesionSlice(ct, label_coding.lesion_mask(label_map), label_map == label_coding.LIVER, (float(sy), float(sx)))


def fold_cases(splits: list[dict], splits_path: Path, fold: int) -> tuple[list[str], list[str]]:
    """A fold's training and validation cases; a case in both would let the classifier see what it is scored on."""
    if fold < 0 or fold >= len(splits):
        raise InputError(splits_path, f"has {len(splits)} fold(s), no fold {fold}")
    train = splits[fold].get("train")
    if not isinstance(train, list) or not train:
        raise InputError(splits_path, f"fold {fold} has no training cases")
    train, val = [str(c) for c in train], [str(c) for c in splits[fold]["val"]]
    both = sorted(set(train) & set(val))
    if both:
        raise InputError(splits_path, f"fold {fold}: case(s) {', '.join(both[:5])} in both train and val")
    return train, val


def patients_across(train: Sequence[str], val: Sequence[str], patients: dict) -> list[str]:
    """Patients with slices on both sides of a fold (the deep rows share this leak, so it is only warned of)."""
    return sorted({str(patients[c]) for c in val if c in patients} & {str(patients[c]) for c in train if c in patients})


# ----------------------------------------------------------------------------- the classifier


def make_classifier(seed: int = 0) -> Pipeline:
    """Median imputation, then a random forest of 500 trees with balanced class weights.

    Why a forest rather than a logistic regression: each type is a mixture of variants (a
    simple and a dense cyst; a nodular, a flash-filling and a non-enhancing hemangioma; a rim, a
    necrotic and a cystic metastasis), so a type is several islands in feature space, which a
    linear boundary cannot enclose; trees need no scaling of features in HU, mm² and ratios, and
    their defaults are stable on ~60-200 samples. ``class_weight="balanced"`` keeps a rarer type
    from being absorbed by the majority, as the deep rows' class weights intend.
    ``random_state`` fixes the result; ``n_jobs=1`` leaves the shared cores alone.
    The imputer fills a feature that is undefined for a slice (no core, no ring, a lesion cut
    away by its crop) with the training folds' median, so such a slice gets no information
    from it; ``keep_empty_features`` keeps the columns aligned with :data:`FEATURE_NAMES`.
    """
    return Pipeline([
        ("impute", SimpleImputer(strategy="median", keep_empty_features=True)),
        ("forest", RandomForestClassifier(n_estimators=500, class_weight="balanced", random_state=seed, n_jobs=1)),
    ])


def type_probabilities(classifier: Pipeline, features: np.ndarray) -> np.ndarray:
    """Per-type probabilities (n x types, order :data:`nnunet_joint.LESION_TYPES`); a type absent from training gets 0."""
    fitted = classifier.predict_proba(features)
    out = np.zeros((features.shape[0], len(LESION_TYPES)))
    for column, type_index in enumerate(classifier.classes_):
        out[:, int(type_index)] = fitted[:, column]
    return out


@dataclasses.dataclass
class FoldFit:
    """One fold's outcome: its validation results and what the classifier relied on."""

    results: list[SliceResult]
    train_cases: list[str]
    feature_importance: np.ndarray


def fit_fold(fold: int, train: Sequence[str], val: Sequence[str], features: dict[str, np.ndarray],
             true_types: dict[str, int], seed: int = 0) -> FoldFit:
    """Fit on the fold's training cases only, then type its validation cases (the project's argmax on ties)."""
    classifier = make_classifier(seed)
    classifier.fit(np.stack([features[c] for c in train]), np.asarray([true_types[c] for c in train]))
    probabilities = type_probabilities(classifier, np.stack([features[c] for c in val]))
    results = [evaluate_slice(case, fold, None, None, true_type=true_types[case], pred_type=head_type(p),
                              type_probs=p)
               for case, p in zip(val, probabilities)]
    return FoldFit(results, list(train), classifier.named_steps["forest"].feature_importances_)


# ----------------------------------------------------------------------------- the row


def handcrafted_row(raw_dataset: str | os.PathLike, splits_file: str | os.PathLike,
                    folds: Sequence[int] | None = None, seed: int = 0) -> dict:
    """Features of every case in the selected folds, one classifier per fold, and the row's summary.

    Returns:
        :func:`evaluation.metrics.summarise`'s dictionary (what ``nnunet_joint_evaluate`` gives a
        deep row), plus ``classification`` (accuracy, per-type recall, confusion matrix and
        true/predicted type counts over all folds), ``feature_names``, ``feature_importance``
        (the forest's impurity importance, mean over folds), ``features`` (case -> values, NaN as
        ``None``), ``cases``, the inputs and ``lesion_cut_by_crop`` (cases whose crop lost lesion
        pixels). Raises :class:`InputError` on bad input (nothing is written here).
    """
    raw_dataset, splits_path = Path(raw_dataset), Path(splits_file)
    if not raw_dataset.is_dir():
        raise InputError(raw_dataset, "raw dataset folder not found")
    info = fold_io.read_dataset_json(raw_dataset / "dataset.json")
    if info.lesion_types is None:
        raise InputError(info.path, "no 'lesion_types': the cases' true types are needed to train and score")
    if not info.has_lesions:
        raise InputError(info.path, "no lesion label: features are measured inside the lesion")
    splits = fold_io.read_splits(splits_path)
    folds = list(range(len(splits))) if folds is None else [int(f) for f in folds]
    if not folds:
        raise InputError(splits_path, "no folds selected")
    cases_of = {fold: fold_cases(splits, splits_path, fold) for fold in folds}
    all_cases = sorted({c for train, val in cases_of.values() for c in (*train, *val)})
    true_types = {case: info.true_type(case) for case in all_cases}
    patients = fold_io.read_json_file(info.path).get("patients") or {}
    for fold, (train, val) in cases_of.items():
        shared = patients_across(train, val, patients)
        if shared:
            warn(splits_path, f"fold {fold}: patient(s) {', '.join(shared[:5])} on both sides; "
                              "the deep rows share these folds")

    features = {case: slice_features(read_lesion_slice(raw_dataset, case, info)) for case in all_cases}
    fits = {fold: fit_fold(fold, *cases_of[fold], features, true_types, seed) for fold in folds}
    results = [r for fold in folds for r in fits[fold].results]

    full = fold_io.find_full_slices(raw_dataset)
    cut = [] if full is None else sorted(
        c for c in all_cases if float(full.cases.get(c, {}).get("lesion_fraction_in_crop", 1.0)) < 1.0)
    summary = summarise(results)
    importance = np.mean([fits[f].feature_importance for f in folds], axis=0)
    summary.update(
        row="handcrafted features (reference lesion mask) + random forest",
        raw_dataset=str(raw_dataset.resolve()),
        splits_file=str(splits_path.resolve()),
        folds=folds,
        seed=seed,
        scored_on="reference lesion masks on the crops (imagesTr / labelsTr)",
        crop_mode=None if full is None else full.crop_mode,
        lesion_cut_by_crop=cut,
        classification=classification_report(results),
        feature_names=list(FEATURE_NAMES),
        feature_importance=dict(zip(FEATURE_NAMES, (float(v) for v in importance))),
        features={c: [None if math.isnan(v) else float(v) for v in features[c]] for c in all_cases},
        cases=[r.to_dict() for r in results],
    )
    return summary


def features_csv(summary: dict) -> str:
    """One row per validated case: case, fold, true and predicted type, then every feature."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(["case", "fold", "true_type", "predicted_type", *summary["feature_names"]])
    for case in summary["cases"]:
        values = summary["features"][case["case_id"]]
        writer.writerow([case["case_id"], case["fold"], LESION_TYPES[case["true_type"]],
                         LESION_TYPES[case["pred_type"]], *("" if v is None else f"{v:.6g}" for v in values)])
    return buffer.getvalue()


def write_outputs(summary: dict, out_dir: str | os.PathLike) -> list[Path]:
    """``summary.json`` and ``summary.csv`` (as for a deep row) and ``features.csv``, each written atomically."""
    json_path, csv_path = write_summary(summary, out_dir)
    features_path = Path(out_dir) / FEATURES_CSV
    write_text(features_csv(summary), features_path)
    return [json_path, csv_path, features_path]


def format_classification(report: dict) -> str:
    """The confusion matrix (rows true, columns predicted) and the predicted beside the true counts."""
    width = max(len(name) for name in LESION_TYPES) + 2
    lines = ["confusion (rows true, columns predicted):", " " * width + "".join(n.rjust(width) for n in LESION_TYPES)]
    lines += [name.ljust(width) + "".join(str(v).rjust(width) for v in row)
              for name, row in zip(LESION_TYPES, report["confusion_matrix"])]
    lines.append("true counts:      " + ", ".join(f"{n} {report['true_counts'][n]}" for n in LESION_TYPES))
    lines.append("predicted counts: " + ", ".join(f"{n} {report['predicted_counts'][n]}" for n in LESION_TYPES))
    if report["collapsed_to"] is not None:
        lines.append(f"collapsed to {report['collapsed_to']}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="nnunet_joint_handcrafted",
        description="The handcrafted reference row: lesion types from intensity, ring contrast, GLCM texture and "
        "shape features inside the reference lesion mask, with a random forest trained and scored on the deep rows' "
        "folds. Writes summary.json, summary.csv and features.csv.",
    )
    p.add_argument("raw_dataset", help=f"converted Sheba raw dataset, e.g. $nnUNet_raw/{DATASET_FOLDERS[JOINT_DATASET]}")
    p.add_argument("--splits", required=True,
                   help="the deep rows' folds: $nnUNet_preprocessed/<dataset>/splits_final.json")
    p.add_argument("--out", required=True, help="folder for summary.json, summary.csv and features.csv")
    p.add_argument("--folds", type=int, nargs="+", help="folds to run (default every fold of the splits)")
    p.add_argument("--seed", type=int, default=0, help="the forest's random_state (default %(default)s)")
    return p


@cli_entry
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    summary = handcrafted_row(args.raw_dataset, args.splits, args.folds, args.seed)
    paths = write_outputs(summary, args.out)
    print(format_table(summary))
    print(format_classification(summary["classification"]))
    if summary["lesion_cut_by_crop"]:
        print(f"{len(summary['lesion_cut_by_crop'])} case(s) lost lesion pixels to their crop (features on what is left)")
    print(f"{summary['aggregate']['n_slices']} cases in {len(summary['per_fold'])} fold(s); wrote "
          + ", ".join(str(p) for p in paths))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
