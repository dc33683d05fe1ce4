"""The parts of the GPU check that need no GPU: the GPU-hours arithmetic and the refusal without CUDA."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from nnunet_joint.study.profiles import PROFILES

BENCHMARKS = Path(__file__).resolve().parent.parent / "benchmarks"


def load_gpu_check():
    """benchmarks/gpu_check.py as a module (benchmarks/ is not a package)."""
    if "gpu_check" not in sys.modules:
        spec = importlib.util.spec_from_file_location("gpu_check", BENCHMARKS / "gpu_check.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules["gpu_check"] = module  # dataclasses look their module up while the class is made
        spec.loader.exec_module(module)
    return sys.modules["gpu_check"]


def test_gpu_hours_by_hand():
    g = load_gpu_check()
    trainings = [g.CostedTraining("a", g.OURS, epochs=2, iterations=10),  # 2 validation iterations per epoch
                 g.CostedTraining("b", g.PLAIN, epochs=3, iterations=250)]  # 50 (nnU-Net's 250 -> 50)
    seconds = {g.OURS: (0.5, 0.25), g.PLAIN: (0.1, 0.05)}
    # a: 2 x (10 x 0.5 + 2 x 0.25) = 11 s; b: 3 x (250 x 0.1 + 50 x 0.05) = 82.5 s
    assert g.gpu_hours(trainings, seconds) == pytest.approx((11 + 82.5) / 3600)


def test_full_profile_trainings_and_hours_by_hand():
    g = load_gpu_check()
    full = PROFILES["full"]
    assert full.rows is None and full.folds == (0, 1, 2)  # every row of the matrix, three folds
    e, i = (int(full.budget[k]) for k in ("nnUNet_joint_epochs", "nnUNet_joint_iterations"))
    e1, i1 = (int(full.stage1_budget[k]) for k in ("nnUNet_joint_epochs", "nnUNet_joint_iterations"))
    el, il = (int(full.lits_budget[k]) for k in ("nnUNet_joint_epochs", "nnUNet_joint_iterations"))
    # the matrix: 4 frameworks x 3 inits + joint-from-LiTS x 3 schedules = 15 rows of ours (4 of them
    # ImageNet), plain nnU-Net on 2 datasets and from LiTS on 504; plus stage 1 and the two LiTS pretrainings
    trainings = g.profile_trainings(full)
    assert len(trainings) == 3 + (15 + 3) * 3
    assert len(g.profile_trainings(full, imagenet=False)) == 3 + (11 + 3) * 3
    seconds = {g.STAGE1: (0.2, 0.1), g.PLAIN: (0.3, 0.1), g.OURS: (0.4, 0.2)}

    def val(iterations: int) -> int:  # nnU-Net's 50 per 250, between 1 and 50
        return max(1, min(50, iterations // 5))

    by_hand = (e1 * (i1 * 0.2 + val(i1) * 0.1) + el * (il * 0.4 + val(il) * 0.2) + el * (il * 0.3 + val(il) * 0.1)
               + 3 * 3 * e * (i * 0.3 + val(i) * 0.1) + 15 * 3 * e * (i * 0.4 + val(i) * 0.2))
    assert g.gpu_hours(trainings, seconds) == pytest.approx(by_hand / 3600)


def test_a_budget_without_variables_is_nnunets_length():
    g = load_gpu_check()
    assert g.budget_length({}) == (1000, 250)
    assert g.budget_length({"nnUNet_joint_epochs": "7", "nnUNet_joint_iterations": "12"}) == (7, 12)


@pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="this machine may have a GPU")
def test_gpu_check_script_stops_at_once_without_a_gpu(tmp_path):
    work = tmp_path / "work"
    done = subprocess.run(["bash", str(BENCHMARKS / "gpu_check.sh"), str(work)], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 2
    assert done.stderr.strip() == ("error: gpu_check: no CUDA device (nvidia-smi lists no GPU): run this on a "
                                   "machine with an NVIDIA GPU")
    assert not work.exists()  # nothing installed or written


def test_gpu_check_helper_refuses_without_cuda(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has a CUDA device")
    work = tmp_path / "work"
    done = subprocess.run([sys.executable, str(BENCHMARKS / "gpu_check.py"), "--work", str(work)],
                          capture_output=True, text=True, timeout=300, env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == ["error: cuda: no CUDA device (torch.cuda.is_available() is False): "
                                                "the GPU check needs an NVIDIA GPU and a CUDA build of torch"]
    assert not work.exists()
