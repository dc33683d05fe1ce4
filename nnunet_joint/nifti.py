"""What SimpleITK does not tell about a NIfTI file: a lying header, a truncated payload, NaN voxels.

SimpleITK (ITK's NIfTI reader) silently repairs three kinds of broken files, so their numbers
are wrong without any error: a truncated ``.nii``/``.nii.gz`` is zero-filled (half a slice of
0 HU), NaN and infinite voxels become 0 before any check can see them, and a voxel size of 0 in
``pixdim`` becomes 1 mm. This module reads the header itself (NIfTI-1 and NIfTI-2, either byte
order, numpy and the standard library only) and streams the voxel data once, decompressing a
``.nii.gz`` completely (which also verifies its CRC), to refuse such files before SimpleITK reads
them.
"""

from __future__ import annotations

import gzip
import os
import struct
import zlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nnunet_joint.errors import InputError

NIFTI_SUFFIXES = (".nii", ".nii.gz")
#: NIfTI ``datatype`` code -> numpy dtype of one stored value (vector types: their scalar).
_DTYPES = {2: "u1", 4: "i2", 8: "i4", 16: "f4", 32: "f4", 64: "f8", 128: "u1", 256: "i1", 512: "u2",
           768: "u4", 1024: "i8", 1280: "u8", 1792: "f8", 2304: "u1"}
#: Values per voxel of the vector types (complex, RGB, RGBA).
_VALUES_PER_VOXEL = {32: 2, 1792: 2, 128: 3, 2304: 4}
_CHUNK = 1 << 24  # 16 MiB of decompressed data at a time


@dataclass(frozen=True)
class NiftiHeader:
    """The fields of a single-file NIfTI header that decide how its voxels are read."""

    version: int  # 1 or 2
    byte_order: str  # "<" or ">"
    shape: tuple[int, ...]  # dim[1..dim[0]], x first
    datatype: int
    pixdim: tuple[float, ...]  # voxel size along each axis of ``shape``
    vox_offset: int
    single_file: bool  # magic n+1 / n+2 (the voxels follow the header in the same file)

    @property
    def voxels(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) if self.shape else 0

    @property
    def dtype(self) -> np.dtype | None:
        code = _DTYPES.get(self.datatype)
        return None if code is None else np.dtype(self.byte_order + code)

    @property
    def payload_bytes(self) -> int | None:
        dtype = self.dtype
        if dtype is None:
            return None
        return self.voxels * _VALUES_PER_VOXEL.get(self.datatype, 1) * dtype.itemsize


def is_nifti(path: str | os.PathLike) -> bool:
    return str(path).lower().endswith(NIFTI_SUFFIXES)


def _open(path: Path):
    """The file's bytes, decompressed when it is gzip (by its magic number, whatever its name)."""
    with open(path, "rb") as fh:
        compressed = fh.read(2) == b"\x1f\x8b"
    return gzip.open(path, "rb") if compressed else open(path, "rb")


