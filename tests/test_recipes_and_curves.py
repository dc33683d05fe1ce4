"""Learning-rate recipes (exact values per epoch) and the learning-curve counts of a validation batch."""

from __future__ import annotations

import json

import pytest
import torch

from nnunet_joint.training.curves import LEARNING_CURVE_FILE, LearningCurve, patch_counts
from nnunet_joint import TRAINERS_DIR
from nnunet_joint.errors import InputError
from nnunet_joint.training.recipes import RECIPES, Recipe, RecipeLRScheduler


def test_poly_recipe_is_nnunets_poly_rule():
    recipe = RECIPES["poly"]
    assert recipe.warmup_epochs(100) == 0
    for epoch in (0, 1, 50, 99):
        assert recipe.lr_at(epoch, 100) == pytest.approx(1e-2 * (1 - epoch / 100) ** 0.9)


def test_warmup_recipe_warms_up_linearly_then_decays_from_the_peak():
    recipe = RECIPES["warmup-poly"]
    assert recipe.warmup_epochs(100) == 10 and recipe.warmup_epochs(5) == 1  # round half up: 0.5 -> 1
    assert [recipe.lr_at(e, 100) for e in range(3)] == pytest.approx([1e-3, 2e-3, 3e-3])
    assert recipe.lr_at(9, 100) == pytest.approx(1e-2)
    assert recipe.lr_at(10, 100) == pytest.approx(1e-2)  # the decay starts at the peak
    assert recipe.lr_at(55, 100) == pytest.approx(1e-2 * (1 - 45 / 90) ** 0.9)


SERESNET_PLANS = {
    "plans_name": "nnUNetSEResNet18Plans",
    "configurations": {"2d": {"data_identifier": "nnUNetSEResNet18Plans_2d", "patch_size": [64, 64], "batch_size": 2,
                              "architecture": {"network_class_name": "nnunet_joint.network.unet.SEResNetUNet",
                                               "arch_kwargs": {"encoder_name": "seresnet18",
                                                               "strides": [[1, 1]] + [[2, 2]] * 5,
                                                               "decoder_channels": [16, 32, 64, 128, 256],
                                                               "n_conv_per_stage_decoder": 2},
                                               "_kw_requires_import": []}}}}
DATASETS = {"seg": ("Dataset503_ShebaSeg", {"background": 0, "liver": 1, "lesion": 2}),
            "joint": ("Dataset504_ShebaJoint", {"background": 0, "liver": 1, "cyst": 2, "hemangioma": 3, "metastasis": 4})}


def _trainer(name: str, labels_of: str):
    """A real trainer object as nnUNetv2_train builds it (nothing is loaded or trained)."""
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    dataset, labels = DATASETS[labels_of]
    plans = {**SERESNET_PLANS, "dataset_name": dataset, "continue_training": False}
    dataset_json = {"labels": labels, "channel_names": {"0": "CT"}, "file_ending": ".nii.gz"}
    return recursive_find_trainer_class_by_name(name)(plans, "2d", 0, dataset_json, torch.device("cpu"))


def _learning_rates(trainer) -> list[float]:
    """The rate the trainer's own optimizer and scheduler set in each epoch (nnU-Net steps with the epoch)."""
    trainer.network = torch.nn.Linear(1, 1)
    optimizer, scheduler = trainer.configure_optimizers()
    rates = []
    for epoch in range(trainer.num_epochs):
        scheduler.step(epoch)
        rates.append(optimizer.param_groups[0]["lr"])
    return rates


@pytest.mark.parametrize("recipe", [None, "warmup-poly"])
def test_a_scratch_row_and_its_lits_row_get_the_same_recipe(tmp_path, monkeypatch, recipe):
    monkeypatch.setenv("nnUNet_extTrainer", str(TRAINERS_DIR))
    monkeypatch.setenv("nnUNet_results", str(tmp_path))
    monkeypatch.setenv("nnUNet_joint_epochs", "20")
    if recipe:
        monkeypatch.setenv("nnUNet_joint_lr_recipe", recipe)
    # by hand: nnU-Net's poly rule, or 2 warm-up epochs (10 % of 20) to 1e-2 and poly over the other 18
    expected = ([1e-2 * (1 - e / 20) ** 0.9 for e in range(20)] if not recipe else
                [5e-3, 1e-2] + [1e-2 * (1 - (e - 2) / 18) ** 0.9 for e in range(2, 20)])
    record = {"recipe": recipe or "poly", "peak_lr": 1e-2, "warmup_fraction": 0.1 if recipe else 0.0,
              "warmup_epochs": 2 if recipe else 0}
    rows = [(name, labels) for base, labels in (("nnUNetTrainerSEResNetSeg", "seg"), ("nnUNetTrainerSEResNetCls", "seg"),
                                                ("nnUNetTrainerYNet", "seg"), ("nnUNetTrainerJoint", "joint"))
            for name in (base, f"{base}_LiTS", f"{base}_LiTS_HierFreeze", f"{base}_ImageNet")]
    rows += [("nnUNetTrainer_JointBudget", "joint"), ("nnUNetTrainer_JointBudget_LiTS", "joint")]  # plain nnU-Net
    for name, labels in rows:
        trainer = _trainer(name, labels)
        assert _learning_rates(trainer) == pytest.approx(expected), name
        if hasattr(trainer, "record"):  # ours: joint_config.json says which recipe (and a head's own scale)
            head = {"head_lr_scale": 0.1} if trainer.num_cls_classes else {}
            assert trainer.record["learning_rate"] == {**record, **head}, name


