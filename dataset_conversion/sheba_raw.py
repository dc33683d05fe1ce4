"""Reading and validating the Sheba-like raw format (docs/data_formats.md).

A raw folder holds ``cases.csv`` with columns ``case_id, patient_id, lesion_type, image, mask``
and optionally ``liver_mask``; paths are relative to the folder. Each image is one CT slice in HU:
NIfTI (``HxW`` or ``1xHxW``), a DICOM file (SimpleITK applies RescaleSlope/Intercept) or a
16-bit PNG holding ``HU + offset``. Masks are binary and share the image's grid.

Every row is checked before anything is written; the first problem stops the run with an
:class:`InputError` naming the file, the csv row and what is wrong. What is unusual but not wrong
(a lesion mask equal to the liver mask, air or liver at implausible HU) is found by
:func:`case_warnings`; the converter prints each as one ``warning:`` line naming the file once the
datasets are written (a refused conversion prints only its error line).
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path, PurePosixPath, PureWindowsPath

import numpy as np
import SimpleITK as sitk

from nnunet_joint.dataset_conversion.common import CASE_ID_MAX_LENGTH, CASE_ID_RE, lesion_placement_problem
from nnunet_joint import LESION_TYPES
from nnunet_joint.errors import InputError
from nnunet_joint.inference.liver_check import LIVER_HU_RANGE
from nnunet_joint.io import air_level_problem, check_hu, check_slice_size, pixel_digest, read_image, same_geometry

REQUIRED_COLUMNS = ("case_id", "patient_id", "lesion_type", "image", "mask")
PNG_HU_OFFSET_DEFAULT = 32768
PNG_SPACING_MM_DEFAULT = 0.8
#: Slice thickness given to 2-D inputs (PNG, 2-D NIfTI), which carry none. nnU-Net's 2d
#: configuration never uses it; it only has to be the same for every case.
SLICE_THICKNESS_2D_MM = 1.0


@dataclass(frozen=True)
class CaseRow:
    """One row of ``cases.csv``, paths resolved inside the raw folder."""

    row: int  # line number in cases.csv (the header is line 1)
    case_id: str
    patient_id: str
    lesion_type: str
    image: Path
    mask: Path
    liver_mask: Path | None
    image_rel: str  # the path as written in the csv, recorded in crops.json


@dataclass
class ShebaCase:
    """A validated case: 3-D (1xHxW) CT slice and its masks as arrays in array order."""

    row: CaseRow
    image: sitk.Image
    lesion: np.ndarray  # bool, 1xHxW
    liver: np.ndarray | None  # bool, 1xHxW; None when the csv gives none (stage-1 cropping)


def _where(row: CaseRow) -> str:
    return f"cases.csv row {row.row}, case {row.case_id!r}"


def _inside(raw_dir: Path, value: str, csv_path: Path, row: int, column: str) -> Path:
    """Resolve a csv path, refusing absolute paths and paths that leave the raw folder."""
    if not value:
        raise InputError(csv_path, f"row {row}: column {column!r} is empty")
    if PurePosixPath(value).is_absolute() or PureWindowsPath(value).is_absolute() or ".." in Path(value).parts:
        raise InputError(csv_path, f"row {row}: {column} path {value!r} must be relative to the raw folder, without '..'")
    path = raw_dir / value
    try:
        path.resolve().relative_to(raw_dir.resolve())
    except ValueError:
        raise InputError(csv_path, f"row {row}: {column} path {value!r} leaves the raw folder (symlink?)") from None
    return path


def read_cases_csv(raw_dir: str | os.PathLike, require_liver_mask: bool = True) -> list[CaseRow]:
    """Parse and check ``cases.csv`` (columns, ids, types, paths); files are not opened here.

    ``require_liver_mask=False`` when a stage-1 liver model provides the crops instead.
    """
    raw_dir = Path(raw_dir)
    csv_path = raw_dir / "cases.csv"
    if not raw_dir.is_dir():
        raise InputError(raw_dir, "raw folder not found")
    if not csv_path.is_file():
        raise InputError(csv_path, "file not found (the raw format needs cases.csv)")
    try:
        with open(csv_path, newline="", encoding="utf-8-sig") as f:
            reader = csv.DictReader(f, skipinitialspace=True)
            columns = [c.strip() for c in (reader.fieldnames or [])]
            missing = [c for c in REQUIRED_COLUMNS if c not in columns]
            if missing:
                raise InputError(csv_path, f"missing column(s) {', '.join(missing)}; header is {','.join(columns)}")
            repeated = sorted({c for c in columns if c and columns.count(c) > 1})
            if repeated:  # DictReader would silently keep the last column of each name
                raise InputError(csv_path, f"column(s) {', '.join(repeated)} appear more than once in the header")
            reader.fieldnames = columns
            records = []
            for rec in reader:
                if None in rec:  # more fields than the header names
                    raise InputError(csv_path, f"row {reader.line_num}: {len(columns) + len(rec[None])} fields, the "
                                               f"header names {len(columns)} (an unquoted comma?)")
                records.append(({k: (v or "").strip() for k, v in rec.items()}, reader.line_num))
    except UnicodeDecodeError as e:
        raise InputError(csv_path, f"not UTF-8 text ({e.reason})") from None
    except csv.Error as e:
        raise InputError(csv_path, f"not a valid csv file ({e})") from None
    if not records:
        raise InputError(csv_path, "no cases listed")

    rows: list[CaseRow] = []
    first_row_of_case: dict[str, int] = {}
    first_row_of_image: dict[Path, int] = {}
    for rec, line in records:
        case_id, patient_id, lesion_type = rec["case_id"], rec["patient_id"], rec["lesion_type"].lower()
        if not CASE_ID_RE.match(case_id):
            raise InputError(csv_path, f"row {line}: case_id {case_id!r} must be letters, digits, '_', '-', '.'")
        if len(case_id) > CASE_ID_MAX_LENGTH:
            raise InputError(csv_path, f"row {line}: case_id {case_id[:20]!r}... is {len(case_id)} characters long; "
                                       f"at most {CASE_ID_MAX_LENGTH} (nnU-Net builds file names from it)")
        if case_id in first_row_of_case:
            raise InputError(csv_path, f"row {line}: duplicate case_id {case_id!r} (first in row {first_row_of_case[case_id]})")
        first_row_of_case[case_id] = line
        if not patient_id:
            raise InputError(csv_path, f"row {line}: patient_id is empty")
        if lesion_type not in LESION_TYPES:
            raise InputError(
                csv_path, f"row {line}: unknown lesion_type {rec['lesion_type']!r} (expected one of {', '.join(LESION_TYPES)})"
            )
        image = _inside(raw_dir, rec["image"], csv_path, line, "image")
        key = image.resolve()
        if key in first_row_of_image:
            # The same slice under two ids would sit in train and val at once.
            raise InputError(csv_path, f"row {line}: image {rec['image']!r} is already listed in row {first_row_of_image[key]}")
        first_row_of_image[key] = line
        mask = _inside(raw_dir, rec["mask"], csv_path, line, "mask")
        liver_value = rec.get("liver_mask", "")
        if not liver_value and require_liver_mask:
            raise InputError(
                csv_path,
                f"row {line}: case {case_id!r} has no liver_mask; give every case a liver mask, or crop with "
                "a stage-1 liver model (--liver-model)",
            )
        liver = _inside(raw_dir, liver_value, csv_path, line, "liver_mask") if liver_value else None
        rows.append(CaseRow(line, case_id, patient_id, lesion_type, image, mask, liver, rec["image"]))
    return rows


def _is_png(path: Path) -> bool:
    return path.suffix.lower() == ".png"


def read_slice(path: Path, where: str, png_spacing: float, png_hu_offset: float | None) -> sitk.Image:
    """Read one slice as a 3-D ``1xHxW`` SimpleITK image.

    Args:
        path: NIfTI, DICOM, PNG or any single-slice format SimpleITK reads.
        where: csv row description for messages.
        png_spacing: in-plane pixel size for PNG, which stores none.
        png_hu_offset: for CT PNGs, subtract this to get HU (must be 16-bit); ``None`` for masks.
    """
    image = read_image(path)
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise InputError(path, f"has {image.GetNumberOfComponentsPerPixel()} channels (RGB?); one grey CT slice expected ({where})")
    if _is_png(path):
        if png_hu_offset is not None and image.GetPixelID() not in (sitk.sitkUInt16, sitk.sitkInt16):
            raise InputError(path, f"PNG is {image.GetPixelIDTypeAsString()}, not 16-bit: it cannot hold HU ({where})")
        array = sitk.GetArrayFromImage(image).astype(np.int32)
        if png_hu_offset is not None:
            array = array - int(png_hu_offset)
        image = sitk.GetImageFromArray(array)
        image.SetSpacing((png_spacing,) * image.GetDimension())
    if image.GetDimension() == 2:
        return sitk.JoinSeries(image, 0.0, SLICE_THICKNESS_2D_MM)
    if image.GetDimension() == 3:
        if image.GetSize()[2] != 1:
            raise InputError(path, f"holds {image.GetSize()[2]} slices (size {image.GetSize()}); one slice per file expected ({where})")
        return image
    raise InputError(path, f"is a {image.GetDimension()}-D image (size {image.GetSize()}); one 2-D slice expected ({where})")


def _read_mask(path: Path, image: sitk.Image, where: str, png_spacing: float, what: str) -> np.ndarray:
    mask = read_slice(path, where, png_spacing, None)
    # Compare everything but the slice thickness: a lone slice's thickness depends on the reader (a
    # DICOM file read alone reports 1 mm, a NIfTI whatever was written), and the mask takes the
    # image's anyway. The slice's position (origin along z) must agree: a mask of another slice of
    # the same series has the same in-plane grid.
    if mask.GetSize() == image.GetSize():
        problem = (same_geometry(image[:, :, 0], mask[:, :, 0])
                   or same_geometry(image, mask, properties=("Origin", "Direction")))
    else:
        problem = same_geometry(image, mask)
    if problem:
        raise InputError(path, f"{what} does not match its image: {problem} ({where})")
    array = sitk.GetArrayFromImage(mask)
    values = np.unique(array)
    bad = values[~np.isin(values, (0, 1))]
    if bad.size:
        raise InputError(path, f"{what} holds values {bad[:5].tolist()}; a binary mask has only 0 and 1 ({where})")
    if not values.size or values.max() == 0:
        raise InputError(path, f"{what} is empty ({where})")
    return array.astype(bool)


def load_case(row: CaseRow, png_spacing: float = PNG_SPACING_MM_DEFAULT, png_hu_offset: float = PNG_HU_OFFSET_DEFAULT) -> ShebaCase:
    """Read and check one case: HU image, binary non-empty masks on its grid, lesion mostly inside the liver
    (:func:`~nnunet_joint.dataset_conversion.common.lesion_placement_problem`)."""
    where = _where(row)
    image = read_slice(row.image, where, png_spacing, png_hu_offset)
    try:
        check_slice_size(image.GetSize(), row.image)
        check_hu(sitk.GetArrayViewFromImage(image), row.image, require_air=True)
    except InputError as e:
        raise InputError(row.image, f"{e.problem} ({where})") from None
    lesion = _read_mask(row.mask, image, where, png_spacing, "lesion mask")
    if row.liver_mask is None:  # allowed only when a stage-1 model crops (read_cases_csv checks)
        return ShebaCase(row, image, lesion, None)
    liver = _read_mask(row.liver_mask, image, where, png_spacing, "liver mask")
    if not np.any(lesion & liver):
        raise InputError(row.mask, f"lesion lies entirely outside the liver mask {row.liver_mask.name} ({where})")
    problem = lesion_placement_problem(lesion, liver, "lesion mask", f"liver mask {row.liver_mask.name}", "pixels")
    if problem:
        raise InputError(row.mask, f"{problem} ({where})")
    return ShebaCase(row, image, lesion, liver)


def case_warnings(case: ShebaCase) -> list[tuple[Path, str]]:
    """(file, problem) for what is plausible enough to convert but worth a look.

    * the lesion mask equals the liver mask: the whole liver would be trained as lesion;
    * the slice's air is not at about -1000 HU (:func:`nnunet_joint.io.air_level_problem`): a wrong
      rescale, e.g. a doubled slice, which a liver at 2 x 60 HU would not reveal;
    * the median HU inside the liver mask is outside :data:`LIVER_HU_RANGE` (the range stage 1's
      liver must meet at inference): a mask of another organ, or a wrong rescale.
    """
    where = _where(case.row)
    hu = sitk.GetArrayViewFromImage(case.image)
    found = []
    if case.liver is not None and np.array_equal(case.lesion, case.liver):
        found.append((case.row.mask, f"lesion mask is identical to the liver mask {case.row.liver_mask.name}: the "
                                     f"whole liver is labelled as lesion (the same mask given twice?) ({where})"))
    air = air_level_problem(hu)
    if air is not None:
        found.append((case.row.image, f"{air} ({where})"))
    if case.liver is not None:
        median = float(np.median(hu[case.liver]))
        low, high = LIVER_HU_RANGE
        if not low <= median <= high:
            found.append((case.row.image, f"median inside the liver mask {case.row.liver_mask.name} is "
                                          f"{median:.0f} HU; a liver has {low:.0f}..{high:.0f} HU (mask of another "
                                          f"organ, or a wrong rescale?) ({where})"))
    return found


def load_raw_dataset(
    raw_dir: str | os.PathLike, png_spacing: float = PNG_SPACING_MM_DEFAULT, png_hu_offset: float = PNG_HU_OFFSET_DEFAULT,
    require_liver_mask: bool = True,
) -> list[ShebaCase]:
    """Read and validate every case of a raw folder; raises on the first problem.

    The same pixels under two rows (a copy or a hard link under another case id or patient) are
    refused: the slice would sit in a training and a validation fold at once.
    """
    cases, first_row_of_pixels = [], {}
    for row in read_cases_csv(raw_dir, require_liver_mask):
        case = load_case(row, png_spacing, png_hu_offset)
        digest = pixel_digest(case.image)
        if digest in first_row_of_pixels:
            first = first_row_of_pixels[digest]
            who = f"patient {first.patient_id!r}" if first.patient_id != row.patient_id else "the same patient"
            raise InputError(row.image, f"holds the same pixels as {first.image_rel!r} (row {first.row}, case "
                                        f"{first.case_id!r}, {who}): one slice listed twice would leak between "
                                        f"folds ({_where(row)})")
        first_row_of_pixels[digest] = row
        cases.append(case)
    return cases

