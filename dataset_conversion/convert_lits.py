"""LiTS (release or MSD Task03_Liver layout) -> the two source datasets of the transfer learning.

* ``Dataset501_LiTSLiver``: whole volumes, background 0 / liver 1 (tumour merged into liver), for
  the stage-1 liver model of the cascade.
* ``Dataset502_LiTSLesion``: one 2-D case per axial slice holding liver (``lits_NNN_zZZZ``),
  cropped to that slice's liver and lesions plus a margin — the Sheba crop rule
  (:mod:`nnunet_joint.crops`), so pretraining sees the field of view fine-tuning sees;
  background 0 / liver 1 / lesion 2, for the lesion model whose weights initialise the Sheba
  models. Its folds are the volumes' folds (a volume's slices never straddle folds).

Layouts: ``volume-N.nii[.gz]`` + ``segmentation-N.nii[.gz]`` (LiTS release), or
``imagesTr/liver_N.nii.gz`` + ``labelsTr/liver_N.nii.gz`` (MSD). Case ids are ``lits_NNN`` in both,
so the same volume gets the same id whichever copy was converted.

Cheap checks (every pair present, headers readable, geometry equal) run over all cases before
anything is written; the per-voxel checks (labels, HU range, liver present, tumour mostly inside
the liver) run while the datasets are staged in hidden folders, which are removed if any case
fails. A liver under :data:`MIN_LIVER_CM3` is converted with one ``warning:`` line naming the label
file, printed once the datasets are written.
"""

from __future__ import annotations

import argparse
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import SimpleITK as sitk

from nnunet_joint.dataset_conversion.common import (
    as_nnunet_2d,
    check_target_free,
    dataset_folder_name,
    label_image,
    lesion_placement_problem,
    make_splits,
    resolve_root,
    staged_datasets,
    storage_image,
    write_case,
    write_dataset_json,
    write_splits,
)
from nnunet_joint.crops import CROPS_FILE, CropBox, roi_bbox
from nnunet_joint.errors import InputError, check_number, cli_entry, warn
from nnunet_joint.io import (check_hu, check_slice_size, pixel_digest, read_image, read_image_header, same_geometry,
                             write_json)
from nnunet_joint.names import CROP_MARGIN_MM, DATASET_NAMES, LITS_LESION_DATASET, LIVER_DATASET

LIVER_LABELS = {"background": 0, "liver": 1}
#: A liver labelled smaller than this is worth a warning: an adult liver is 1000-2500 cm³, and even a
#: scan that only grazes its tip holds several cm³.
MIN_LIVER_CM3 = 1.0
LESION_LABELS = {"background": 0, "liver": 1, "lesion": 2}
_RELEASE_RE = re.compile(r"^volume-(\d+)\.nii(\.gz)?$")
_MSD_RE = re.compile(r"^liver_(\d+)\.nii(\.gz)?$")


@dataclass(frozen=True)
class LitsPair:
    """One LiTS volume and its reference segmentation."""

    case_id: str
    image: Path
    label: Path


def _numbered(folder: Path, pattern: re.Pattern) -> dict[int, Path]:
    found: dict[int, Path] = {}
    for path in sorted(folder.iterdir()):
        m = pattern.match(path.name)
        if m and not path.name.startswith("._"):  # MSD tarballs carry macOS '._' resource forks
            n = int(m.group(1))
            if n in found:
                raise InputError(path, f"case {n} is present twice ({found[n].name} and {path.name})")
            found[n] = path
    return found


def find_pairs(lits_dir: str | os.PathLike) -> tuple[str, list[LitsPair]]:
    """Detect the layout and pair every volume with its segmentation.

    Returns:
        ``("lits-release" | "msd", pairs)`` sorted by case number.
    """
    lits_dir = Path(lits_dir)
    if not lits_dir.is_dir():
        raise InputError(lits_dir, "LiTS folder not found")
    if (lits_dir / "imagesTr").is_dir() and (lits_dir / "labelsTr").is_dir():
        layout = "msd"
        images = _numbered(lits_dir / "imagesTr", _MSD_RE)
        labels = _numbered(lits_dir / "labelsTr", _MSD_RE)
        label_name = "labelsTr/liver_{}.nii.gz"
    else:
        layout = "lits-release"
        images = _numbered(lits_dir, _RELEASE_RE)
        labels = _numbered(lits_dir, re.compile(r"^segmentation-(\d+)\.nii(\.gz)?$"))
        label_name = "segmentation-{}.nii[.gz]"
    if not images:
        raise InputError(
            lits_dir, "no LiTS volumes found (expected volume-N.nii[.gz] + segmentation-N.nii[.gz], or MSD imagesTr/labelsTr)"
        )
    for n, path in images.items():
        if n not in labels:
            raise InputError(path, f"has no segmentation (expected {lits_dir / label_name.format(n)})")
    for n, path in labels.items():
        if n not in images:
            raise InputError(path, "segmentation without a volume")
    return layout, [LitsPair(f"lits_{n:03d}", images[n], labels[n]) for n in sorted(images)]