class _WithHead(torch.nn.Module):
    """A stand-in network with a classification head where the SE-ResNet U-Net has it (``cls_head.*``)."""

    def __init__(self):
        super().__init__()
        self.encoder = torch.nn.Conv2d(1, 2, 3)
        self.cls_head = torch.nn.Sequential(torch.nn.Linear(2, 3))


@pytest.mark.parametrize("scale", [None, "0.5"])
def test_a_classification_head_learns_at_its_own_fraction_of_the_recipe(tmp_path, monkeypatch, scale):
    """Classifier and Y-Net: the head's parameters (and only they) form a group at the recipe's rate times
    the scale (0.1 by default); the joint model, which has no head, keeps one group at the recipe's rate."""
    monkeypatch.setenv("nnUNet_extTrainer", str(TRAINERS_DIR))
    monkeypatch.setenv("nnUNet_results", str(tmp_path))
    monkeypatch.setenv("nnUNet_joint_epochs", "10")
    if scale:
        monkeypatch.setenv("nnUNet_joint_head_lr_scale", scale)
    factor = 0.5 if scale else 0.1
    poly = [1e-2 * (1 - e / 10) ** 0.9 for e in range(10)]  # by hand: nnU-Net's rule
    for name, labels in (("nnUNetTrainerSEResNetCls_LiTS", "seg"), ("nnUNetTrainerYNet", "seg"),
                         ("nnUNetTrainerJoint", "joint")):
        trainer = _trainer(name, labels)
        trainer.network = _WithHead()
        optimizer, scheduler = trainer.configure_optimizers()
        head = {id(p) for p in trainer.network.cls_head.parameters()}
        groups = [{id(p) for p in g["params"]} for g in optimizer.param_groups]
        if trainer.num_cls_classes:
            assert groups == [{id(p) for p in trainer.network.encoder.parameters()}, head], name
        else:
            assert groups == [{id(p) for p in trainer.network.parameters()}], name
        assert all(g["momentum"] == 0.99 and g["nesterov"] and g["weight_decay"] == 3e-5
                   for g in optimizer.param_groups)  # nnU-Net's SGD in every group
        for epoch in (0, 4, 9):
            scheduler.step(epoch)
            assert optimizer.param_groups[0]["lr"] == pytest.approx(poly[epoch])
            if trainer.num_cls_classes:
                assert optimizer.param_groups[1]["lr"] == pytest.approx(factor * poly[epoch]), name


def test_a_head_row_checkpoint_of_one_optimiser_group_is_refused_with_its_reason(tmp_path, monkeypatch):
    """A classifier checkpoint saved when the head shared the encoder's learning rate (one SGD group) loads its
    weights (``--val`` validates it) but its training is not resumed under the new recipe: the error names the
    file and what to do, not torch's bare ValueError."""
    monkeypatch.setenv("nnUNet_extTrainer", str(TRAINERS_DIR))
    monkeypatch.setenv("nnUNet_results", str(tmp_path))
    trainer = _trainer("nnUNetTrainerSEResNetCls_LiTS", "seg")
    trainer.network = _WithHead()
    trainer.optimizer, trainer.lr_scheduler = trainer.configure_optimizers()
    trainer.was_initialized = True  # nothing else of initialize() is needed to load
    earlier = torch.optim.SGD(trainer.network.parameters(), 1e-2, momentum=0.99, nesterov=True)  # one group
    checkpoint = {"network_weights": trainer.network.state_dict(), "optimizer_state": earlier.state_dict(),
                  "grad_scaler_state": None, "logging": trainer.logger.get_checkpoint(), "_best_ema": None,
                  "current_epoch": 3, "init_args": trainer.my_init_kwargs,
                  "trainer_name": "nnUNetTrainerSEResNetCls_LiTS", "inference_allowed_mirroring_axes": (0, 1)}
    path = tmp_path / "checkpoint_latest.pth"
    torch.save(checkpoint, path)
    weights = {k: v.clone() for k, v in trainer.network.state_dict().items()}
    with torch.no_grad():
        for p in trainer.network.parameters():
            p.zero_()
    trainer.load_checkpoint(str(path))  # what --val does
    assert all(torch.equal(v, weights[k]) for k, v in trainer.network.state_dict().items())
    with pytest.raises(RuntimeError, match=f"^{path}: its optimiser state has another number of parameter groups"):
        trainer.on_train_start()  # what --c does next
    trainer.earlier_optimiser_state = None
    torch.save({**checkpoint, "optimizer_state": trainer.optimizer.state_dict()}, path)  # this build's: loads
    trainer.load_checkpoint(str(path))
    assert trainer.current_epoch == 3


