"""Plain nnU-Net from LiTS: nnU-Net's own U-Net pretrained on Dataset502 and fine-tuned on the joint labels."""

from __future__ import annotations

import json

import pytest
import torch

from conftest import copy_run
from nnunet_joint.checkpoints import safe_torch_load
from nnunet_joint.study.matrix import experiment
from nnunet_joint.names import DATASET_FOLDERS, DEFAULT_PLANS, PLAIN_TRAINER
from nnunet_joint.study.training import train_fold, trainer_dir

pytestmark = pytest.mark.slow  # real nnU-Net trainings on the tiny phantom run

BUDGET = {"nnUNet_joint_epochs": "1", "nnUNet_joint_iterations": "2"}


@pytest.fixture(scope="module")
def pretrained(tiny_run, tmp_path_factory):
    """A copy of the tiny run with plain nnU-Net trained on the LiTS lesion dataset (502, nnUNetPlans)."""
    run = copy_run(tiny_run, tmp_path_factory.mktemp("plain_lits"))
    fold = train_fold(run, PLAIN_TRAINER, 502, "0", "cpu", BUDGET, {}, DEFAULT_PLANS)
    return run, fold / "checkpoint_final.pth"


def test_the_row_is_in_the_vocabulary_with_carried_plans(pretrained):
    run, _ = pretrained
    row = experiment("nnunet", "LiTS", dataset=504)
    assert row.trainer == "nnUNetTrainer_JointBudget_LiTS" and row.plans("nnUNetSEResNet18Plans") == DEFAULT_PLANS
    plans = [json.loads((run.preprocessed / DATASET_FOLDERS[d] / f"{DEFAULT_PLANS}.json").read_text()) for d in (502, 504)]
    assert plans[0]["configurations"]["2d"] == plans[1]["configurations"]["2d"]  # 502's plans: the same network


def test_every_weight_but_the_segmentation_outputs_loads_from_the_lits_model(pretrained, monkeypatch):
    from nnunetv2.run.run_training import get_trainer_from_args

    run, checkpoint = pretrained
    for key, value in run.environment(nnUNet_joint_lits_checkpoint=str(checkpoint), **BUDGET).items():
        monkeypatch.setenv(key, value)
    trainer = get_trainer_from_args("504", "2d", 1, "nnUNetTrainer_JointBudget_LiTS", DEFAULT_PLANS,
                                    device=torch.device("cpu"))  # fold 1: the fine-tuning test trains fold 0
    trainer.initialize()
    fresh = {k: v.clone() for k, v in trainer.network.state_dict().items()}
    trainer.initialise_weights()
    loaded = trainer.network.state_dict()
    source = safe_torch_load(checkpoint)["network_weights"]

    outputs = [k for k in loaded if k.startswith("decoder.seg_layers.")]
    assert outputs and all(source[k].shape[0] == 3 and loaded[k].shape[0] == 5 for k in outputs if k.endswith("weight"))
    assert all(torch.equal(loaded[k], fresh[k]) for k in outputs)  # the output layers keep their fresh weights
    rest = [k for k in loaded if k not in outputs]
    assert any(k.startswith("encoder.stages.") for k in rest)
    assert all(torch.equal(loaded[k], source[k]) for k in rest)  # encoder and decoder: the LiTS model's
    assert not all(torch.equal(loaded[k], fresh[k]) for k in rest if k.startswith("encoder."))


def test_fine_tuning_on_the_joint_labels_runs_and_logs_the_transfer(pretrained):
    run, checkpoint = pretrained
    fold = train_fold(run, "nnUNetTrainer_JointBudget_LiTS", 504, "0", "cpu", BUDGET,
                      {"nnUNet_joint_lits_checkpoint": str(checkpoint)}, DEFAULT_PLANS, npz=True)
    assert fold == trainer_dir(run, "nnUNetTrainer_JointBudget_LiTS", 504, DEFAULT_PLANS) / "fold_0"
    log = "".join(p.read_text() for p in fold.glob("training_log_*.txt"))
    assert f"initialised from LiTS weights {checkpoint}" in log
    assert "0 missing in checkpoint, 0 shape mismatches" in log and " head tensors re-initialised" in log
    assert (fold / "checkpoint_final.pth").is_file() and (fold / "validation" / "summary.json").is_file()
