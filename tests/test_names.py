"""The naming module is the one place of the project's names: its rules against hand-written
expectations, and a scan of the source tree for names written a second time."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_joint import names

REPO = Path(__file__).resolve().parents[1]
#: The naming module itself; tests state names as expectations on purpose.
ALLOWED = {Path("nnunet_joint/names.py")}
SCANNED_FOLDERS = ("nnunet_joint", "trainers", "evaluation", "dataset_conversion", "benchmarks", "docs", "scripts")

DATASET_FOLDER_RE = re.compile(r"Dataset\d{3}_[A-Za-z0-9]+")
SCHEDULE_RE = re.compile(r"(?<![A-Za-z])(NoFreeze|FreezeEnc|HierFreeze|HierUnfreeze)(?![a-z])")


def test_dataset_folders_and_roles():
    assert names.DATASET_FOLDERS == {501: "Dataset501_LiTSLiver", 502: "Dataset502_LiTSLesion",
                                     503: "Dataset503_ShebaSeg", 504: "Dataset504_ShebaJoint"}
    assert (names.LIVER_DATASET, names.LITS_LESION_DATASET, names.SEG_DATASET, names.JOINT_DATASET) == (501, 502,
                                                                                                         503, 504)
    assert names.dataset_folder(7, "X") == "Dataset007_X"


def test_trainer_names_build_and_parse_back():
    assert names.trainer_name("joint", "LiTS", "HierFreeze") == "nnUNetTrainerJoint_LiTS_HierFreeze"
    assert names.trainer_name("ynet", "ImageNet") == "nnUNetTrainerYNet_ImageNet"
    assert names.trainer_name("cls") == "nnUNetTrainerSEResNetCls"
    assert names.trainer_name("nnunet") == "nnUNetTrainer_JointBudget"
    assert names.parse_trainer_name("nnUNetTrainerJoint_LiTS_HierFreeze") == ("joint", "LiTS", "HierFreeze")
    assert names.parse_trainer_name("nnUNetTrainerSEResNetSeg_LiTS") == ("seg", "LiTS", "NoFreeze")
    assert names.parse_trainer_name("nnUNetTrainer_JointBudget") == ("nnunet", "scratch", "NoFreeze")
    for bad in ("nnUNetTrainer", "nnUNetTrainerJoint_HierFreeze", "nnUNetTrainerJoint_LiTS_Nope"):
        with pytest.raises(ValueError):
            names.parse_trainer_name(bad)
    # 4 frameworks x (scratch + 2 inits x 4 schedules) + plain nnU-Net: every name parses back to itself
    every = [names.trainer_name(f, i, s) for f in names.PAPER_FRAMEWORKS for i in names.INITS
             for s in names.SCHEDULE_NAMES if i != "scratch" or s == "NoFreeze"] + ["nnUNetTrainer_JointBudget"]
    assert len(every) == len(set(every)) == 37
    assert all(names.trainer_name(*names.parse_trainer_name(n)) == n for n in every)


def test_results_folder_rule_builds_and_parses():
    assert names.results_folder_name("nnUNetTrainerJoint", "nnUNetSEResNet18Plans") == \
        "nnUNetTrainerJoint__nnUNetSEResNet18Plans__2d"
    assert names.results_folder_pattern("nnUNetTrainerJoint*") == "nnUNetTrainerJoint*__*__2d"
    assert names.parse_results_folder_name("A__B__3d_fullres") == ("A", "B", "3d_fullres")
    assert names.parse_results_folder_name("A__B") is None
    assert names.parse_results_folder_name("A__B__C__D") is None


def test_schedule_names_match_the_freezing_tables():
    from nnunet_joint.freezing import SCHEDULES

    assert tuple(SCHEDULES) == names.SCHEDULE_NAMES == ("NoFreeze", "FreezeEnc", "HierFreeze", "HierUnfreeze")


def test_naming_module_does_not_import_torch():
    import subprocess
    import sys

    code = "import sys, nnunet_joint.names, nnunet_joint.study.matrix; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True).stdout.strip() == "False"


def test_a_converted_crop_and_a_predicted_crop_of_the_same_slice_get_the_same_spacing():
    """The converter's written spacing (what nnU-Net trains on) and the spacing prediction gives
    nnU-Net for the same 1 x H x W slice: out of plane 999 mm, in plane the slice's own."""
    from nnunet_joint.dataset_conversion.common import as_nnunet_2d
    from nnunet_joint.inference.cascade import model_spacing
    from nnunet_joint.inference.inputs import check_ct_image

    image = sitk.GetImageFromArray(np.full((1, 20, 24), -1000, np.int16))
    image.SetSpacing((0.7, 0.8, 0.6))  # x, y, a slice thinner than its pixels
    converted = tuple(reversed(as_nnunet_2d(image).GetSpacing()))  # z, y, x as nnU-Net reads the file
    predicted = model_spacing(check_ct_image(image, "slice.nii.gz"))
    assert converted == pytest.approx((999.0, 0.8, 0.7))
    assert predicted == pytest.approx(converted)
    assert image.GetSpacing() == (0.7, 0.8, 0.6)  # the input is untouched