def check_headers(pair: LitsPair) -> None:
    """Header-only checks: readable, within the size limit, a NIfTI voxel size, 3-D, one channel, at
    least a CT slice in plane, image and segmentation on the same grid."""
    image, label = read_image_header(pair.image), read_image_header(pair.label)
    for path, h in ((pair.image, image), (pair.label, label)):
        if h.GetDimension() != 3 or h.GetNumberOfComponents() != 1:
            raise InputError(path, f"is a {h.GetDimension()}-D image with {h.GetNumberOfComponents()} channel(s); a 3-D CT volume expected")
    check_slice_size(image.GetSize(), pair.image)
    problem = same_geometry(image, label)  # on the headers: no voxel is read
    if problem:
        raise InputError(pair.label, f"does not match {pair.image.name}: {problem}")


def load_pair(pair: LitsPair) -> tuple[sitk.Image, np.ndarray]:
    """Read a volume and its labels; refuse non-HU intensities, unknown labels, a missing liver and a tumour
    label not mostly inside the liver label (:func:`~nnunet_joint.dataset_conversion.common.lesion_placement_problem`)."""
    image = read_image(pair.image)
    label = read_image(pair.label)
    problem = same_geometry(image, label)
    if problem:
        raise InputError(pair.label, f"does not match {pair.image.name}: {problem}")
    check_hu(sitk.GetArrayViewFromImage(image), pair.image, require_air=True)
    seg = sitk.GetArrayFromImage(label)
    values = np.unique(seg)
    bad = values[~np.isin(values, list(LESION_LABELS.values()))]
    if bad.size:
        raise InputError(pair.label, f"holds label values {bad[:5].tolist()}; LiTS labels are 0 background, 1 liver, 2 tumour")
    if not np.any(seg > 0):
        raise InputError(pair.label, "has no liver (labels 1/2 absent); cannot crop the liver")
    tumour = seg == LESION_LABELS["lesion"]
    if tumour.any():  # the liver label surrounds its tumours: labels swapped or another organ's are refused
        problem = lesion_placement_problem(tumour, seg == LESION_LABELS["liver"], "tumour label 2", "liver label 1",
                                           "voxels")
        if problem:
            raise InputError(pair.label, problem)
    return image, seg.astype(np.uint8)


def small_liver_problem(image: sitk.Image, seg: np.ndarray) -> str | None:
    """Why the labelled liver (labels 1 and 2) is too small to be a liver, or ``None``."""
    voxels = int(np.count_nonzero(seg))
    liver_cm3 = voxels * float(np.prod(image.GetSpacing())) / 1000.0
    if liver_cm3 >= MIN_LIVER_CM3:
        return None
    return (f"liver (labels 1/2) is {liver_cm3:.3g} cm³ ({voxels} voxels), under {MIN_LIVER_CM3:g} cm³: a whole "
            "liver is 1000-2500 cm³ (a wrong label file or voxel size?)")


def slice_crops(image: sitk.Image, seg: np.ndarray, margin_mm: float, slice_step: int = 1) -> list[CropBox]:
    """One crop per axial slice holding liver: the box of that slice's liver and lesions (every piece)
    plus the margin in-plane — the Sheba crop rule, so pretraining sees the same field of view.

    ``slice_step`` keeps every n-th such slice (1: all), for very large sets.
    """
    spacing_xy = tuple(reversed(image.GetSpacing()))[1:]
    boxes = []
    slices = [int(z) for z in np.flatnonzero((seg > 0).any(axis=(1, 2)))][::slice_step]
    for z in slices:
        y, x = roi_bbox(seg[z] > 0, spacing_xy, margin_mm, min_fraction=0.0)
        boxes.append(CropBox.from_image(image, (slice(z, z + 1), y, x)))
    return boxes