def read_nifti_header(path: str | os.PathLike) -> NiftiHeader | None:
    """Parse the header; ``None`` when the file does not start like a NIfTI-1/2 header (SimpleITK decides).

    Raises:
        InputError: a broken gzip stream, a header cut short, or a header that is NIfTI but lies:
            no or negative dimensions, or a voxel size that is 0, negative or not a number (a
            reader would invent 1 mm).
    """
    path = Path(path)
    try:
        with _open(path) as fh:
            raw = fh.read(540)
    except (EOFError, zlib.error, gzip.BadGzipFile) as e:  # gzip by its magic number, but broken
        raise InputError(path, f"compressed data is truncated or corrupt ({e}): the file was not written "
                               "or copied completely") from None
    if len(raw) < 348:
        if len(raw) >= 4 and 348 in (struct.unpack("<i", raw[:4])[0], struct.unpack(">i", raw[:4])[0]):
            raise InputError(path, f"file is truncated: {len(raw)} bytes, a NIfTI-1 header alone has 348")
        return None  # not NIfTI: SimpleITK's error says what it is not
    for order in "<>":
        size = struct.unpack(order + "i", raw[:4])[0]
        if size == 348:
            magic = raw[344:348]
            if magic not in (b"n+1\0", b"ni1\0"):
                return None
            dims = struct.unpack(order + "8h", raw[40:56])
            datatype = struct.unpack(order + "h", raw[70:72])[0]
            pixdim = struct.unpack(order + "8f", raw[76:108])
            vox_offset = struct.unpack(order + "f", raw[108:112])[0]
            version, single = 1, magic == b"n+1\0"
            break
        if size == 540 and len(raw) >= 540:
            magic = raw[4:12]
            if magic[:3] not in (b"n+2", b"ni2"):
                return None
            datatype = struct.unpack(order + "h", raw[12:14])[0]
            dims = struct.unpack(order + "8q", raw[16:80])
            pixdim = struct.unpack(order + "8d", raw[104:168])
            vox_offset = struct.unpack(order + "q", raw[168:176])[0]
            version, single = 2, magic[:3] == b"n+2"
            break
    else:
        return None
    ndim = dims[0]
    if not 1 <= ndim <= 7:
        raise InputError(path, f"NIfTI header states {ndim} dimensions (dim[0] must be 1..7): corrupt header")
    shape = tuple(int(d) for d in dims[1:ndim + 1])
    if any(d < 1 for d in shape):
        raise InputError(path, f"NIfTI header states a size of {' x '.join(map(str, shape))}: "
                               "every dimension must be at least 1")
    spatial = min(ndim, 3)
    for axis in range(spatial):
        value = float(pixdim[axis + 1])
        if not np.isfinite(value) or value <= 0:
            raise InputError(path, f"NIfTI header states a voxel size of {value:g} mm along {'xyz'[axis]} "
                                   f"(pixdim[{axis + 1}]): no valid spacing, a reader would invent 1 mm")
    if not np.isfinite(vox_offset) or vox_offset < 0:
        raise InputError(path, f"NIfTI header states a data offset of {vox_offset}: corrupt header")
    return NiftiHeader(version, order, shape, int(datatype), tuple(float(p) for p in pixdim[1:ndim + 1]),
                       int(vox_offset), single)


def check_nifti_payload(path: str | os.PathLike, header: NiftiHeader) -> None:
    """Read every stored byte once: refuse a truncated or corrupt file and NaN/infinite voxels.

    A ``.nii.gz`` is decompressed completely (gzip's CRC and length check included); the data
    must hold at least what the header promises. Floating-point data is checked for NaN and
    infinite values as stored, before any reader turns them into 0.

    Raises:
        InputError: the file ends early, its compressed stream is corrupt, or it holds NaN/inf.
    """
    path = Path(path)
    expected = header.payload_bytes
    if not header.single_file or expected is None:
        return  # .hdr/.img pairs and exotic types: left to SimpleITK
    check_values = header.dtype is not None and header.dtype.kind == "f"
    itemsize = header.dtype.itemsize if header.dtype is not None else 1
    position = 0  # bytes of the decompressed file read so far
    data_read = 0  # bytes of voxel data read so far
    carry = b""
    bad_values = 0
    try:
        with _open(path) as fh:
            while True:
                chunk = fh.read(_CHUNK)
                if not chunk:
                    break
                start = max(header.vox_offset - position, 0)
                position += len(chunk)
                if start >= len(chunk):
                    continue
                data = chunk[start:]
                take = min(len(data), expected - data_read)
                if take <= 0:
                    continue  # padding after the data: read on to verify the stream
                data_read += take
                if check_values:
                    block = carry + data[:take]
                    usable = len(block) - len(block) % itemsize
                    values = np.frombuffer(block[:usable], dtype=header.dtype)
                    bad_values += int(values.size - np.count_nonzero(np.isfinite(values)))
                    carry = block[usable:]
    except (EOFError, zlib.error, gzip.BadGzipFile) as e:
        raise InputError(path, f"compressed data is truncated or corrupt ({e}): the file was not written "
                               "or copied completely") from None
    if data_read < expected:
        raise InputError(path, f"file is truncated: the header promises {expected} bytes of voxel data "
                               f"({' x '.join(map(str, header.shape))} voxels), only {data_read} are present")
    if bad_values:
        raise InputError(path, f"{bad_values} voxel(s) are NaN or infinite: not CT in HU")
