"""Reading CT safely and writing outputs atomically.

Everything the project writes (converted datasets, reports, predictions) goes to a temporary
name beside its destination and is renamed when complete, so a killed run never leaves a half
file or folder that looks whole. The temporary's name records the host and
process that owns it, so the next write to the same destination removes the temporaries of
processes that died (:func:`clean_stale_temporaries`).

Images are read through :func:`read_image`, which checks the header before any voxel is read
(size limit, NIfTI voxel size) and, for NIfTI, the stored data itself (truncation, NaN/inf):
SimpleITK would zero-fill, zero or invent them silently (:mod:`nnunet_joint.nifti`).
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import io
import json
import os
import re
import shutil
import socket
import sys
import tempfile
import uuid
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import SimpleITK as sitk

from nnunet_joint.errors import InputError, plain_numbers
from nnunet_joint.nifti import check_nifti_payload, is_nifti, read_nifti_header
from nnunet_joint.process import process_alive

# ----------------------------------------------------------------------------- atomic writes


#: This host's name as it appears in temporary names (letters and digits only).
_HOST = re.sub(r"[^A-Za-z0-9]", "", socket.gethostname())[:32] or "host"


def _temporary_prefix(dest: Path, kind: str) -> str:
    """``.<name>.<kind>-<host>.<pid>.``: the owner of a temporary, read back by :func:`clean_stale_temporaries`."""
    return f".{dest.name}.{kind}-{_HOST}.{os.getpid()}."


def clean_stale_temporaries(dest: str | os.PathLike) -> list[Path]:
    """Remove the temporaries of :func:`atomic_path` for ``dest`` whose owner process is dead.

    Only names this module writes (``.<name>.partial-<host>.<pid>.*`` and ``.<name>.old-<host>.<pid>.*``)
    of this host are considered; a temporary whose process still runs, or that another host owns,
    is left alone.

    Returns:
        The removed paths.
    """
    dest = Path(dest)
    pattern = re.compile(r"^\." + re.escape(dest.name) + r"\.(?:partial|old)-([A-Za-z0-9]+)\.(\d+)\.")
    removed = []
    try:
        entries = list(dest.parent.iterdir())
    except OSError:
        return removed
    for entry in entries:
        m = pattern.match(entry.name)
        if not m or m.group(1) != _HOST or process_alive(int(m.group(2))):
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            with contextlib.suppress(OSError):
                entry.unlink()
        removed.append(entry)
    return removed


@contextlib.contextmanager
def atomic_path(dest: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``dest``; on success it is renamed to ``dest``.

    Works for files and folders. On an exception the temporary is removed and ``dest`` is left
    as it was. The temporary keeps ``dest``'s suffixes so writers that choose a format by the
    file name (SimpleITK, matplotlib) still work; its name records this process, and stale
    temporaries of dead processes for the same ``dest`` are removed first.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temporaries(dest)
    suffix = "".join(dest.suffixes) if dest.suffixes else ""
    fd, tmp_name = tempfile.mkstemp(prefix=_temporary_prefix(dest, "partial"), suffix=suffix, dir=dest.parent)
    os.close(fd)
    os.remove(tmp_name)  # callers create the file or folder themselves
    tmp = Path(tmp_name)
    try:
        try:
            yield tmp
        except OSError as e:  # a full disk: say where, in the names the caller asked for
            _name_destination(e, tmp, dest)
            raise
        if not tmp.exists():
            raise RuntimeError(f"{dest}: nothing was written")
        if dest.is_dir() and not dest.is_symlink():
            old = dest.with_name(_temporary_prefix(dest, "old") + uuid.uuid4().hex[:8])
            os.replace(dest, old)
            os.replace(tmp, dest)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, dest)
    finally:
        if tmp.is_dir() and not tmp.is_symlink():
            shutil.rmtree(tmp, ignore_errors=True)
        elif tmp.exists():
            tmp.unlink()


def _name_destination(error: OSError, tmp: Path, dest: Path) -> None:
    """Make ``error`` name ``dest`` instead of :func:`atomic_path`'s hidden temporary, or name it at all.

    A failed ``write()`` (e.g. "No space left on device") carries no file name; a failed call on the
    temporary names ``.x.partial-host.pid.*``, which the user never asked for and which is gone by
    the time they read the message.
    """
    if error.filename is None:
        error.filename = str(dest)
        return
    for attribute in ("filename", "filename2"):
        name = getattr(error, attribute)
        if isinstance(name, (str, os.PathLike)) and Path(name).is_relative_to(tmp):
            setattr(error, attribute, str(dest / Path(name).relative_to(tmp)) if Path(name) != tmp else str(dest))


def write_json(obj: Any, dest: str | os.PathLike, **kwargs: Any) -> None:
    """Write JSON atomically (indent 2 unless told otherwise)."""
    kwargs.setdefault("indent", 2)
    with atomic_path(dest) as tmp:
        tmp.write_text(json.dumps(obj, **kwargs) + "\n", encoding="utf-8")


def file_sha256(path: str | os.PathLike) -> str:
    """Hex SHA-256 of a file's content, read in 1 MiB blocks (checkpoints are hundreds of MB)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def write_text(text: str, dest: str | os.PathLike) -> None:
    with atomic_path(dest) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_image(image: sitk.Image, dest: str | os.PathLike, compress: bool = True) -> None:
    """Write a SimpleITK image atomically (format from the file name)."""
    with atomic_path(dest) as tmp:
        write_image_file(image, tmp, compress)


