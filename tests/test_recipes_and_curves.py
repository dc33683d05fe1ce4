"""Learning-rate recipes (exact values per epoch) and the learning-curve counts of a validation batch."""

from __future__ import annotations

import json

import pytest
import torch

from nnunet_joint.training.curves import LEARNING_CURVE_FILE, LearningCurve, patch_counts
from nnunet_joint.training.recipes import RECIPES, Recipe, RecipeLRScheduler, recipe_name


def test_scratch_recipe_is_nnunets_poly_rule():
    recipe = RECIPES["scratch"]
    assert recipe.warmup_epochs(100) == 0
    for epoch in (0, 1, 50, 99):
        assert recipe.lr_at(epoch, 100) == pytest.approx(1e-2 * (1 - epoch / 100) ** 0.9)


def test_fine_tune_recipe_warms_up_linearly_then_decays_from_the_peak():
    recipe = RECIPES["fine-tune"]
    assert recipe.warmup_epochs(100) == 10 and recipe.warmup_epochs(5) == 1  # round half up: 0.5 -> 1
    assert [recipe.lr_at(e, 100) for e in range(3)] == pytest.approx([1e-3, 2e-3, 3e-3])
    assert recipe.lr_at(9, 100) == pytest.approx(1e-2)
    assert recipe.lr_at(10, 100) == pytest.approx(1e-2)  # the decay starts at the peak
    assert recipe.lr_at(55, 100) == pytest.approx(1e-2 * (1 - 45 / 90) ** 0.9)
    assert recipe_name("scratch") == "scratch" and recipe_name("LiTS") == recipe_name("ImageNet") == "fine-tune"


def test_scheduler_sets_every_group_and_follows_the_epoch_it_is_given():
    params = [torch.nn.Parameter(torch.zeros(1)), torch.nn.Parameter(torch.zeros(1))]
    optimizer = torch.optim.SGD([{"params": params[:1]}, {"params": params[1:]}], lr=1.0, momentum=0.99)
    scheduler = RecipeLRScheduler(optimizer, Recipe(peak_lr=0.1, warmup_fraction=0.5), num_epochs=4)
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([0.05, 0.05])  # epoch 0 of 2 warm-up epochs
    scheduler.step(3)  # nnU-Net steps with the current epoch, also after a resume
    assert [g["lr"] for g in optimizer.param_groups] == pytest.approx([0.1 * 0.5 ** 0.9] * 2)


def _logits(labels: torch.Tensor, classes: int) -> torch.Tensor:
    """One-hot logits whose argmax is ``labels`` (B, H, W)."""
    return torch.nn.functional.one_hot(labels, classes).permute(0, 3, 1, 2).float()


def test_patch_counts_by_hand():
    target = torch.tensor([[[1, 2], [2, 0]], [[1, 1], [1, 0]], [[4, 4], [1, 0]]])[:, None]  # 3 patches
    pred = torch.tensor([[[2, 3], [0, 0]], [[1, 2], [1, 0]], [[0, 0], [1, 0]]])
    counts = patch_counts(_logits(pred, 5), target, [0, 1, 2], None, joint=True)
    # lesion pixels: tp 1 ((0,0,1)), fp 2 ((0,0,0), (1,0,1)), fn 1 + 2
    assert (counts["tp"], counts["fp"], counts["fn"]) == (1, 2, 3)
    # typed patches: 0 (lesion: votes cyst 1, hem 1 -> tie -> cyst = right) and 2 (no predicted lesion: wrong)
    assert (counts["typed"], counts["correct"]) == (2, 1)
    head = torch.tensor([[0.0, 5.0, 0.0], [9.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    by_head = patch_counts(None, target, [0, 1, 2], head, joint=False)
    assert (by_head["typed"], by_head["correct"], by_head["tp"]) == (2, 1, 0)  # patch 2 right, patch 0 wrong


def test_learning_curve_rows_and_resume(tmp_path):
    curve = LearningCurve(tmp_path, "joint")
    for epoch, (tp, fp, fn, correct, typed) in enumerate([(1, 1, 0, 1, 2), (3, 0, 1, 2, 2)]):
        curve.start_epoch()
        curve.add({"tp": tp, "fp": fp, "fn": fn, "correct": correct, "typed": typed})
        curve.end_epoch(epoch, 10 * (epoch + 1), 1.0 - epoch / 10, 0.9, segments=True, types=True)
    data = json.loads((tmp_path / LEARNING_CURVE_FILE).read_text())
    assert data["framework"] == "joint"
    assert [(r["epoch"], r["iterations"]) for r in data["epochs"]] == [(0, 10), (1, 20)]
    assert [r["lesion_dice"] for r in data["epochs"]] == pytest.approx([2 / 3, 6 / 7])
    assert [r["type_accuracy"] for r in data["epochs"]] == [0.5, 1.0]
    resumed = LearningCurve(tmp_path, "joint")
    resumed.resume(current_epoch=1)  # a run continued from the checkpoint after epoch 0
    assert [r["epoch"] for r in resumed.epochs] == [0]
    resumed.start_epoch()
    assert resumed.end_epoch(1, 20, None, None, segments=False, types=False)["lesion_dice"] is None


def test_classifier_validation_steps_feed_its_learning_curve(tmp_path, monkeypatch):
    """The classifier replaces nnU-Net's validation_step; its type accuracy still reaches the curve:
    counted on the patches that show lesion, against each case's type, from the head's argmax."""
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    from nnunet_joint import LESION_TYPES, TRAINERS_DIR
    from nnunet_joint.network import SEResNetUNet
    from nnunet_joint.training.losses import ClassificationTargetLoss

    monkeypatch.setenv("nnUNet_extTrainer", str(TRAINERS_DIR))
    cls = recursive_find_trainer_class_by_name("nnUNetTrainerSEResNetCls")
    trainer = object.__new__(cls)  # what validation needs, without nnU-Net's dataset set-up
    torch.manual_seed(0)
    trainer.network = SEResNetUNet(1, 3, "seresnet18", num_cls_classes=3, segmentation=False)
    trainer.device, trainer.loss, trainer.output_folder = torch.device("cpu"), ClassificationTargetLoss(), tmp_path
    keys = ["a", "b", "c", "d"]
    trainer.dataset_json = {"lesion_types": dict(zip(keys, ["cyst", "metastasis", "hemangioma", "cyst"]))}
    data = torch.randn(4, 1, 64, 64)
    target = torch.ones(4, 1, 64, 64)
    target[:3, :, 20:30, 20:30] = 2  # d shows no lesion: not typed
    trainer.on_validation_epoch_start()
    trainer.validation_step({"data": data, "target": target, "keys": keys})
    with torch.no_grad():
        predicted = trainer.network.eval()(data).argmax(1)
    truth = torch.tensor([LESION_TYPES.index(t) for t in ["cyst", "metastasis", "hemangioma", "cyst"]])
    counts = trainer._learning_curve().counts
    assert counts["typed"] == 3 and counts["correct"] == int((predicted == truth)[:3].sum())
