"""Reading CT safely and writing outputs atomically.

Everything the project writes (converted datasets, reports, predictions) goes to a temporary
name beside its destination and is renamed when complete, so a killed run never leaves a half
file or folder that looks whole (DESIGN.md section 7).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import SimpleITK as sitk

from nnunet_joint.errors import InputError

# ----------------------------------------------------------------------------- atomic writes


@contextlib.contextmanager
def atomic_path(dest: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside ``dest``; on success it is renamed to ``dest``.

    Works for files and folders. On an exception the temporary is removed and ``dest`` is left
    as it was. The temporary keeps ``dest``'s suffixes so writers that choose a format by the
    file name (SimpleITK, matplotlib) still work.
    """
    dest = Path(dest)
    dest.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(dest.suffixes) if dest.suffixes else ""
    fd, tmp_name = tempfile.mkstemp(prefix=f".{dest.name}.partial-", suffix=suffix, dir=dest.parent)
    os.close(fd)
    os.remove(tmp_name)  # callers create the file or folder themselves
    tmp = Path(tmp_name)
    try:
        yield tmp
        if not tmp.exists():
            raise RuntimeError(f"{dest}: nothing was written")
        if dest.is_dir() and not dest.is_symlink():
            old = dest.with_name(f".{dest.name}.old-{os.getpid()}")
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


def write_json(obj: Any, dest: str | os.PathLike, **kwargs: Any) -> None:
    """Write JSON atomically (indent 2 unless told otherwise)."""
    kwargs.setdefault("indent", 2)
    with atomic_path(dest) as tmp:
        tmp.write_text(json.dumps(obj, **kwargs) + "\n", encoding="utf-8")


def write_text(text: str, dest: str | os.PathLike) -> None:
    with atomic_path(dest) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_image(image: sitk.Image, dest: str | os.PathLike, compress: bool = True) -> None:
    """Write a SimpleITK image atomically (format from the file name)."""
    with atomic_path(dest) as tmp:
        sitk.WriteImage(image, str(tmp), compress)


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


def read_image(path: str | os.PathLike) -> sitk.Image:
    """Read one image file with SimpleITK, turning reader failures into :class:`InputError`.

    SimpleITK applies NIfTI ``scl_slope``/``scl_inter`` (slope 0 means no scaling) and DICOM
    RescaleSlope/RescaleIntercept, so the returned intensities are in the stored physical units.
    """
    path = Path(path)
    if not path.exists():
        raise InputError(path, "file not found")
    if not path.is_file():
        raise InputError(path, "not a file")
    try:
        return sitk.ReadImage(str(path))
    except RuntimeError as e:
        first = str(e).strip().splitlines()
        detail = next((line for line in first if "ERROR" in line or "Exception" in line), "")
        raise InputError(path, f"cannot be read as an image{': ' + detail.strip() if detail else ''}") from None


def same_geometry(a: sitk.Image, b: sitk.Image, tol: float = 1e-4) -> str | None:
    """Return ``None`` when ``a`` and ``b`` share size, spacing, origin and direction, else what differs."""
    if a.GetSize() != b.GetSize():
        return f"size {b.GetSize()} differs from the image's {a.GetSize()}"
    for name in ("Spacing", "Origin", "Direction"):
        va, vb = np.array(getattr(a, f"Get{name}")()), np.array(getattr(b, f"Get{name}")())
        if va.shape != vb.shape or not np.allclose(va, vb, atol=tol, rtol=tol):
            return f"{name.lower()} {tuple(np.round(vb, 5))} differs from the image's {tuple(np.round(va, 5))}"
    return None