def write_image_file(image: sitk.Image, path: str | os.PathLike, compress: bool = True) -> None:
    """``sitk.WriteImage`` whose failure is an :class:`OSError` naming the file, in words.

    ITK reports a full disk or a name the file system refuses as a ``RuntimeError`` carrying its
    C++ source path; the command-line entry point prints an ``OSError`` as one line.
    """
    try:
        with quiet_itk():
            sitk.WriteImage(image, str(path), compress)
    except RuntimeError as e:
        code, problem = errno.EIO, f"cannot be written ({itk_problem(e)})"
        with contextlib.suppress(OSError):
            if shutil.disk_usage(Path(path).parent).free < 1 << 20:
                code, problem = errno.ENOSPC, "cannot be written: no space left on device"
        raise OSError(code, problem, str(path)) from None


# ----------------------------------------------------------------------------- SimpleITK's messages

_CXX_SOURCE = re.compile(r"\S+\.(?:cxx|cpp|cc|hxx|txx|h)(?::\d+)?:?")
_ITK_PREFIX = re.compile(r"^(?:Exception thrown in SimpleITK \w+:|sitk::ERROR:|itk::ERROR:|ITK ERROR:|"
                         r"\w+\(0x[0-9a-fA-F]+\):|ERROR:|\s)+")


def itk_problem(error: BaseException, limit: int = 2) -> str:
    """SimpleITK's exception text without its C++ source paths, class names and object addresses.

    ``"Exception thrown in SimpleITK ImageFileReader_Execute: /src/.../sitkImageReaderBase.cxx:99:
    sitk::ERROR: Unable to determine ImageIO reader for "x.nii.gz""`` becomes ``"no image reader
    recognises the file (not NIfTI, MHA, NRRD, DICOM or PNG, or corrupt)"``; other messages keep
    their first ``limit`` distinct lines, joined by "; ".
    """
    parts: list[str] = []
    for line in str(error).splitlines():
        line = _ITK_PREFIX.sub("", _CXX_SOURCE.sub("", line)).strip()
        if line.startswith("Reason: No such file"):  # ITK's stale errno; callers checked the file exists
            continue
        if line and line not in parts:
            parts.append(line)
    text = "; ".join(parts[:limit])
    if "Unable to determine ImageIO reader" in text:
        return "no image reader recognises the file (not NIfTI, MHA, NRRD, DICOM or PNG, or corrupt)"
    if text.startswith("File cannot be read"):  # MetaImage: the header or the data is incomplete
        return "the header or the voxel data is incomplete or corrupt"
    text = re.sub(r"\s+", " ", text).strip()
    return (text[:300] + "...") if len(text) > 300 else (text or "unknown SimpleITK error")


