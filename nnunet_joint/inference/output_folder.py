"""The output folder of ``nnunet_joint_predict``: replace only what this command wrote.

Every output folder gets a marker file, ``.nnunet_joint_predict``, listing each file (with its
SHA-256) and folder the command wrote. A later run replaces the folder only if everything in it
is listed and unchanged; a file or folder the user added (notes, a subfolder, an edited
``lesions.json``) makes it refuse, and nothing is deleted. The check runs before any model is
loaded and again just before the old folder is replaced.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from nnunet_joint.errors import InputError
from nnunet_joint.io import file_sha256

#: Written into every output folder of this command; a non-empty OUT_DIR without it is refused.
MARKER = ".nnunet_joint_predict"
_FORMAT = "nnunet_joint_predict output manifest v1"


def _entries(folder: Path) -> tuple[dict[str, Path], dict[str, Path]]:
    """Files and folders under ``folder`` (relative POSIX path -> path), symbolic links counted as files."""
    files: dict[str, Path] = {}
    folders: dict[str, Path] = {}
    for root, dirnames, filenames in os.walk(folder):  # does not follow links to folders
        base = Path(root)
        for name in dirnames:
            path = base / name
            (files if path.is_symlink() else folders)[path.relative_to(folder).as_posix()] = path
        for name in filenames:
            path = base / name
            files[path.relative_to(folder).as_posix()] = path
    files.pop(MARKER, None)
    return files, folders


def write_marker(folder: Path, input_path: Path) -> None:
    """List every file and folder now under ``folder`` in its marker (call when the outputs are complete)."""
    files, folders = _entries(folder)
    manifest = {
        "format": _FORMAT,
        "written_by": "nnunet_joint_predict",
        "input": str(input_path.resolve()),
        "folders": sorted(folders),
        "files": {name: file_sha256(path) for name, path in sorted(files.items())},
    }
    (folder / MARKER).write_text(json.dumps(manifest, indent=1) + "\n", encoding="utf-8")


def foreign_entries(folder: Path) -> list[str] | None:
    """What under ``folder`` this command did not write, or changed since; ``None`` without a readable marker."""
    try:
        manifest = json.loads((folder / MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(manifest, dict) or manifest.get("format") != _FORMAT:
        return None
    listed_files = manifest.get("files") or {}
    listed_folders = set(manifest.get("folders") or [])
    files, folders = _entries(folder)
    foreign = [f"{name}/" for name in sorted(folders) if name not in listed_folders]
    for name, path in sorted(files.items()):
        if name not in listed_files or path.is_symlink():
            foreign.append(name)
        elif file_sha256(path) != listed_files[name]:
            foreign.append(f"{name} (changed since it was written)")
    return foreign


def check_output_folder(out_dir: Path, input_path: Path) -> None:
    """Refuse an output that would overwrite what we did not write, or that lies in the input."""
    out_res, in_res = out_dir.resolve(), input_path.resolve()
    if out_res == in_res or in_res in out_res.parents or (in_res.is_dir() and out_res in in_res.parents):
        raise InputError(out_dir, f"output folder overlaps the input {input_path}; choose a separate folder")
    if out_dir.exists() or out_dir.is_symlink():
        if not out_dir.is_dir():
            raise InputError(out_dir, "output exists and is not a folder")
        if not any(out_dir.iterdir()):
            return
        if not (out_dir / MARKER).is_file():
            raise InputError(out_dir, f"output folder holds files this command did not write (no {MARKER} "
                                      "marker); choose an empty or new folder")
        foreign = foreign_entries(out_dir)
        if foreign is None:
            raise InputError(out_dir, f"output folder's {MARKER} marker lists no outputs (written by an older "
                                      "version, or edited): nothing can be replaced safely; move the folder away "
                                      "or choose a new one")
        if foreign:
            shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3 else "")
            raise InputError(out_dir, f"output folder holds {len(foreign)} item(s) this command did not write: "
                                      f"{shown}; move them away or choose a new folder (nothing was replaced)")
