"""The shared reader refuses what SimpleITK would silently repair, whatever the NIfTI flavour.

NIfTI-1 and NIfTI-2, little and big endian, ``.nii`` and ``.nii.gz``, integer and float voxels: a
truncated payload, NaN/inf voxels, a voxel size of 0, and a header claiming more voxels than the
limit are refused with one line naming the file; the intact file reads back exactly. Also: ITK's
C++ noise is stripped from messages, options must be finite, operating-system errors become one
line, and stale temporaries of dead processes are cleaned.
"""

from __future__ import annotations

import errno
import gzip
import os
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_joint import io
from nnunet_joint.errors import InputError, check_number, cli_entry
from nnunet_joint.io import (ENV_MAX_VOXELS, atomic_path, check_slice_size, clean_stale_temporaries, itk_problem,
                             read_image, read_image_header)

SHAPE_ZYX = (3, 20, 24)
SPACING_XYZ = (0.75, 0.8, 2.5)


def ct(dtype: str) -> np.ndarray:
    """A small CT block (air and soft tissue) whose every voxel differs, so any zero-fill shows."""
    a = np.full(SHAPE_ZYX, -1000.0)
    a[:, 4:16, 4:20] = 40 + np.arange(12 * 16).reshape(12, 16) % 50
    return a.astype(dtype)


def nifti_bytes(array_zyx: np.ndarray, version: int = 1, order: str = "<", spacing=SPACING_XYZ,
                datatype: int | None = None) -> bytes:
    """A single-file NIfTI-1/2 image written by hand (no qform/sform: the spacing is pixdim)."""
    codes = {"int16": 4, "float32": 16, "float64": 64, "uint8": 2}
    dtype = np.dtype(array_zyx.dtype).newbyteorder(order)
    datatype = codes[array_zyx.dtype.name] if datatype is None else datatype
    dims = [3, *array_zyx.shape[::-1], 1, 1, 1, 1]
    pixdim = [1.0, *spacing, 1, 1, 1, 1]
    if version == 1:
        header = bytearray(352)
        struct.pack_into(order + "i", header, 0, 348)
        struct.pack_into(order + "8h", header, 40, *dims)
        struct.pack_into(order + "hh", header, 70, datatype, dtype.itemsize * 8)
        struct.pack_into(order + "8f", header, 76, *pixdim)
        struct.pack_into(order + "f", header, 108, 352.0)
        header[344:348] = b"n+1\0"
    else:
        header = bytearray(544)
        struct.pack_into(order + "i", header, 0, 540)
        header[4:12] = b"n+2\0\r\n\x1a\n"
        struct.pack_into(order + "hh", header, 12, datatype, dtype.itemsize * 8)
        struct.pack_into(order + "8q", header, 16, *dims)
        struct.pack_into(order + "8d", header, 104, *pixdim)
        struct.pack_into(order + "q", header, 168, 544)
    return bytes(header) + np.ascontiguousarray(array_zyx, dtype=dtype).tobytes()


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(gzip.compress(data) if path.name.endswith(".gz") else data)
    return path


FLAVOURS = [(1, o, ext) for o in "<>" for ext in (".nii", ".nii.gz")]
FLAVOUR_IDS = [f"{'le' if o == '<' else 'be'}{ext}" for _, o, ext in FLAVOURS]


def expect_refused(path: Path, *fragments: str) -> str:
    with pytest.raises(InputError) as e:
        read_image(path)
    message = str(e.value)
    assert message.startswith(f"{path}: ") and "\n" not in message, message
    for fragment in fragments:
        assert fragment in message, message
    assert ".cxx" not in message and "sitk::" not in message and "itk::" not in message
    return message