def slice_splits(volume_splits: list[dict[str, list[str]]], slice_ids: dict[str, list[str]]
                 ) -> list[dict[str, list[str]]]:
    """The volumes' folds carried to their slices: a volume's slices never straddle folds."""
    def expand(volumes: list[str]) -> list[str]:
        return sorted(s for v in volumes for s in slice_ids[v])

    return [{"train": expand(f["train"]), "val": expand(f["val"])} for f in volume_splits]


def convert_lits(
    lits_dir: str | os.PathLike,
    raw_root: str | os.PathLike | None = None,
    liver_id: int = LIVER_DATASET,
    lesion_id: int = LITS_LESION_DATASET,
    liver_name: str = DATASET_NAMES[LIVER_DATASET],
    lesion_name: str = DATASET_NAMES[LITS_LESION_DATASET],
    margin_mm: float = CROP_MARGIN_MM,
    max_cases: int | None = None,
    overwrite: bool = False,
    preprocessed_root: str | os.PathLike | None = None,
    folds: int = 5,
    seed: int = 0,
    slice_step: int = 1,
) -> dict:
    """Convert LiTS into the whole-volume liver dataset and the liver-crop lesion dataset.

    Args:
        lits_dir: LiTS release folder or MSD ``Task03_Liver`` folder.
        raw_root: nnU-Net raw folder (default ``$nnUNet_raw``).
        margin_mm: context kept around the liver bounding box of the lesion dataset.
        max_cases: convert only the first N cases (by case number), for quick runs.
        slice_step: keep every n-th liver slice in the lesion dataset (1: all).
        overwrite: replace existing datasets with the same folder names.
        preprocessed_root: also write ``splits_final.json`` there (default ``$nnUNet_preprocessed`` if set).
        folds: cross-validation folds, one volume per patient (nnU-Net's 5 by default; fewer
            when there are fewer volumes, so small sets still train fold 0).

    Returns:
        ``{"liver_dataset": path, "lesion_dataset": path, "cases": [...], "layout": str}``.

    Raises:
        InputError: any problem with the input or the targets (nothing is written then).
    """
    margin_mm = check_number("--margin-mm", margin_mm, minimum=0)
    if slice_step < 1:
        raise InputError(None, f"--slice-step must be >= 1, got {slice_step}")
    if max_cases is not None and max_cases < 1:
        raise InputError(None, f"--max-cases must be >= 1, got {max_cases}")
    if liver_id == lesion_id:
        raise InputError(None, f"--liver-id and --lesion-id are both {liver_id}")
    root = resolve_root(raw_root, "nnUNet_raw", required=True)
    assert root is not None
    folders = (dataset_folder_name(liver_id, liver_name), dataset_folder_name(lesion_id, lesion_name))
    destinations = [check_target_free(root, f, overwrite) for f in folders]

    layout, pairs = find_pairs(lits_dir)
    pairs = pairs[:max_cases] if max_cases else pairs
    for pair in pairs:
        check_headers(pair)
    case_ids = [p.case_id for p in pairs]
    # each volume is its own patient; nothing to stratify (one stratum). A single volume has no
    # split: nnU-Net trains it as fold "all".
    splits = (make_splits(case_ids, case_ids, ["liver"] * len(case_ids), min(folds, len(case_ids)), seed,
                          where=lits_dir) if len(case_ids) >= 2 else None)
    pre_root = resolve_root(preprocessed_root, "nnUNet_preprocessed", required=False)

    crops: dict[str, dict] = {}
    slice_ids: dict[str, list[str]] = {}
    first_case_of_pixels: dict[str, LitsPair] = {}
    notes: list[tuple[Path, str]] = []  # warnings, printed once the datasets are written
    with staged_datasets(destinations) as (liver_tmp, lesion_tmp):
        for pair in pairs:
            image, seg = load_pair(pair)
            if (problem := small_liver_problem(image, seg)) is not None:
                notes.append((pair.label, problem))
            digest = pixel_digest(image)
            if digest in first_case_of_pixels:  # a copy or hard link under another case number
                first = first_case_of_pixels[digest].image
                raise InputError(pair.image, f"holds the same voxels as {first.name}: one volume under two case "
                                             "numbers would leak between folds")
            first_case_of_pixels[digest] = pair
            stored = storage_image(image)
            write_case(liver_tmp, pair.case_id, stored, label_image(seg > 0, stored))
            slice_ids[pair.case_id] = []
            for box in slice_crops(image, seg, margin_mm, slice_step):
                case_id = f"{pair.case_id}_z{box.start[0]:04d}"
                cropped = as_nnunet_2d(box.crop_image(stored))
                write_case(lesion_tmp, case_id, cropped, label_image(box.crop_array(seg), cropped))
                crops[case_id] = {"image": str(pair.image.relative_to(Path(lits_dir))), "volume": pair.case_id,
                                  "crop": box.to_dict()}
                slice_ids[pair.case_id].append(case_id)
        source = {"format": layout, "dir": str(Path(lits_dir).resolve())}
        write_dataset_json(
            liver_tmp, LIVER_LABELS, len(pairs), liver_name, "LiTS whole volumes, tumour merged into liver",
            {"source": source},
        )
        write_dataset_json(
            lesion_tmp, LESION_LABELS, len(crops), lesion_name,
            "LiTS axial slices with liver, each cropped to its liver and lesions; labels background/liver/lesion",
            {"source": {**source, "margin_mm": margin_mm, "slice_step": slice_step},
             "volumes": {c: v["volume"] for c, v in crops.items()}},
        )
        write_json({"source_dir": source["dir"], "margin_mm": margin_mm, "cases": crops}, lesion_tmp / CROPS_FILE)
        if splits:
            write_splits(splits, [liver_tmp])
            write_splits(slice_splits(splits, slice_ids), [lesion_tmp])
    if splits and pre_root is not None:
        write_splits(splits, [pre_root / folders[0]])
        write_splits(slice_splits(splits, slice_ids), [pre_root / folders[1]])
    for where, problem in notes:
        warn(where, problem)
    return {
        "liver_dataset": destinations[0],
        "lesion_dataset": destinations[1],
        "cases": [p.case_id for p in pairs],
        "layout": layout,
    }


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="nnunet_joint_convert_lits",
        description="Convert LiTS (release or MSD Task03_Liver layout) into a whole-volume liver dataset and "
        "a liver-crop lesion dataset for nnU-Net.",
    )
    p.add_argument("lits_dir", help="LiTS release folder (volume-N / segmentation-N) or MSD Task03_Liver folder")
    p.add_argument("--liver-id", type=int, default=LIVER_DATASET)
    p.add_argument("--lesion-id", type=int, default=LITS_LESION_DATASET)
    p.add_argument("--liver-name", default=DATASET_NAMES[LIVER_DATASET])
    p.add_argument("--lesion-name", default=DATASET_NAMES[LITS_LESION_DATASET])
    p.add_argument("--margin-mm", type=float, default=CROP_MARGIN_MM,
                   help="context around the liver box (default %(default)g)")
    p.add_argument("--max-cases", type=int, default=None, help="convert only the first N cases")
    p.add_argument("--raw-root", default=None, help="nnU-Net raw folder (default $nnUNet_raw)")
    p.add_argument("--preprocessed-root", default=None,
                   help="also write splits_final.json here (default $nnUNet_preprocessed when set)")
    p.add_argument("--folds", type=int, default=5, help="cross-validation folds (fewer when fewer volumes)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--slice-step", type=int, default=1, help="lesion dataset: every n-th liver slice (default 1: all)")
    p.add_argument("--overwrite", action="store_true", help="replace existing datasets")
    return p


@cli_entry
def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    result = convert_lits(
        args.lits_dir,
        raw_root=args.raw_root,
        liver_id=args.liver_id,
        lesion_id=args.lesion_id,
        liver_name=args.liver_name,
        lesion_name=args.lesion_name,
        margin_mm=args.margin_mm,
        max_cases=args.max_cases,
        overwrite=args.overwrite,
        preprocessed_root=args.preprocessed_root,
        folds=args.folds,
        seed=args.seed,
        slice_step=args.slice_step,
    )
    print(f"wrote {result['liver_dataset']} and {result['lesion_dataset']} ({len(result['cases'])} cases, {result['layout']} layout)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