def read_json_file(path: str | os.PathLike) -> Any:
    """Parse a JSON file, turning a missing or broken file into :class:`InputError`."""
    path = Path(path)
    if not path.is_file():
        raise InputError(path, "file not found")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise InputError(path, f"not valid JSON ({e})") from None


@contextlib.contextmanager
def quiet_stdout(enabled: bool = True) -> Iterator[None]:
    """Swallow what Python code prints to stdout (nnU-Net prints freely: device notices, the trainer
    search, planning); ``enabled=False`` passes everything through, for ``--quiet`` switches."""
    if not enabled:
        yield
        return
    with contextlib.redirect_stdout(io.StringIO()):
        yield


@contextlib.contextmanager
def quiet_itk() -> Iterator[None]:
    """Silence what ITK and its C libraries print straight to the process's stdout/stderr.

    ITK warnings, the NIfTI library's ``** ERROR`` lines and MetaImage's notices bypass Python;
    the problem they describe reaches us as an exception, which becomes the one error line.
    """
    previous = sitk.ProcessObject.GetGlobalWarningDisplay()
    sitk.ProcessObject.SetGlobalWarningDisplay(False)
    saved: list[tuple[int, int]] = []
    try:
        with contextlib.suppress(OSError, ValueError):
            for stream in (sys.stdout, sys.stderr):
                with contextlib.suppress(Exception):
                    stream.flush()
            devnull = os.open(os.devnull, os.O_WRONLY)
            try:
                for fd in (1, 2):
                    saved.append((fd, os.dup(fd)))
                    os.dup2(devnull, fd)
            finally:
                os.close(devnull)
        yield
    finally:
        for fd, copy in saved:
            os.dup2(copy, fd)
            os.close(copy)
        sitk.ProcessObject.SetGlobalWarningDisplay(previous)


# ----------------------------------------------------------------------------- reading CT

#: HU sanity limits. Whole-slice abdominal CT always shows air (about -1000 HU) around the
#: body; data stored without rescaling (raw unsigned values) does not, and is refused.
HU_MIN_ALLOWED = -3100.0  # scanners pad outside the field of view with -2048 or -3024
HU_MAX_ALLOWED = 4000.0  # beyond dense bone / contrast; metal is rare at the liver level
HU_AIR_PERCENTILE_MAX = -500.0  # the 0.5th percentile of a whole slice must be air or fat


def check_hu(array: np.ndarray, where: str | os.PathLike, require_air: bool = True) -> None:
    """Refuse intensities that are not Hounsfield units.

    Args:
        array: image intensities after the reader's rescale (slope/intercept applied).
        where: the file, named in the error.
        require_air: whole-slice CT must contain air; crops need not.
    """
    if array.size == 0:
        raise InputError(where, "image is empty")
    if not np.all(np.isfinite(array)):
        raise InputError(where, "image holds NaN or infinite values, not CT in HU")
    lo, hi = float(array.min()), float(array.max())
    if lo < HU_MIN_ALLOWED or hi > HU_MAX_ALLOWED:
        raise InputError(
            where,
            f"intensities {lo:.0f}..{hi:.0f} are outside the CT range "
            f"[{HU_MIN_ALLOWED:.0f}, {HU_MAX_ALLOWED:.0f}] HU (stored without rescale slope/intercept?)",
        )
    if require_air:
        p = float(np.percentile(array, 0.5))
        if p > HU_AIR_PERCENTILE_MAX:
            raise InputError(
                where,
                f"no air in the image (0.5th percentile {p:.0f} HU > {HU_AIR_PERCENTILE_MAX:.0f}): "
                "not CT in HU (raw values stored without rescaling?)",
            )


