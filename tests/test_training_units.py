"""Fast tests of the trainer machinery: losses, class weights, budget, strides, and nnU-Net's trainer lookup."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from nnunet_joint import TRAINERS_DIR
from nnunet_joint.errors import InputError
from nnunet_joint.training import settings
from nnunet_joint.training.losses import (CLASS_WEIGHT_RULES, ClassificationTargetLoss, YNetLoss, lesion_in_patch,
                                          inverse_frequency_weights, label_frequencies, lesion_balanced_weights,
                                          set_ce_class_weights)



def test_inverse_frequency_weights_exact():
    w = inverse_frequency_weights(np.array([60, 30, 10]))
    # 1/f = [100/60, 100/30, 100/10] = [5/3, 10/3, 10]; mean 5 -> [1/3, 2/3, 2]
    np.testing.assert_allclose(w, [1 / 3, 2 / 3, 2.0])
    assert w[2] / w[0] == pytest.approx(6.0)  # inversely proportional: 60/10


def test_inverse_frequency_weights_absent_class_gets_largest_present_weight():
    np.testing.assert_allclose(inverse_frequency_weights(np.array([50, 50, 0])), [1.0, 1.0, 1.0])
    with pytest.raises(ValueError):
        inverse_frequency_weights(np.zeros(3))


def test_lesion_balanced_weights_by_hand():
    # background 1000, liver 800, cyst 20, hemangioma 30, metastasis 50: rest 1800, lesion 100
    counts = np.array([1000, 800, 20, 30, 50])
    # cap 1: the lesion as a whole weighs 1 per voxel; each type's total weight is 100 / 3
    np.testing.assert_allclose(lesion_balanced_weights(counts, 1.0), [1, 1, 100 / 60, 100 / 90, 100 / 150])
    # cap 5 (rest / lesion = 18 > 5): five times that
    np.testing.assert_allclose(lesion_balanced_weights(counts, 5.0), [1, 1, 500 / 60, 500 / 90, 500 / 150])
    w = lesion_balanced_weights(counts, 5.0)
    assert (w[2:] * counts[2:]).sum() == pytest.approx(5 * 100)  # lesion mass weighs 5x per voxel
    np.testing.assert_allclose(w[2:] * counts[2:], [500 / 3] * 3)  # types balanced among themselves


def test_lesion_balanced_weights_cap_absent_type_and_binary_labels():
    # more lesion than rest: the factor is rest / lesion = 20 / 40, below the cap; hemangioma absent
    np.testing.assert_allclose(lesion_balanced_weights(np.array([10, 10, 30, 0, 10]), 1.0),
                               [1, 1, 0.5 * 40 / 60, 1.0, 0.5 * 40 / 20])
    # the segmentation baseline's labels (background, liver, lesion)
    np.testing.assert_allclose(lesion_balanced_weights(np.array([900, 90, 10]), 5.0), [1, 1, 5])
    np.testing.assert_allclose(lesion_balanced_weights(np.array([900, 100, 0]), 5.0), [1, 1, 1])
    with pytest.raises(ValueError):
        lesion_balanced_weights(np.zeros(5), 1.0)


def test_a_very_rare_type_weighs_at_most_three_times_the_lesion_cap():
    # cyst 1 voxel of 101 lesion voxels: balanced it would weigh 5 * 101 / 3 = 168; the bound is 15
    w = lesion_balanced_weights(np.array([5000, 5000, 1, 50, 50]), 5.0)
    np.testing.assert_allclose(w, [1, 1, 15, 5 * 101 / 150, 5 * 101 / 150])


def test_class_weight_rules_by_name():
    counts = np.array([530, 450, 4, 5, 12])
    np.testing.assert_allclose(CLASS_WEIGHT_RULES["inverse-frequency"](counts), inverse_frequency_weights(counts))
    np.testing.assert_allclose(CLASS_WEIGHT_RULES["none"](counts), np.ones(5))
    # rest 980, lesion 21: the lesion weighs 5x (the default's cap) or 1x per voxel, split equally over the types
    np.testing.assert_allclose(CLASS_WEIGHT_RULES["lesion-balanced"](counts), [1, 1, 105 / 12, 105 / 15, 105 / 36])
    np.testing.assert_allclose(CLASS_WEIGHT_RULES["lesion-balanced-x1"](counts), [1, 1, 21 / 12, 21 / 15, 21 / 36])


def test_class_weight_rule_from_environment(monkeypatch):
    monkeypatch.delenv(settings.ENV_CLASS_WEIGHTS, raising=False)
    assert settings.class_weight_choice() == "lesion-balanced"
    monkeypatch.setenv(settings.ENV_CLASS_WEIGHTS, "inverse-frequency")
    assert settings.class_weight_choice() == "inverse-frequency"
    monkeypatch.setenv(settings.ENV_CLASS_WEIGHTS, "inverse")
    with pytest.raises(InputError, match="lesion-balanced"):
        settings.class_weight_choice()


def test_classification_loss_keeps_the_mean_of_the_training_steps_for_the_learning_curve():
    loss = ClassificationTargetLoss()
    logits = torch.tensor([[2.0, 0.0, 0.0], [0.0, 1.0, 0.0]], requires_grad=True)
    lesion = torch.zeros(2, 1, 4, 4)
    lesion[:, :, 0, 0] = 2  # both patches show lesion
    loss.cls_target = torch.tensor([0, 2])
    first = loss(logits, lesion)  # a training step: kept
    expected_first = F.cross_entropy(logits, loss.cls_target).item()
    loss.cls_target = torch.tensor([1, 1])
    second = loss(logits, lesion)
    expected_second = F.cross_entropy(logits, loss.cls_target).item()
    with torch.no_grad():  # nnU-Net's validation: not a training loss
        loss(logits, lesion)
    loss(logits, torch.zeros(2, 1, 4, 4))  # no patch shows lesion: no typed sample, nothing kept
    assert (first.item(), second.item()) == pytest.approx((expected_first, expected_second))
    total, steps = loss.epoch_training_loss()
    assert (total, steps) == (pytest.approx(expected_first + expected_second), 2)
    assert loss.epoch_training_loss() == (0.0, 0)  # the next epoch starts empty


def test_label_frequencies_ignores_negative_padding_label():
    segs = [np.array([[0, 0, 1], [2, -1, 2]]), np.array([[4, 4, -1]])]
    np.testing.assert_array_equal(label_frequencies(segs, 5), [2, 1, 2, 0, 2])


def test_weighted_ce_inside_nnunet_loss_matches_torch():
    from nnunetv2.training.loss.compound_losses import DC_and_CE_loss
    from nnunetv2.training.loss.deep_supervision import DeepSupervisionWrapper

    torch.manual_seed(0)
    loss = DeepSupervisionWrapper(DC_and_CE_loss({"batch_dice": False, "smooth": 1e-5, "do_bg": False}, {},
                                                 weight_ce=1, weight_dice=0), [1.0])
    weights = torch.tensor([0.2, 1.0, 3.0])
    set_ce_class_weights(loss, weights)
    logits = torch.randn(2, 3, 4, 4)
    target = torch.randint(0, 3, (2, 1, 4, 4)).float()
    expected = F.cross_entropy(logits, target[:, 0].long(), weight=weights)
    assert loss([logits], [target]).item() == pytest.approx(expected.item(), rel=1e-6)
    unweighted = F.cross_entropy(logits, target[:, 0].long())
    assert abs(expected.item() - unweighted.item()) > 1e-3  # the weights really change the loss


def _patches_with_lesion(flags: list[bool]) -> torch.Tensor:
    """(B, 1, 4, 4) segmentation targets: liver everywhere, one lesion pixel where the flag is set."""
    target = torch.ones(len(flags), 1, 4, 4)
    for i, flag in enumerate(flags):
        if flag:
            target[i, 0, 1, 2] = 2
    return target


def test_ynet_loss_is_lambda_mix_of_seg_and_cls_on_lesion_patches_only():
    torch.manual_seed(0)
    logits = torch.randn(4, 3)
    types = torch.tensor([0, 2, 1, 2])
    seg_loss = lambda out, tgt: (out - tgt).abs().mean()  # noqa: E731 - any seg loss
    loss = YNetLoss(seg_loss, lam=0.3, logits_of=lambda: logits)
    loss.cls_target = types
    target = _patches_with_lesion([True, False, True, False])  # samples 1 and 3 show only liver
    by_hand = -(torch.log_softmax(logits[0], 0)[0] + torch.log_softmax(logits[2], 0)[1]).item() / 2
    seg = (torch.ones_like(target) * 3 - target).abs().mean().item()
    assert loss(torch.ones_like(target) * 3, target).item() == pytest.approx(0.3 * seg + 0.7 * by_hand, rel=1e-6)
    assert loss.cls_loss.last_counts == (2, 4)
    # deep supervision: the target is a list, the full-resolution one decides
    assert lesion_in_patch([target, target[:, :, ::2, ::2] * 0]).tolist() == [True, False, True, False]


def test_classification_loss_masks_patches_without_lesion_and_keeps_a_graph_when_none_has():
    logits = torch.randn(3, 3, requires_grad=True)
    loss = ClassificationTargetLoss()
    loss.cls_target = torch.tensor([0, 1, 2])
    masked = loss(logits, _patches_with_lesion([False, True, False]))
    assert masked.item() == pytest.approx(F.cross_entropy(logits[1:2], torch.tensor([1])).item(), rel=1e-6)
    none = loss(logits, _patches_with_lesion([False, False, False]))
    assert none.item() == 0.0 and loss.last_counts == (0, 3)
    none.backward()  # a batch without lesion patches still steps (a zero gradient)
    assert torch.equal(logits.grad, torch.zeros_like(logits))
    assert loss(logits).item() == pytest.approx(F.cross_entropy(logits, torch.tensor([0, 1, 2])).item(), rel=1e-6)


def test_classification_loss_needs_a_target():
    with pytest.raises(RuntimeError, match="not set"):
        ClassificationTargetLoss()(torch.zeros(1, 3))


def test_budget_from_environment(monkeypatch):
    monkeypatch.setenv(settings.ENV_EPOCHS, "7")
    monkeypatch.setenv(settings.ENV_ITERATIONS, "12")
    b = settings.Budget.from_env()
    assert (b.epochs, b.iterations_per_epoch) == (7, 12)
    assert settings.Budget.val_iterations(12) == 2
    assert settings.Budget.val_iterations(250) == 50
    assert settings.Budget.val_iterations(1000) == 50
    assert settings.Budget.val_iterations(3) == 1
    monkeypatch.setenv(settings.ENV_EPOCHS, "zero")
    with pytest.raises(InputError, match=settings.ENV_EPOCHS):
        settings.Budget.from_env()


def test_max_batch_size_caps_the_plans_batch_and_keeps_a_smaller_one(monkeypatch):

    from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager

    monkeypatch.setenv(settings.ENV_MAX_BATCH, "12")
    for planned, trained in ((64, 12), (6, 6)):
        trainer = SimpleNamespace(configuration_manager=ConfigurationManager({"architecture": {}, "batch_size": planned}))
        settings.Budget.from_env().apply(trainer)
        assert trainer.configuration_manager.batch_size == trained
    monkeypatch.setenv(settings.ENV_MAX_BATCH, "0")
    with pytest.raises(InputError, match=settings.ENV_MAX_BATCH):
        settings.Budget.from_env()


def test_a_budgeted_run_saves_its_latest_checkpoint_every_tenth_never_less_often_than_nnunet(monkeypatch):

    from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager

    # epochs -> save_every: a tenth (50 -> 5); at least every epoch; nnU-Net's 50 kept for long runs
    for epochs, every in ((50, 5), (40, 4), (5, 1), (1, 1), (1000, 50), (2000, 50)):
        monkeypatch.setenv(settings.ENV_EPOCHS, str(epochs))
        trainer = SimpleNamespace(save_every=50, configuration_manager=ConfigurationManager({"architecture": {}, "batch_size": 2}))
        settings.Budget.from_env().apply(trainer)
        assert (trainer.num_epochs, trainer.save_every) == (epochs, every)
    monkeypatch.delenv(settings.ENV_EPOCHS)
    trainer = SimpleNamespace(save_every=50, configuration_manager=ConfigurationManager({"architecture": {}, "batch_size": 2}))
    settings.Budget.from_env().apply(trainer)
    assert trainer.save_every == 50  # no budget: nnU-Net's own


def test_validation_mirroring_switch(monkeypatch):
    assert settings.validation_mirror_axes((0, 1)) == (0, 1)  # unset: nnU-Net's
    monkeypatch.setenv(settings.ENV_VAL_MIRRORING, "0")
    assert settings.validation_mirror_axes((0, 1)) is None
    monkeypatch.setenv(settings.ENV_VAL_MIRRORING, "1")
    assert settings.validation_mirror_axes((0, 1)) == (0, 1)
    monkeypatch.setenv(settings.ENV_VAL_MIRRORING, "no")
    with pytest.raises(InputError, match=settings.ENV_VAL_MIRRORING):
        settings.validation_mirror_axes((0, 1))


def test_final_validation_now_or_deferred(monkeypatch):
    """Unset or 1: nnU-Net validates right after training; 0: the trainer says in its log that it left the
    validation to a later --val, after setting the mirroring axes that run will use."""
    logged = []
    trainer = SimpleNamespace(inference_allowed_mirroring_axes=(0, 1), print_to_log_file=logged.append)
    monkeypatch.delenv(settings.ENV_FINAL_VALIDATION, raising=False)
    assert settings.prepare_final_validation(trainer) is True and logged == []
    monkeypatch.setenv(settings.ENV_FINAL_VALIDATION, "0")
    monkeypatch.setenv(settings.ENV_VAL_MIRRORING, "0")
    assert settings.prepare_final_validation(trainer) is False
    assert trainer.inference_allowed_mirroring_axes is None and "--val" in logged[0]
    monkeypatch.setenv(settings.ENV_FINAL_VALIDATION, "later")
    with pytest.raises(InputError, match=settings.ENV_FINAL_VALIDATION):
        settings.prepare_final_validation(trainer)


def test_lambda_validation(monkeypatch):
    monkeypatch.setenv(settings.ENV_LAMBDA, "1.5")
    with pytest.raises(InputError, match=r"\[0, 1\]"):
        settings.lambda_from_env()


def test_seed_from_environment_makes_fresh_weights_repeatable(monkeypatch):
    monkeypatch.setenv(settings.ENV_SEED, "3")
    assert settings.apply_seed() == 3
    first = (torch.nn.Conv2d(1, 4, 3).weight.detach().clone(), np.random.rand(3))
    torch.manual_seed(99)  # something else drew in between
    np.random.seed(99)
    settings.apply_seed()
    second = (torch.nn.Conv2d(1, 4, 3).weight.detach().clone(), np.random.rand(3))
    assert torch.equal(first[0], second[0]) and np.array_equal(first[1], second[1])
    monkeypatch.setenv(settings.ENV_SEED, "4")
    settings.apply_seed()
    assert not torch.equal(first[0], torch.nn.Conv2d(1, 4, 3).weight)
    assert settings.settings_record(settings.Budget.from_env())["environment"][settings.ENV_SEED] == "4"
    monkeypatch.setenv(settings.ENV_SEED, "-1")
    with pytest.raises(InputError, match=settings.ENV_SEED):
        settings.apply_seed()
    monkeypatch.delenv(settings.ENV_SEED)
    assert settings.apply_seed() is None


def _configuration(architecture: dict, patch=(64, 96)):
    from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager

    return ConfigurationManager({"architecture": architecture, "patch_size": list(patch)})


SERESNET_ARCHITECTURE = {"network_class_name": "nnunet_joint.network.unet.SEResNetUNet",
                         "arch_kwargs": {"encoder_name": "seresnet34",
                                         "strides": [[1, 1], [2, 2], [2, 2], [2, 2], [2, 2], [2, 2]],
                                         "decoder_channels": [16, 32, 64, 128, 256], "n_conv_per_stage_decoder": 2},
                         "_kw_requires_import": []}


class _Plans:
    plans_name = "nnUNetSEResNet34Plans"


@pytest.mark.parametrize("trainer, head, decoder", [("nnUNetTrainerJoint", False, True), ("nnUNetTrainerYNet", True, True),
                                                    ("nnUNetTrainerSEResNetCls", True, False)])
def test_trainers_build_the_plans_network_and_add_only_their_head(monkeypatch, trainer, head, decoder):
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    monkeypatch.setenv("nnUNet_extTrainer", str(TRAINERS_DIR))
    cls = recursive_find_trainer_class_by_name(trainer)
    net = cls.build_network_architecture(_Plans(), _configuration(SERESNET_ARCHITECTURE), 1, 5, True)
    assert net.encoder_name == "seresnet34" and net.encoder.depth == 34  # the encoder is the plans'
    assert (net.cls_head is not None) == head and (net.decoder is not None) == decoder
    assert net.pools_inside_lesion == head  # the classifier's and the Y-Net's heads pool inside the lesion
    if decoder:
        assert net.decoder.deep_supervision and net.decoder.seg_layers[-1].out_channels == 5


def test_our_trainers_refuse_plans_of_another_network(monkeypatch):
    from nnunet_joint.training.base import nnUNetTrainerSEResNetBase

    plain = {"network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
             "arch_kwargs": {}, "_kw_requires_import": []}

    class DefaultPlans:
        plans_name = "nnUNetPlans"

    with pytest.raises(RuntimeError, match=r"plans 'nnUNetPlans' configure .*PlainConvUNet.*-pl nnUNetPlannerSEResNet50"):
        nnUNetTrainerSEResNetBase.build_network_architecture(DefaultPlans(), _configuration(plain), 1, 3, True)


def test_nnunet_loaders_are_routed_to_the_safe_loader_and_restored(tmp_path):
    """Inside nnunet_loads_safely, nnU-Net's own loaders refuse a pickle that runs code; torch.load is untouched."""
    import os

    import nnunetv2.inference.predict_from_raw_data as predictor_module
    import nnunetv2.training.nnUNetTrainer.nnUNetTrainer as trainer_module

    from nnunet_joint.checkpoints import nnunet_loads_safely

    class RunsCode:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    hostile = tmp_path / "checkpoint_final.pth"
    torch.save({"network_weights": {}, "x": RunsCode()}, hostile)
    original = torch.load
    with nnunet_loads_safely():
        assert torch.load is original  # global torch untouched
        for module in (trainer_module, predictor_module):
            with pytest.raises(InputError, match="refused: the file would run code on load"):
                module.torch.load(str(hostile), map_location="cpu", weights_only=False)
            assert module.torch.zeros(2).shape == (2,)  # everything else is torch's
    assert trainer_module.torch is torch and predictor_module.torch is torch
    assert not (tmp_path / "pwned").exists()


