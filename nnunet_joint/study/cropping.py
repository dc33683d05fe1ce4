"""The study's crops step: the Sheba slices cut by stage 1 (the cascade, the papers' protocol) or by their
reference masks (``--oracle-crops``) into the Sheba datasets 503/504.

The crops are current when the ``targets`` marker holds this study's settings and, in the cascade,
``crops.json`` names the stage-1 checkpoint there now: a retrained stage 1 means new crops, and the
rows trained on the old ones are moved aside (they train again).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

from nnunet_joint.errors import warn
from nnunet_joint.io import file_sha256
from nnunet_joint.names import DATASET_FOLDERS, DEFAULT_PLANS, JOINT_DATASET, LIVER_DATASET, PLAIN_TRAINER, SEG_DATASET
from nnunet_joint.study.data import prepare_targets, targets_settings
from nnunet_joint.study.folder import marked, marker
from nnunet_joint.study.training import trainer_dir

if TYPE_CHECKING:
    from nnunet_joint.study.steps import Study


def liver_model(study: Study) -> Path | None:
    """The stage-1 results folder that crops the Sheba slices (``None``: oracle crops)."""
    return None if study.oracle_crops else trainer_dir(study.run, PLAIN_TRAINER, LIVER_DATASET, DEFAULT_PLANS)


def stage1_sha256(study: Study) -> str | None:
    checkpoint = study.stage1().fold_dir(study.run) / "checkpoint_final.pth"
    return file_sha256(checkpoint) if checkpoint.is_file() else None


def crops_stage1(study: Study) -> str | None:
    """The stage-1 checkpoint (by content) that cut the current crops, from ``crops.json``."""
    try:
        crops_file = study.run.raw / DATASET_FOLDERS[JOINT_DATASET] / "crops.json"
        crops = json.loads(crops_file.read_text(encoding="utf-8"))
        return (crops.get("stage1_checkpoint_sha256") or {}).get("fold_0")
    except (OSError, ValueError, AttributeError):
        return None


def crops_current(study: Study) -> bool:
    """The Sheba datasets exist with this study's settings and, in the cascade, were cut by the stage-1
    checkpoint there now (a retrained stage 1 means the crops must be made again)."""
    if not marked(study.run, "targets", targets_settings(liver_model(study), study.profile.encoder)):
        return False
    return study.oracle_crops or crops_stage1(study) == stage1_sha256(study)


def make_crops(study: Study) -> None:
    """Cut the Sheba slices; rows trained on crops of another stage 1 are moved aside first, so that
    nothing trained on the old crops is mixed with the new ones (they train again)."""
    if crops_current(study):  # only a step before it ran again, and stage 1 did not change
        return
    old = crops_stage1(study)
    if not study.oracle_crops and old is not None and old != stage1_sha256(study):
        aside = study.run.root / "replaced" / f"crops_of_stage1_{old[:12]}"
        for dataset in (SEG_DATASET, JOINT_DATASET):
            trained = study.run.results / DATASET_FOLDERS[dataset]
            if trained.exists():
                aside.mkdir(parents=True, exist_ok=True)
                os.replace(trained, aside / trained.name)
        warn(study.run.raw / DATASET_FOLDERS[JOINT_DATASET] / "crops.json",
             f"cut by another stage-1 checkpoint (sha256 {old[:12]}...); cropping again with the current one"
             + (f", the rows trained on the old crops moved to {aside}" if aside.exists() else ""))
    marker(study.run, "targets").unlink(missing_ok=True)
    prepare_targets(study.run, study.sources()[1], study.profile.encoder, liver_model(study), study.threads_per_job())

