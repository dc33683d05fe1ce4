"""Shared fixtures. The tiny phantom, converted and planned by nnU-Net once per test session: each
``nnUNetv2_plan_and_preprocess`` costs minutes on 2 cores, so the slow end-to-end modules share it.

The suite runs on two pytest-xdist workers, one test module per worker at a time (``addopts`` in
pyproject.toml): nnU-Net's start-up and the worker pools it spawns are mostly single-threaded, so
two workers shorten the wall time on 2 cores. The two prepared runs below are built once for all
workers (a file lock, the pattern pytest-xdist documents). ``--dist loadfile`` rather than
``loadgroup``: loadgroup does not group under pytest 9.2 (pytest-xdist issue #1386). Modules are
handed out in the order :func:`pytest_collection_modifyitems` sets (``--no-loadscope-reorder``): the
longest chain first (tiny run -> tiny reproduce -> training tests), then the fast modules on the
other worker while that chain builds, then the modules that only wait for the shared runs.
"""

from __future__ import annotations

import os

# Before torch is imported anywhere in the worker: idle OpenMP threads sleep instead of spinning, so
# two test workers (and the nnU-Net processes they start, which inherit it) share 2 cores without
# slowing each other down tenfold (nnunet_joint.cpu).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import shutil  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Callable  # noqa: E402

import pytest  # noqa: E402
from filelock import FileLock  # noqa: E402

from nnunet_joint.study.data import prepare_data  # noqa: E402
from nnunet_joint.study.folder import RunFolder  # noqa: E402


#: Module order for the xdist scheduler (unlisted modules: 1).
MODULE_ORDER = {"test_training_e2e.py": 0, "test_convert_sheba.py": 2, "test_predict_e2e.py": 2,
                "test_reproduce_e2e.py": 3, "test_slurm.py": 3}


def pytest_collection_modifyitems(items) -> None:
    items.sort(key=lambda item: MODULE_ORDER.get(item.path.name, 1))  # stable: order within a module kept


def built_once(tmp_path_factory, worker_id: str, name: str, build: Callable[[Path], None]) -> Path:
    """``build(folder)`` once per test session, whatever the number of xdist workers.

    ``.complete`` is written after ``build`` returns: a worker never uses a half-built folder, and a
    failed build is redone from scratch by the next worker that asks.
    """
    if worker_id == "master":  # not under xdist
        base = tmp_path_factory.getbasetemp()
    else:  # the session's temp root, shared by its workers
        base = tmp_path_factory.getbasetemp().parent
    folder = base / name
    with FileLock(str(folder) + ".lock"):
        if not (folder / ".complete").is_file():
            if folder.exists():
                shutil.rmtree(folder)
            folder.mkdir()
            build(folder)
            (folder / ".complete").write_text("built\n")
    return folder


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, worker_id) -> RunFolder:
    """A reproduce run folder with the tiny phantom, datasets 501-504 converted and preprocessed (2d),
    the Sheba ones on oracle crops (no stage 1 is trained here).

    Tests must not modify it; ones that train copy it first with :func:`copy_run`.
    """
    def build(folder: Path) -> None:
        prepare_data(RunFolder(folder), "tiny", 0)

    return RunFolder(built_once(tmp_path_factory, worker_id, "tiny_run", build))


def copy_run(source: RunFolder, dest: Path, targets: bool = True) -> RunFolder:
    """Copy a prepared run's data (phantom, raw, preprocessed, the step markers) to ``dest``.

    ``targets=False`` copies the LiTS side only (501/502, planned), so that a reproduce run crops
    the Sheba slices itself with its stage-1 model (the cascade) instead of the oracle crops here.
    """
    from nnunet_joint.names import DATASET_FOLDERS

    sheba = {DATASET_FOLDERS[503], DATASET_FOLDERS[504], "targets.done"}
    ignore = None if targets else (lambda _dir, names: [n for n in names if n in sheba])
    for sub in ("phantom", "nnUNet_raw", "nnUNet_preprocessed", "logs"):
        shutil.copytree(source.root / sub, dest / sub, ignore=ignore)
    return RunFolder(dest)


@pytest.fixture(scope="session")
def tiny_reproduced(tiny_run, tmp_path_factory, worker_id) -> RunFolder:
    """``nnunet_joint_reproduce --profile tiny`` run once on a copy of :func:`tiny_run`.

    Its trained folds (stage 1, the LiTS lesion model, the tiny profile's rows) are what the
    training and reproduce tests inspect; test_training_e2e (one module, so one worker) trains
    further trainer folders into its results.
    """
    from nnunet_joint.reproduce import main

    def build(folder: Path) -> None:
        run = copy_run(tiny_run, folder / "run", targets=False)  # reproduce crops the Sheba slices by stage 1
        assert main(["--profile", "tiny", "--out", str(run.root), "--device", "cpu", "--quiet"]) == 0

    return RunFolder(built_once(tmp_path_factory, worker_id, "tiny_reproduced", build) / "run")
