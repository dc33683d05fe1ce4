"""``nnUNetPlannerCoarse`` (a faster stage 1) against a hand computation, on datasets planned by nnU-Net itself.

Each dataset holds three small CT-like volumes of one spacing, fingerprinted and planned by nnU-Net's
code (in this process); nnU-Net's median target spacing is then the volumes' own spacing, so the
coarse plans' 2-D spacing is ``max(spacing, 3 mm)`` per in-plane axis, by hand.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from nnunet_joint.names import COARSE_PLANS, COARSE_SPACING_MM, DEFAULT_PLANS
from nnunet_joint.planning import plan_and_preprocess
from nnunet_joint.study.folder import RunFolder

DATASET = "Dataset990_CoarseTest"
SHAPE_ZYX = (12, 48, 48)


def write_dataset(run: RunFolder, spacing_zyx: tuple[float, float, float]) -> None:
    raw = run.raw / DATASET
    (raw / "imagesTr").mkdir(parents=True)
    (raw / "labelsTr").mkdir()
    rng = np.random.default_rng(0)
    zz, yy, xx = np.mgrid[:SHAPE_ZYX[0], :SHAPE_ZYX[1], :SHAPE_ZYX[2]]
    for case in range(3):
        liver = (yy - 24) ** 2 + (xx - 20 - 2 * case) ** 2 < 15 ** 2
        ct = np.where(liver, 110, 40) + rng.normal(0, 10, SHAPE_ZYX)
        for array, path in ((ct.astype(np.int16), raw / "imagesTr" / f"case_{case:03d}_0000.nii.gz"),
                            (liver.astype(np.uint8), raw / "labelsTr" / f"case_{case:03d}.nii.gz")):
            image = sitk.GetImageFromArray(array)
            image.SetSpacing(tuple(reversed(spacing_zyx)))  # SimpleITK: x, y, z
            sitk.WriteImage(image, str(path))
    (raw / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "CT"}, "labels": {"background": 0, "liver": 1}, "numTraining": 3,
        "file_ending": ".nii.gz"}))


def plans(run: RunFolder, name: str) -> dict:
    return json.loads((run.preprocessed / DATASET / f"{name}.json").read_text())


@pytest.mark.parametrize("spacing_zyx,expected_2d,expected_transpose", [
    ((2.5, 0.75, 0.75), [3.0, 3.0], [0, 1, 2]),  # clinical CT: slices kept, pixels 0.75 -> 3 mm
    ((5.0, 3.5, 3.5), [3.5, 3.5], [0, 1, 2]),  # already coarser than 3 mm: nnU-Net's own spacing
    # slices thinner than the pixels: nnU-Net slices along y (its largest spacing); coarsened to 3 mm
    # everywhere, the tie would move it to z, but the slicing axis stays nnU-Net's
    ((0.7, 0.75, 0.75), [3.0, 3.0], [1, 0, 2]),
])
def test_coarse_plans_have_the_spacing_asked_for_and_nnuNets_slicing_axis(tmp_path, spacing_zyx, expected_2d,
                                                                         expected_transpose):
    run = RunFolder(tmp_path / "run")
    write_dataset(run, spacing_zyx)
    with run.nnunet_environment():
        assert plan_and_preprocess([990], "ExperimentPlanner", preprocess=False) == DEFAULT_PLANS
        assert plan_and_preprocess([990], "nnUNetPlannerCoarse", preprocess=False) == COARSE_PLANS
    default, coarse = plans(run, DEFAULT_PLANS), plans(run, COARSE_PLANS)
    assert default["transpose_forward"] == expected_transpose  # nnU-Net's choice, as the cases above say
    assert coarse["plans_name"] == COARSE_PLANS and coarse["experiment_planner_used"] == "nnUNetPlannerCoarse"
    assert coarse["transpose_forward"] == default["transpose_forward"]
    transposed = [spacing_zyx[a] for a in expected_transpose]
    assert default["configurations"]["2d"]["spacing"] == pytest.approx(transposed[1:])
    assert coarse["configurations"]["2d"]["spacing"] == pytest.approx(expected_2d)
    assert all(s >= COARSE_SPACING_MM for s in coarse["configurations"]["2d"]["spacing"])
    # the patch covers the coarse median image: 48 pixels of 0.75 mm are 12 of 3 mm
    median = coarse["configurations"]["2d"]["median_image_size_in_voxels"]
    in_plane_mm = [SHAPE_ZYX[a] * spacing_zyx[a] for a in expected_transpose[1:]]
    assert median == pytest.approx([round(mm / s) for mm, s in zip(in_plane_mm, expected_2d)], abs=1)