def test_a_head_learning_rate_scale_that_is_not_positive_is_refused(monkeypatch):
    from nnunet_joint.training.settings import head_lr_scale

    for raw in ("0", "-0.1", "fast"):
        monkeypatch.setenv("nnUNet_joint_head_lr_scale", raw)
        with pytest.raises(InputError, match="nnUNet_joint_head_lr_scale"):
            head_lr_scale()


def test_an_unknown_recipe_is_refused(monkeypatch):
    from nnunet_joint.training.settings import recipe_choice

    monkeypatch.setenv("nnUNet_joint_lr_recipe", "fine-tune")
    with pytest.raises(InputError, match="must be one of poly, warmup-poly, got 'fine-tune'"):
        recipe_choice()


@pytest.mark.parametrize("fused", [None, "0"])
def test_cpu_rows_take_nnunets_sgd_steps_fused_unless_switched_off(tmp_path, monkeypatch, fused):
    """Ours and the plain rows step like nnU-Net's own SGD (momentum 0.99, Nesterov, weight decay 3e-5,
    PyTorch's per-tensor loop, built here independently), fused by default, unfused with the switch at 0."""
    import copy

    monkeypatch.setenv("nnUNet_extTrainer", str(TRAINERS_DIR))
    monkeypatch.setenv("nnUNet_results", str(tmp_path))
    if fused:
        monkeypatch.setenv("nnUNet_joint_fused_sgd", fused)
    torch.manual_seed(0)
    start = torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), torch.nn.ReLU(), torch.nn.Conv2d(4, 2, 3))
    images = torch.randn(5, 3, 1, 12, 12)
    for name in ("nnUNetTrainerJoint", "nnUNetTrainer_JointBudget"):
        trainer = _trainer(name, "joint")
        trainer.network = copy.deepcopy(start)
        optimizer, _ = trainer.configure_optimizers()
        reference = copy.deepcopy(start)
        nnunet_sgd = torch.optim.SGD(reference.parameters(), 1e-2, weight_decay=3e-5, momentum=0.99, nesterov=True,
                                     foreach=False)
        for x in images:
            for network, opt in ((trainer.network, optimizer), (reference, nnunet_sgd)):
                opt.zero_grad(set_to_none=True)
                network(x).square().mean().backward()
                opt.step()
        assert bool(optimizer.param_groups[0]["fused"]) is (fused is None), name
        assert not torch.equal(reference[0].weight, start[0].weight)  # the steps moved the weights
        for ours, theirs in zip(trainer.network.parameters(), reference.parameters()):
            torch.testing.assert_close(ours, theirs, rtol=0, atol=1e-6)
        if hasattr(trainer, "record"):  # ours: joint_config.json says whether the step was fused
            assert trainer.record["fused_sgd"] is (fused is None)
            assert trainer.record["environment"]["nnUNet_joint_fused_sgd"] == fused


def test_an_unknown_fused_sgd_value_is_refused(monkeypatch):
    from nnunet_joint.training.settings import fused_sgd

    monkeypatch.setenv("nnUNet_joint_fused_sgd", "yes")
    optimizer = torch.optim.SGD(torch.nn.Linear(1, 1).parameters(), 1e-2)
    with pytest.raises(InputError, match="must be 0 or 1, got 'yes'"):
        fused_sgd(optimizer, torch.device("cpu"))


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


def test_fused_sgd_steps_like_the_loop_when_tensors_get_their_first_gradient_late(monkeypatch):
    """HierUnfreeze: encoder tensors frozen for the first steps, then trained. The fused kernel must take
    them (it fails on a mix of tensors with and without momentum buffers) and step as nnU-Net's loop does."""
    from nnunet_joint.training.settings import fused_sgd

    monkeypatch.delenv("nnUNet_joint_fused_sgd", raising=False)
    torch.manual_seed(0)
    models = [torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 2)) for _ in range(2)]
    models[1].load_state_dict(models[0].state_dict())
    kwargs = dict(lr=0.01, weight_decay=3e-5, momentum=0.99, nesterov=True)  # nnU-Net's SGD
    loop = torch.optim.SGD(models[0].parameters(), **kwargs)
    fused = fused_sgd(torch.optim.SGD(models[1].parameters(), **kwargs), torch.device("cpu"))
    assert fused.param_groups[0]["fused"]
    data = torch.randn(5, 16, 4)
    for step in range(5):
        for model, optimizer in zip(models, (loop, fused)):
            model[0].requires_grad_(step >= 2)  # the first layer unfrozen from step 2
            optimizer.zero_grad(set_to_none=True)
            model(data[step]).square().mean().backward()
            optimizer.step()
    for a, b in zip(models[0].parameters(), models[1].parameters()):
        assert torch.allclose(a, b, atol=1e-6)
    assert not torch.equal(models[0][0].weight, models[1][0].weight.new_zeros(8, 4))