# ----------------------------------------------------------------------------- the scan


def _docstring_nodes(tree: ast.AST) -> set[int]:
    ids = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
                ids.add(id(first.value))
    return ids


def _code_strings(path: Path) -> list[tuple[int, str]]:
    """Every string literal of the module that is not a docstring (f-strings: their literal parts
    joined with ``{}`` for each value, so ``f"{a}__{b}__2d"`` reads ``{}__{}__2d``)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docstrings = _docstring_nodes(tree)
    inside_fstrings = set()
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.JoinedStr):
            parts = []
            for value in node.values:
                inside_fstrings.add(id(value))
                parts.append(value.value if isinstance(value, ast.Constant) else "{}")
            out.append((node.lineno, "".join(parts)))
    for node in ast.walk(tree):
        if (isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings
                and id(node) not in inside_fstrings):
            out.append((node.lineno, node.value))
    return out


def _violations(path: Path) -> list[str]:
    found = []
    for line, text in _code_strings(path):
        if DATASET_FOLDER_RE.search(text):
            found.append(f"{line}: dataset folder {text!r}")
        if "__2d" in text:
            found.append(f"{line}: results-folder rule {text!r}")
        if SCHEDULE_RE.search(text):
            found.append(f"{line}: schedule name {text!r}")
    return found


def test_the_scan_finds_each_kind_of_second_definition(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text('"""Docstrings may say Dataset504_ShebaJoint and x__y__2d and HierFreeze."""\n'
                     'A = "Dataset504_ShebaJoint"\n'
                     'B = f"{A}__{A}__2d"\n'
                     'C = ("nnUNetTrainerJoint_LiTS_HierUnfreeze", "NoFreeze")\n'
                     'D = "Dataset99_NotThreeDigits or FreezeEncoder"\n')
    kinds = [v.split(": ")[1].split(" ")[0] for v in _violations(probe)]
    # the docstring and line D are not second definitions; each literal of line C is one
    assert sorted(kinds) == ["dataset", "results-folder", "schedule", "schedule"]


def test_no_name_is_written_outside_the_naming_module():
    """Dataset folder names, the ``__2d`` results-folder rule and schedule names appear as string
    literals only in :mod:`nnunet_joint.names` (docstrings may mention them; tests are not scanned)."""
    scanned, violations = 0, []
    for folder in SCANNED_FOLDERS:
        for path in sorted((REPO / folder).rglob("*.py")):
            rel = path.relative_to(REPO)
            if rel in ALLOWED:
                continue
            scanned += 1
            violations += [f"{rel}:{v}" for v in _violations(path)]
    assert scanned > 60
    assert not violations, "\n".join(violations)