def test_nnunet_finds_every_named_variant(monkeypatch):
    """nnU-Net's own lookup (the one nnUNetv2_train/predict use) finds the generated classes."""
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer
    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    from nnunet_joint.freezing import SCHEDULES
    from nnunet_joint.training.variants import variant_names

    monkeypatch.setenv("nnUNet_extTrainer", str(TRAINERS_DIR))  # nnU-Net 2.8 reads it at lookup time
    bases = ["nnUNetTrainerSEResNetSeg", "nnUNetTrainerSEResNetCls", "nnUNetTrainerYNet", "nnUNetTrainerJoint"]
    names = [n for b in bases for n in [b, *variant_names(b)]]
    assert len(names) == 4 * (1 + 2 * len(SCHEDULES)) == 36
    for name in ["nnUNetTrainerJoint_LiTS_HierFreeze", "nnUNetTrainerYNet_ImageNet", "nnUNetTrainerSEResNetCls"]:
        cls = recursive_find_trainer_class_by_name(name)
        assert cls.__name__ == name and issubclass(cls, nnUNetTrainer)
    hier = recursive_find_trainer_class_by_name("nnUNetTrainerJoint_LiTS_HierFreeze")
    assert (hier.framework, hier.init, hier.schedule) == ("joint", "LiTS", "HierFreeze")
    lits = recursive_find_trainer_class_by_name("nnUNetTrainerSEResNetSeg_LiTS")
    assert (lits.init, lits.schedule) == ("LiTS", "NoFreeze")