#: Air is -1000 HU by the definition of the scale (water 0 HU), and scanners are calibrated to it
#: within a few HU; noise and partial volume move the median of a slice's air by tens of HU. Air
#: further than :data:`AIR_TOLERANCE_HU` from it means a wrong rescale slope or intercept: a
#: doubled slope puts air at -2000 HU while a liver at 60 HU reads a plausible 120 HU.
AIR_HU = -1000.0
AIR_TOLERANCE_HU = 150.0
#: The int16 floor scanners clip air to; a constant below it is the fill outside the field of view
#: (-2048, -3024, ...), not air.
AIR_FLOOR_HU = -1024.0


def air_level_problem(array: np.ndarray) -> str | None:
    """Why the air of a whole CT slice or volume is not at about -1000 HU, or ``None``.

    The air level is the median of the pixels at or below -500 HU (the threshold :func:`check_hu`
    requires some of), leaving out a constant fill below :data:`AIR_FLOOR_HU` when enough other
    air-like pixels remain (0.5% of the image, as :func:`check_hu` requires): a scanner's fill
    outside the field of view is not air, but when nothing else is air-like, that value is all
    the air there is.
    """
    air = array[array <= HU_AIR_PERCENTILE_MAX]
    if air.size == 0:
        return None  # check_hu refuses whole slices without air
    lowest = float(air.min())
    if lowest < AIR_FLOOR_HU:
        rest = air[air != lowest]
        if rest.size >= 0.005 * array.size:
            air = rest
    level = float(np.median(air))
    if abs(level - AIR_HU) <= AIR_TOLERANCE_HU:
        return None
    return (f"air is at {level:.0f} HU, not about {AIR_HU:.0f} HU (within {AIR_TOLERANCE_HU:.0f}): intensities "
            "scaled or shifted (rescale slope/intercept wrong or applied twice?); every HU value is suspect")


#: Largest image read (voxels x components), from the header, before any voxel is read: a 1 KB
#: header can claim 32767 x 32767 x 2 voxels and make a reader allocate gigabytes. The default is a
#: 512 x 512 x 2048 volume (LiTS volumes reach 512 x 512 x 987); ``nnUNet_joint_max_voxels``
#: overrides it.
MAX_VOXELS_DEFAULT = 512 * 512 * 2048
ENV_MAX_VOXELS = "nnUNet_joint_max_voxels"
#: A CT slice has at least this many pixels along each in-plane axis (a smaller "image" is a
#: thumbnail, a placeholder or a mislabelled file, and gives no liver to crop).
MIN_SLICE_PIXELS = 16


def max_voxels() -> int:
    """The image size limit: ``$nnUNet_joint_max_voxels`` or :data:`MAX_VOXELS_DEFAULT`."""
    raw = os.environ.get(ENV_MAX_VOXELS, "").strip()
    if not raw:
        return MAX_VOXELS_DEFAULT
    try:
        value = float(raw)  # "1e9" is accepted as well as "1000000000"
    except ValueError:
        value = float("nan")
    if not np.isfinite(value) or value < 1 or value != int(value):
        raise InputError(None, f"{ENV_MAX_VOXELS}={raw!r} must be a positive whole number of voxels")
    return int(value)


def check_image_size(size: tuple[int, ...], components: int, where: str | os.PathLike) -> None:
    """Refuse an image larger than :func:`max_voxels` (from its header, before reading it)."""
    voxels = int(np.prod([int(s) for s in size], dtype=np.int64)) * max(int(components), 1)
    limit = max_voxels()
    if voxels > limit:
        raise InputError(where, f"image of {' x '.join(map(str, size))} voxels"
                                f"{f' x {components} components' if components > 1 else ''} ({voxels:,} values) "
                                f"exceeds the limit of {limit:,} (set {ENV_MAX_VOXELS} to raise it)")


def check_slice_size(size_xyz: tuple[int, ...], where: str | os.PathLike) -> None:
    """Refuse an image whose in-plane size (the first two axes of SimpleITK's size) is below a CT slice's."""
    if len(size_xyz) >= 2 and min(size_xyz[:2]) < MIN_SLICE_PIXELS:
        raise InputError(where, f"image of {' x '.join(map(str, size_xyz))} pixels is not a CT slice or volume "
                                f"(at least {MIN_SLICE_PIXELS} x {MIN_SLICE_PIXELS} pixels in plane)")


