"""The package layout: trainers/, evaluation/ and dataset_conversion/ are real subpackages of
``nnunet_joint`` (package-dir in pyproject.toml, no symbolic links), each module has one import
name, and the editable and the wheel install both put the trainers where ``nnUNet_extTrainer`` finds them."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import pytest

import nnunet_joint

REPO = Path(__file__).resolve().parents[1]
#: The repository's top-level folders that are installed under another package name.
MAPPED = {"trainers": "nnunet_joint.trainers", "evaluation": "nnunet_joint.evaluation",
          "dataset_conversion": "nnunet_joint.dataset_conversion"}


def _package_folders() -> dict[str, Path]:
    """Every folder with an ``__init__.py`` under the package roots, keyed by the package name it must have."""
    folders = {}
    for root, name in [("nnunet_joint", "nnunet_joint"), *MAPPED.items()]:
        for init in sorted((REPO / root).rglob("__init__.py")):
            rel = init.parent.relative_to(REPO / root)
            folders[".".join([name, *rel.parts])] = init.parent
    return folders


def test_no_symbolic_link_in_the_package_folders():
    for root in ["nnunet_joint", *MAPPED]:
        for dirpath, dirnames, filenames in os.walk(REPO / root):
            links = [n for n in dirnames + filenames if (Path(dirpath) / n).is_symlink()]
            assert not links, f"symbolic links in {dirpath}: {links}"


def test_pyproject_lists_every_package_folder_once():
    tool = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert sorted(tool["packages"]) == sorted(_package_folders())
    assert tool["package-dir"] == {name: folder for folder, name in MAPPED.items()}


def _run_elsewhere(code: str, cwd: Path) -> str:
    """Run ``code`` in a fresh interpreter outside the repository (the repository is not on sys.path)."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, env=env, capture_output=True, text=True,
                          check=True).stdout


def test_editable_install_has_one_import_name_per_module(tmp_path):
    out = _run_elsewhere(
        "import importlib.util, nnunet_joint, nnunet_joint.trainers, nnunet_joint.evaluation.report,"
        " nnunet_joint.dataset_conversion.common as c\n"
        "print(nnunet_joint.trainers.__file__); print(nnunet_joint.evaluation.report.__file__); print(c.__file__)\n"
        "print(nnunet_joint.TRAINERS_DIR)\n"
        "print([n for n in ('trainers', 'evaluation', 'dataset_conversion') if importlib.util.find_spec(n)])\n",
        tmp_path)
    lines = out.splitlines()
    assert lines[:4] == [str(REPO / "trainers" / "__init__.py"), str(REPO / "evaluation" / "report" / "__init__.py"),
                         str(REPO / "dataset_conversion" / "common.py"), str(REPO / "trainers")]
    assert lines[4] == "[]"  # no generic top-level package names


def test_trainers_dir_is_the_real_folder_nnunet_scans(monkeypatch):
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    assert nnunet_joint.TRAINERS_DIR == REPO / "trainers" and not nnunet_joint.TRAINERS_DIR.is_symlink()
    monkeypatch.setenv("nnUNet_extTrainer", str(nnunet_joint.TRAINERS_DIR))
    cls = recursive_find_trainer_class_by_name("nnUNetTrainerJoint_LiTS_HierFreeze")
    assert cls.__name__ == "nnUNetTrainerJoint_LiTS_HierFreeze"
    assert (REPO / "trainers" / f"{cls.__module__}.py").is_file()  # imported by path from the real folder


@pytest.mark.slow
def test_wheel_holds_the_mapped_subpackages_under_nnunet_joint_only(tmp_path):
    """Build the wheel as ``pip wheel`` does and read its file list (a pure check of the build
    configuration; the wheel is not installed)."""
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(tmp_path), str(REPO)],
                   check=True, capture_output=True)
    (wheel,) = tmp_path.glob("nnunet_joint-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names} == {"nnunet_joint", wheel.name.split("-py3")[0] + ".dist-info"}
    python_files = {n for n in names if n.endswith(".py")}
    expected = set()
    for package, folder in _package_folders().items():
        prefix = package.replace(".", "/")
        expected |= {f"{prefix}/{p.name}" for p in folder.glob("*.py")}
    assert python_files == expected
    assert "nnunet_joint/trainers/nnUNetTrainerJoint.py" in python_files
    assert "nnunet_joint/evaluation/report/build.py" in python_files