def test_every_trainer_we_ship_resumes_through_the_safe_loader(tmp_path, monkeypatch):
    """``--c`` / ``--val`` call the trainer's ``load_checkpoint``: for each of the 38 classes (36
    variants and the plain-nnU-Net budget wrapper, from scratch and from LiTS) a hostile checkpoint is
    refused and runs nothing."""
    import os

    from nnunetv2.utilities.find_objects import recursive_find_trainer_class_by_name

    from nnunet_joint.training.variants import variant_names

    monkeypatch.setenv("nnUNet_extTrainer", str(TRAINERS_DIR))
    bases = ["nnUNetTrainerSEResNetSeg", "nnUNetTrainerSEResNetCls", "nnUNetTrainerYNet", "nnUNetTrainerJoint"]
    names = [n for b in bases for n in [b, *variant_names(b)]] + ["nnUNetTrainer_JointBudget",
                                                                  "nnUNetTrainer_JointBudget_LiTS"]

    class RunsCode:
        def __reduce__(self):
            return (os.system, (f"touch {tmp_path / 'pwned'}",))

    hostile = tmp_path / "checkpoint_latest.pth"
    torch.save({"network_weights": {}, "init_args": {}, "current_epoch": 3, "x": RunsCode()}, hostile)
    for name in names:
        cls = recursive_find_trainer_class_by_name(name)
        trainer = object.__new__(cls)  # nnU-Net's load_checkpoint needs only these before it loads
        trainer.was_initialized, trainer.device = True, torch.device("cpu")
        with pytest.raises(InputError, match="would run code"):
            trainer.load_checkpoint(str(hostile))
    assert len(names) == 38 and not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("epochs, drawn", [
    (50, [4, 9, 14, 19, 24, 29, 34, 39, 44, 49]),  # every fifth epoch (the checkpoint interval), the last included
    (23, [1, 3, 5, 7, 9, 11, 13, 15, 17, 19, 21, 22]),  # every second, and the last although it is off the interval
    (4, [0, 1, 2, 3]),  # a short run draws every epoch
])
def test_a_budgeted_run_draws_its_progress_plot_with_its_checkpoints_and_at_the_end(monkeypatch, tmp_path, epochs, drawn):

    from nnunetv2.training.logging.nnunet_logger import MetaLogger
    from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager

    monkeypatch.setenv(settings.ENV_EPOCHS, str(epochs))
    logger = MetaLogger(str(tmp_path), resume=False)
    calls = []
    logger.plot_progress_png = lambda folder: calls.append((trainer.current_epoch, folder))
    trainer = SimpleNamespace(save_every=50, logger=logger, current_epoch=0,
                              configuration_manager=ConfigurationManager({"architecture": {}, "batch_size": 2}))
    settings.apply_to_trainer(trainer)
    for epoch in range(epochs):  # what nnU-Net's on_epoch_end does at each epoch's end
        trainer.current_epoch = epoch
        trainer.logger.plot_progress_png(str(tmp_path))
    assert calls == [(e, str(tmp_path)) for e in drawn]


def test_without_a_budget_nnunet_draws_its_progress_plot_every_epoch(monkeypatch, tmp_path):

    from nnunetv2.training.logging.nnunet_logger import MetaLogger
    from nnunetv2.utilities.plans_handling.plans_handler import ConfigurationManager

    monkeypatch.delenv(settings.ENV_EPOCHS, raising=False)
    logger = MetaLogger(str(tmp_path), resume=False)
    calls = []
    logger.plot_progress_png = lambda folder: calls.append(trainer.current_epoch)
    trainer = SimpleNamespace(save_every=50, logger=logger, current_epoch=0, num_epochs=1000,
                              configuration_manager=ConfigurationManager({"architecture": {}, "batch_size": 2}))
    settings.apply_to_trainer(trainer)
    for epoch in range(7):
        trainer.current_epoch = epoch
        trainer.logger.plot_progress_png(str(tmp_path))
    assert calls == list(range(7))
