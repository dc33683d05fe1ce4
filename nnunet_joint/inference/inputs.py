"""Reading the CT a user gives ``nnunet_joint_predict``, refusing what is not plain CT in HU.

Accepted: a NIfTI (or MHA/NRRD) volume, a single slice (``H x W`` or ``1 x H x W``), a DICOM
series folder, or a folder of such files / series folders. Everything is checked before any
model runs: unreadable, truncated or oversized files, NIfTI files with NaN voxels or no voxel size
(:func:`nnunet_joint.io.read_image`), images smaller than a CT slice, 4-D or vector (RGB) images,
intensities that are not HU, and DICOM series with gaps, duplicated positions, mixed orientations
or uneven spacing. DICOM slices are
ordered by their position along the slice normal (``ImagePositionPatient`` projected on the
cross product of the ``ImageOrientationPatient`` axes), never by ``InstanceNumber``, which
scanners and anonymisers renumber freely.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from nnunet_joint.errors import InputError, plain_numbers
from nnunet_joint.io import check_hu, check_image_size, check_slice_size, itk_problem, quiet_itk, read_image

IMAGE_SUFFIXES = (".nii.gz", ".nii", ".mha", ".nrrd")
#: A step between neighbouring DICOM slices above this multiple of the median step is a gap.
MISSING_SLICE_FACTOR = 1.5
#: Steps differing from the median by more than this fraction (and 0.01 mm) are uneven spacing.
SPACING_TOLERANCE = 0.02
#: Direction cosines that differ by more than this are a different orientation.
ORIENTATION_TOLERANCE = 1e-4


@dataclass(frozen=True)
class InputCase:
    """One image to predict: a file or a DICOM series folder, and the name of its output."""

    name: str
    path: Path
    is_dicom: bool


@dataclass
class CTImage:
    """A checked CT image in both forms the cascade needs.

    Attributes:
        image: as read, with the input's exact geometry (2-D or 3-D); outputs copy it.
        array: HU as float32 in array order ``(z, y, x)``; a 2-D image gets ``z == 1``.
        spacing_zyx: voxel size in array order (a 2-D image gets 1 mm between "slices").
    """

    source: Path
    image: sitk.Image
    array: np.ndarray
    spacing_zyx: tuple[float, float, float]

    @property
    def is_slice(self) -> bool:
        """One slice (2-D image or one-slice volume): areas in mm², 2-D lesion connectivity."""
        return self.array.shape[0] == 1


def _strip_suffix(name: str) -> str:
    for suffix in IMAGE_SUFFIXES:
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def _is_image_file(path: Path) -> bool:
    return path.name.lower().endswith(IMAGE_SUFFIXES)


def _visible(entries: list[Path]) -> list[Path]:
    return sorted(p for p in entries if not p.name.startswith("."))


def _is_dicom_file(path: Path) -> bool:
    """DICOM Part 10 file (``DICM`` after the 128-byte preamble)."""
    try:
        with open(path, "rb") as fh:
            fh.seek(128)
            return fh.read(4) == b"DICM"
    except OSError:
        return False


def _is_dicom_folder(folder: Path) -> bool:
    return any(p.is_file() and _is_dicom_file(p) for p in _visible(list(folder.iterdir())))


def discover_inputs(path: str | os.PathLike) -> list[InputCase]:
    """The images under ``path``, each with the name of its output subfolder.

    A file or a DICOM series folder is one case; any other folder holds cases (image files and
    DICOM series subfolders, hidden entries ignored).

    Raises:
        InputError: missing path, empty folder, an entry that is neither, or two entries that would
            write the same output folder.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(path, "input not found")
    if path.is_file():
        return [InputCase(_strip_suffix(path.name), path, is_dicom=_is_dicom_file(path))]
    entries = _visible(list(path.iterdir()))
    if not entries:
        raise InputError(path, "input folder is empty")
    if _is_dicom_folder(path):
        return [InputCase(path.name, path, is_dicom=True)]
    cases = []
    for entry in entries:
        if entry.is_file() and _is_image_file(entry):
            cases.append(InputCase(_strip_suffix(entry.name), entry, is_dicom=False))
        elif entry.is_file() and _is_dicom_file(entry):
            raise InputError(entry, "a DICOM file among other files: put each DICOM series in its own folder")
        elif entry.is_dir() and _is_dicom_folder(entry):
            cases.append(InputCase(entry.name, entry, is_dicom=True))
        else:
            raise InputError(entry, "neither a NIfTI/MHA/NRRD image nor a DICOM series folder "
                                    f"(accepted image files: {', '.join(IMAGE_SUFFIXES)})")
    names: dict[str, Path] = {}
    for case in cases:
        if case.name in names:
            raise InputError(case.path, f"has the same name as {names[case.name].name}: both would write "
                                        f"the output folder {case.name!r}")
        names[case.name] = case.path
    return cases


# ----------------------------------------------------------------------------- DICOM