def read_image_header(path: str | os.PathLike) -> sitk.ImageFileReader:
    """Read only the header; refuse an unreadable file, a NIfTI header that lies and an image beyond the size limit.

    Returns:
        A reader with the image information loaded (``GetSize()``, ``GetSpacing()``...);
        :func:`read_image` reads the voxels.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(path, "file not found")
    if not path.is_file():
        raise InputError(path, "not a file")
    header = read_nifti_header(path) if is_nifti(path) else None
    if header is not None:  # checked before ITK sees it: ITK allocates what the header claims
        check_image_size(header.shape[:3], int(np.prod(header.shape[3:], dtype=np.int64)), path)
        if header.version == 2:
            raise InputError(path, "NIfTI-2 file: SimpleITK reads NIfTI-1 only; save the image as "
                                   "NIfTI-1 (its sizes fit: at most 32767 voxels per axis)")
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        with quiet_itk():
            reader.ReadImageInformation()
    except RuntimeError as e:
        if header is not None:  # a NIfTI header ITK refuses: a broken stream says more than ITK does
            check_nifti_payload(path, header)
        raise InputError(path, f"cannot be read as an image: {itk_problem(e)}") from None
    check_image_size(reader.GetSize(), reader.GetNumberOfComponents(), path)
    return reader


def read_image(path: str | os.PathLike) -> sitk.Image:
    """Read one image file with SimpleITK, turning reader failures into :class:`InputError`.

    SimpleITK applies NIfTI ``scl_slope``/``scl_inter`` (slope 0 means no scaling) and DICOM
    RescaleSlope/RescaleIntercept, so the returned intensities are in the stored physical units.
    Before that, :func:`read_image_header` checks the header, and a NIfTI file's stored data is
    checked for truncation and NaN/infinite values (:func:`nnunet_joint.nifti.check_nifti_payload`).
    """
    path = Path(path)
    reader = read_image_header(path)
    header = read_nifti_header(path) if is_nifti(path) else None
    if header is not None:
        check_nifti_payload(path, header)
    try:
        with quiet_itk():
            return reader.Execute()
    except RuntimeError as e:
        raise InputError(path, f"cannot be read as an image: {itk_problem(e)}") from None


def pixel_digest(image: sitk.Image) -> str:
    """SHA-256 of an image's array shape and values (as float64, so PNG, DICOM and NIfTI copies match).

    Two rows or cases with the same digest are one image listed twice (a copy or a hard link):
    it would sit in a training and a validation fold at once.
    """
    array = sitk.GetArrayViewFromImage(image)
    digest = hashlib.sha256(str(array.shape).encode())
    for plane in array.reshape(-1, *array.shape[-2:]) if array.ndim > 2 else [array]:
        digest.update(np.ascontiguousarray(plane, dtype=np.float64).tobytes())  # a plane at a time: no 8x copy
    return digest.hexdigest()


def same_geometry(a: sitk.Image | sitk.ImageFileReader, b: sitk.Image | sitk.ImageFileReader,
                  tol: float = 1e-4, properties: Sequence[str] = ("Spacing", "Origin", "Direction")) -> str | None:
    """Return ``None`` when ``a`` and ``b`` share size and ``properties``, else what differs (plain numbers).

    Images or image file readers (headers read, voxels not), which answer the same getters.
    """
    if a.GetSize() != b.GetSize():
        return f"size {plain_numbers(b.GetSize())} differs from the image's {plain_numbers(a.GetSize())}"
    for name in properties:
        va, vb = np.array(getattr(a, f"Get{name}")()), np.array(getattr(b, f"Get{name}")())
        if va.shape != vb.shape or not np.allclose(va, vb, atol=tol, rtol=tol):
            return f"{name.lower()} {plain_numbers(vb)} differs from the image's {plain_numbers(va)}"
    return None