@pytest.mark.parametrize("version,order,ext", FLAVOURS, ids=FLAVOUR_IDS)
@pytest.mark.parametrize("dtype", ["int16", "float32", "float64"])
def test_intact_file_reads_back_exactly(tmp_path, version, order, ext, dtype):
    path = write(tmp_path / f"ct{ext}", nifti_bytes(ct(dtype), version, order))
    image = read_image(path)
    np.testing.assert_array_equal(sitk.GetArrayFromImage(image), ct(dtype))
    np.testing.assert_allclose(image.GetSpacing(), SPACING_XYZ, rtol=1e-6)


@pytest.mark.parametrize("version,order,ext", FLAVOURS, ids=FLAVOUR_IDS)
@pytest.mark.parametrize("keep", [0.3, 0.9, 0.999])
def test_truncated_file_is_refused(tmp_path, version, order, ext, keep):
    whole = nifti_bytes(ct("int16"), version, order)
    if ext == ".nii.gz":  # a copy or download cut short: the compressed stream ends early
        compressed = gzip.compress(whole)
        (tmp_path / "ct.nii.gz").write_bytes(compressed[: int(len(compressed) * keep)])
        expect_refused(tmp_path / "ct.nii.gz", "truncated or corrupt")
    else:
        (tmp_path / "ct.nii").write_bytes(whole[: int(len(whole) * keep)] if keep > 0.3 else whole[:400])
        expect_refused(tmp_path / "ct.nii", "file is truncated", "voxel data")