def order_dicom_series(folder: str | os.PathLike) -> list[Path]:
    """The files of one DICOM series, ordered along the slice normal, after checking it is whole.

    Raises:
        InputError: unreadable header, several series, missing position/orientation tags,
            inconsistent orientation or pixel grid, duplicated positions, missing slices or
            uneven slice spacing.
    """
    import pydicom
    from pydicom.errors import InvalidDicomError

    folder = Path(folder)
    files = [p for p in _visible(list(folder.iterdir())) if p.is_file()]
    headers = []
    for f in files:
        try:
            headers.append(pydicom.dcmread(f, stop_before_pixels=True))
        except (InvalidDicomError, OSError, ValueError) as e:
            raise InputError(f, f"not a readable DICOM file ({e})") from None
    if not headers:
        raise InputError(folder, "no DICOM files in the series folder")
    series = {str(h.get("SeriesInstanceUID", "")) for h in headers}
    if len(series) > 1:
        raise InputError(folder, f"holds {len(series)} DICOM series; put each series in its own folder")
    rows_columns = {(int(h.get("Rows", 0) or 0), int(h.get("Columns", 0) or 0)) for h in headers}
    for rows, columns in rows_columns:  # from the headers, before any pixel is read
        check_image_size((columns, rows, len(headers)), int(headers[0].get("SamplesPerPixel", 1) or 1), folder)
    if len(headers) == 1:
        return files
    for f, h in zip(files, headers):
        for tag in ("ImagePositionPatient", "ImageOrientationPatient"):
            if tag not in h:
                raise InputError(f, f"DICOM slice without {tag}: cannot place it in the series")
    orientation0 = np.asarray(headers[0].ImageOrientationPatient, dtype=float)
    grid0 = (int(headers[0].Rows), int(headers[0].Columns))
    for f, h in zip(files, headers):
        if not np.allclose(np.asarray(h.ImageOrientationPatient, dtype=float), orientation0,
                           atol=ORIENTATION_TOLERANCE):
            raise InputError(f, f"inconsistent orientation in the series: ImageOrientationPatient "
                                f"{plain_numbers(h.ImageOrientationPatient)} differs from {files[0].name}'s "
                                f"{plain_numbers(orientation0)}")
        if (int(h.Rows), int(h.Columns)) != grid0:
            raise InputError(f, f"slice of {h.Rows}x{h.Columns} pixels in a series of {grid0[0]}x{grid0[1]}")
    normal = np.cross(orientation0[:3], orientation0[3:])
    positions = np.array([np.dot(np.asarray(h.ImagePositionPatient, dtype=float), normal) for h in headers])
    order = np.argsort(positions, kind="stable")
    files = [files[i] for i in order]
    positions = positions[order]
    steps = np.diff(positions)
    for i, step in enumerate(steps):
        if step < 1e-3:
            raise InputError(folder, f"duplicated slice position {positions[i]:.3f} mm along the slice normal "
                                     f"({files[i].name} and {files[i + 1].name})")
    median = float(np.median(steps))
    for i, step in enumerate(steps):
        if step > MISSING_SLICE_FACTOR * median:
            raise InputError(folder, f"missing slice(s): gap of {step:.3f} mm between {files[i].name} and "
                                     f"{files[i + 1].name} (median spacing {median:.3f} mm)")
    uneven = np.abs(steps - median) > max(SPACING_TOLERANCE * median, 0.01)
    if uneven.any():
        i = int(np.flatnonzero(uneven)[0])
        raise InputError(folder, f"non-uniform slice spacing: {steps[i]:.3f} mm between {files[i].name} and "
                                 f"{files[i + 1].name}, median {median:.3f} mm")
    return files


def read_dicom_series(folder: str | os.PathLike) -> sitk.Image:
    """Read a checked DICOM series in slice-normal order; SimpleITK applies Rescale Slope/Intercept."""
    files = order_dicom_series(folder)
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames([str(f) for f in files])
    try:
        with quiet_itk():
            return reader.Execute()
    except RuntimeError as e:
        raise InputError(folder, f"DICOM series cannot be read: {itk_problem(e)}") from None


# ----------------------------------------------------------------------------- checks


def check_ct_image(image: sitk.Image, where: str | os.PathLike) -> CTImage:
    """Refuse 4-D, vector (RGB) and non-HU images; return the array form the cascade needs."""
    where = Path(where)
    if image.GetNumberOfComponentsPerPixel() > 1:
        raise InputError(where, f"{image.GetNumberOfComponentsPerPixel()} components per pixel "
                                "(RGB or vector image), not a CT image")
    dim = image.GetDimension()
    if dim not in (2, 3):
        raise InputError(where, f"{dim}-D image; expected a 3-D CT volume or a 2-D slice")
    check_slice_size(image.GetSize(), where)
    array = sitk.GetArrayFromImage(image).astype(np.float32, copy=False)
    if dim == 2:
        array = array[None]
    check_hu(array, where, require_air=True)
    spacing_xyz = list(image.GetSpacing()) + ([1.0] if dim == 2 else [])
    spacing_zyx = tuple(float(abs(s)) for s in reversed(spacing_xyz))
    if any(s <= 0 for s in spacing_zyx):
        raise InputError(where, f"spacing {plain_numbers(image.GetSpacing())} is not positive")
    return CTImage(where, image, array, spacing_zyx)  # type: ignore[arg-type]


def read_case(case: InputCase) -> CTImage:
    """Read and check one input case (image file or DICOM series)."""
    if case.is_dicom and case.path.is_dir():
        image = read_dicom_series(case.path)
    else:
        image = read_image(case.path)
    return check_ct_image(image, case.path)
