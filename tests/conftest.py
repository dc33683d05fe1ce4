"""Shared fixtures. The tiny phantom, converted and planned by nnU-Net once per test session: each
``nnUNetv2_plan_and_preprocess`` costs minutes on 2 cores, so the slow end-to-end modules share it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from nnunet_joint.reproduce import Progress, RunFolder, prepare_data


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> RunFolder:
    """A reproduce run folder with the tiny phantom, datasets 501-504 converted and preprocessed (2d).

    Tests must not modify it; ones that train copy it first with :func:`copy_run` or write only
    their own trainer folders under nnUNet_results.
    """
    run = RunFolder(tmp_path_factory.mktemp("tiny_run"))
    prepare_data(run, "tiny", 0, None, None, Progress(3, quiet=True))
    return run


def copy_run(source: RunFolder, dest: Path) -> RunFolder:
    """Copy a prepared run's data (phantom, raw, preprocessed, the data marker) to ``dest``."""
    for sub in ("phantom", "nnUNet_raw", "nnUNet_preprocessed", "logs"):
        shutil.copytree(source.root / sub, dest / sub)
    return RunFolder(dest)


@pytest.fixture(scope="session")
def tiny_reproduced(tiny_run, tmp_path_factory) -> RunFolder:
    """``nnunet_joint_reproduce --profile tiny`` run once on a copy of :func:`tiny_run`.

    Its trained folds (stage 1, the LiTS lesion model, the tiny profile's rows) are what the
    training, reproduce and report tests inspect; tests that need more train into its results.
    """
    from nnunet_joint.reproduce import main

    run = copy_run(tiny_run, tmp_path_factory.mktemp("reproduced") / "run")
    assert main(["--profile", "tiny", "--out", str(run.root), "--device", "cpu", "--quiet"]) == 0
    return run