def test_corrupt_compressed_stream_is_refused(tmp_path):
    noisy = ct("int16") + np.random.default_rng(0).integers(0, 50, SHAPE_ZYX).astype(np.int16)  # compresses little
    data = bytearray(gzip.compress(nifti_bytes(noisy)))
    data[len(data) * 3 // 4] ^= 0xFF  # one flipped byte in the voxel data: deflate error or CRC mismatch
    path = tmp_path / "ct.nii.gz"
    path.write_bytes(bytes(data))
    expect_refused(path, "truncated or corrupt")


@pytest.mark.parametrize("version,order,ext", FLAVOURS, ids=FLAVOUR_IDS)
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_and_infinite_voxels_are_refused(tmp_path, version, order, ext, dtype, bad):
    array = ct(dtype)
    array[1, 5, 7] = bad
    array[2, 0, 0] = bad
    path = write(tmp_path / f"ct{ext}", nifti_bytes(array, version, order))
    assert not np.isnan(sitk.GetArrayFromImage(sitk.ReadImage(str(path)))).any()  # what SimpleITK alone does
    expect_refused(path, "2 voxel(s) are NaN or infinite")


@pytest.mark.parametrize("version,order,ext", FLAVOURS, ids=FLAVOUR_IDS)
@pytest.mark.parametrize("axis,value", [(0, 0.0), (1, 0.0), (2, 0.0), (0, -0.8), (1, float("nan"))])
def test_voxel_size_zero_negative_or_nan_is_refused(tmp_path, version, order, ext, axis, value):
    spacing = list(SPACING_XYZ)
    spacing[axis] = value
    path = write(tmp_path / f"ct{ext}", nifti_bytes(ct("int16"), version, order, spacing=spacing))
    expect_refused(path, f"voxel size of {value:g} mm along {'xyz'[axis]}", "would invent 1 mm")


@pytest.mark.parametrize("ext", [".nii", ".nii.gz"])
def test_nifti2_is_refused_in_words(tmp_path, ext):
    """SimpleITK reads NIfTI-1 only; a NIfTI-2 file gets a message that says so."""
    path = write(tmp_path / f"ct{ext}", nifti_bytes(ct("int16"), version=2))
    expect_refused(path, "NIfTI-2 file: SimpleITK reads NIfTI-1 only")


@pytest.mark.parametrize("version,order,ext", [(v, o, e) for v in (1, 2) for o in "<>" for e in (".nii", ".nii.gz")])
def test_header_claiming_a_huge_image_is_refused_before_reading(tmp_path, version, order, ext, monkeypatch):
    """A 1 KB file whose header claims 32767 x 32767 x 2 voxels: refused from the header alone."""
    header = bytearray(nifti_bytes(np.zeros((1, 1, 1), np.int16), version, order))
    if version == 1:
        struct.pack_into(order + "8h", header, 40, 3, 32767, 32767, 2, 1, 1, 1, 1)
    else:
        struct.pack_into(order + "8q", header, 16, 3, 32767, 32767, 2, 1, 1, 1, 1)
    path = write(tmp_path / f"bomb{ext}", bytes(header) + b"\0" * 600)
    assert path.stat().st_size < 2048
    expect_refused(path, "32767 x 32767 x 2 voxels", "exceeds the limit of 536,870,912", ENV_MAX_VOXELS)
    with pytest.raises(InputError, match="exceeds the limit"):
        read_image_header(path)
    # the limit is a setting: lowered, it refuses an ordinary file; raised, the bomb gets past the
    # size check and is refused as what it is, a truncated file
    small = write(tmp_path / f"small{ext}", nifti_bytes(ct("int16"), version, order))
    monkeypatch.setenv(ENV_MAX_VOXELS, "1000")
    expect_refused(small, "24 x 20 x 3 voxels", "exceeds the limit of 1,000")
    monkeypatch.setenv(ENV_MAX_VOXELS, str(40000 ** 3))
    expect_refused(path, "truncated" if version == 1 else "NIfTI-2")
    monkeypatch.setenv(ENV_MAX_VOXELS, "lots")
    with pytest.raises(InputError, match=f"{ENV_MAX_VOXELS}='lots' must be a positive whole number"):
        read_image(small)


def test_huge_mha_header_is_refused_too(tmp_path):
    path = tmp_path / "bomb.mha"
    path.write_bytes(b"ObjectType = Image\nNDims = 3\nDimSize = 32767 32767 2\nElementType = MET_SHORT\n"
                     b"ElementDataFile = LOCAL\n" + b"\0" * 100)
    expect_refused(path, "32767 x 32767 x 2 voxels", "exceeds the limit")


def test_itk_messages_lose_their_cpp_source_paths(tmp_path):
    garbage = tmp_path / "garbage.nii.gz"
    garbage.write_bytes(b"not an image")
    assert "no image reader recognises the file" in expect_refused(garbage, "cannot be read as an image")
    truncated_mha = tmp_path / "t.mha"
    sitk.WriteImage(sitk.GetImageFromArray(ct("int16")), str(truncated_mha))
    truncated_mha.write_bytes(truncated_mha.read_bytes()[:-300])
    expect_refused(truncated_mha, "incomplete or corrupt")
    raw = RuntimeError("Exception thrown in SimpleITK ImageFileWriter_Execute: /tmp/SimpleITK-build/ITK/Modules/IO/"
                       "NIFTI/src/itkNiftiImageIO.cxx:2386:\nITK ERROR: NiftiImageIO(0x558c2b037400): ERROR: nifti "
                       "library failed to write image: /out/x.nii.gz")
    assert itk_problem(raw) == "nifti library failed to write image: /out/x.nii.gz"


def test_itk_warnings_do_not_reach_stderr(tmp_path, capfd):
    """ITK prints warnings from C++ straight to the process's stderr; the reader keeps them off it."""
    image = sitk.GetImageFromArray(ct("int16"))
    path = tmp_path / "sform.nii"
    sitk.WriteImage(image, str(path))
    data = bytearray(path.read_bytes())
    struct.pack_into("<f", data, 80, 0.5)  # pixdim[1] disagrees with the sform: ITK warns
    path.write_bytes(bytes(data))
    capfd.readouterr()
    sitk.ReadImage(str(path))
    assert "unexpected scales in sform" in capfd.readouterr().err  # what SimpleITK alone prints
    read_image(path)
    captured = capfd.readouterr()
    assert captured.err == "" and captured.out == ""


def test_slice_size_minimum():
    check_slice_size((16, 16, 1), "x")
    for size in [(1, 1), (1, 1, 1), (15, 512, 3), (512, 8)]:
        with pytest.raises(InputError, match="is not a CT slice or volume"):
            check_slice_size(size, "x")


@pytest.mark.parametrize("value,minimum,strict,problem", [
    (float("nan"), 0, False, "must be a finite number >= 0, got nan"),
    (float("inf"), 0, False, "must be a finite number >= 0, got inf"),
    (-float("inf"), None, False, "must be a finite number, got -inf"),
    (-1.0, 0, False, "must be >= 0, got -1.0"),
    (0.0, 0, True, "must be > 0, got 0.0"),
    ("x", 0, True, "must be a number > 0, got 'x'"),
])
def test_numeric_options_must_be_finite_and_in_range(value, minimum, strict, problem):
    with pytest.raises(InputError) as e:
        check_number("--opt", value, minimum=minimum, strict=strict)
    assert str(e.value) == f"--opt {problem}"
    assert check_number("--opt", 0.5, minimum=0, strict=True) == 0.5


@pytest.mark.parametrize("error,line", [
    (OSError(errno.ENOSPC, "No space left on device", "/data/out/x.nii.gz"),
     "error: /data/out/x.nii.gz: No space left on device"),
    (FileExistsError(errno.EEXIST, "File exists", "/data/raw"), "error: /data/raw: File exists"),
    (NotADirectoryError(errno.ENOTDIR, "Not a directory", "/data/file/Dataset503"),
     "error: /data/file/Dataset503: Not a directory"),
    (OSError(errno.ENOSPC, "No space left on device", "/a/.x.partial", None, "/a/x"),
     "error: /a/.x.partial -> /a/x: No space left on device"),
    (PermissionError(errno.EACCES, "Permission denied"), "error: Permission denied"),
])
def test_os_errors_at_the_entry_point_are_one_line_exit_2(capsys, error, line):
    @cli_entry
    def main(argv=None):
        raise error

    with pytest.raises(SystemExit) as e:
        main([])
    assert e.value.code == 2
    assert capsys.readouterr().err == line + "\n"


def test_image_write_failure_is_an_os_error_in_words(tmp_path):
    with pytest.raises(OSError) as e:
        io.write_image_file(sitk.GetImageFromArray(ct("int16")), tmp_path / "missing_folder" / "x.nii.gz")
    assert e.value.filename == str(tmp_path / "missing_folder" / "x.nii.gz")
    assert e.value.strerror.startswith("cannot be written") and ".cxx" not in e.value.strerror


def test_a_full_disk_inside_an_atomic_write_names_what_the_user_asked_for(tmp_path):
    """The kernel's ENOSPC from write(2) names no file, and one on the hidden temporary names a path that is
    gone by the time the user reads it: both name the destination (inside it, where known)."""
    dest = tmp_path / "out"
    with pytest.raises(OSError) as e:
        with atomic_path(dest) as tmp:
            tmp.mkdir()
            with open("/dev/full", "w", encoding="utf-8") as f:
                f.write("x")
    assert e.value.errno == errno.ENOSPC and e.value.filename == str(dest)
    with pytest.raises(OSError) as e:
        with atomic_path(dest) as tmp:
            tmp.mkdir()
            raise OSError(errno.ENOSPC, "No space left on device", str(tmp / "case" / "liver.nii.gz"), None, str(tmp))
    assert (e.value.filename, e.value.filename2) == (str(dest / "case" / "liver.nii.gz"), str(dest))
    assert list(tmp_path.iterdir()) == []  # and nothing half-written


def _abdomen(air: float, fill: float | None = None, body: float = 40.0, noise: float = 0.0) -> np.ndarray:
    """A 128 x 128 slice: a circular field of view (outside: ``fill``), air, a body disc; optional noise."""
    rr, cc = np.mgrid[:128, :128]
    radius = np.hypot(rr - 64, cc - 64)
    slice_ = np.where(radius < 40, body, air).astype(np.float64)
    slice_ += np.random.default_rng(0).normal(0, noise, slice_.shape)
    slice_ = np.maximum(slice_, -1024)  # the int16 floor scanners clip air to
    if fill is not None:
        slice_[radius >= 63] = fill
    return slice_


@pytest.mark.parametrize("array,level", [
    (_abdomen(-1000), None),
    (_abdomen(-1000, noise=20), None),  # air clipped at -1024 on one side
    (_abdomen(-1000, fill=-3024), None),  # the fill outside the field of view is not air
    (_abdomen(-1000, fill=-2048, noise=20), None),
    (_abdomen(-1000) * 2, -2000),  # a doubled slice: its air is the constant -2000, the only air-like value
    (_abdomen(-1000, noise=20) * 2, -2000),
    (_abdomen(-1000, fill=-1024) * 2, -2000),  # -1024 fill doubled to -2048 is left out; the air stays
    (_abdomen(-1000) + 300, -700),  # a wrong intercept
])
def test_air_level_tells_a_wrong_rescale_from_a_scanners_fill(array, level):
    problem = io.air_level_problem(array)
    if level is None:
        assert problem is None
    else:
        assert problem is not None and problem.startswith("air is at ") and "HU, not about -1000 HU" in problem
        assert abs(float(problem.split()[3]) - level) <= 20, problem  # noisy air: within the noise


# ----------------------------------------------------------------------------- stale temporaries


def dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_temporaries_of_dead_processes_are_cleaned_live_ones_kept(tmp_path):
    dest = tmp_path / "out"
    host = io._HOST
    dead = tmp_path / f".out.partial-{host}.{dead_pid()}.abc123"
    dead_old = tmp_path / f".out.old-{host}.{dead_pid()}.1a2b3c4d"
    dead_file = tmp_path / f".out.partial-{host}.{dead_pid()}.zz9.json"
    live = tmp_path / f".out.partial-{host}.{os.getpid()}.def456"
    other_host = tmp_path / f".out.partial-elsewhere{host}.{dead_pid()}.ghi789"
    other_dest = tmp_path / f".outer.partial-{host}.{dead_pid()}.jkl012"
    unrelated = tmp_path / ".out.partial-notes"
    for folder in (dead, dead_old, live, other_host, other_dest, unrelated):
        (folder / "sub").mkdir(parents=True)
        (folder / "sub" / "f.txt").write_text("x")
    dead_file.write_text("{}")
    removed = clean_stale_temporaries(dest)
    assert sorted(removed) == sorted([dead, dead_old, dead_file])
    assert not dead.exists() and not dead_old.exists() and not dead_file.exists()
    for kept in (live, other_host, other_dest, unrelated):
        assert (kept / "sub" / "f.txt").is_file(), kept


def test_a_killed_writer_leaves_a_temporary_the_next_write_removes(tmp_path):
    dest = tmp_path / "result"
    code = ("import sys, time; from pathlib import Path; from nnunet_joint.io import atomic_path\n"
            "with atomic_path(Path(sys.argv[1])) as tmp:\n"
            "    tmp.mkdir(); (tmp / 'half.txt').write_text('x'); print('ready', flush=True); time.sleep(60)\n")
    proc = subprocess.Popen([sys.executable, "-c", code, str(dest)], stdout=subprocess.PIPE, text=True,
                            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert proc.stdout.readline().strip() == "ready"
    proc.kill()
    proc.wait()
    (stale,) = list(tmp_path.glob(".result.partial-*"))
    assert f".{proc.pid}." in stale.name and (stale / "half.txt").is_file()
    with atomic_path(dest) as tmp:
        tmp.write_text("whole")
    assert dest.read_text() == "whole"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result"]
