"""The prediction fast path's pieces against nnU-Net's own code (fast: a small random U-Net, no training).

- per-slice resampling (nnU-Net's ``force_separate_z``) is chosen only where it equals nnU-Net's
  3-D resampling of a 2-D model's slab, and then gives the same numbers (on clipped intensities, as
  CT is after nnU-Net's normalisation; see ``CascadeModel.resampling_configuration``);
- the stage timer adds up stages run slab by slab.
"""

from __future__ import annotations

import copy
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from nnunet_joint.inference.models import CascadeModel, PredictorSettings
from nnunet_joint.inference.timing import StageTimer

KWARGS = {"order_z": 0, "force_separate_z": None}
PLANS = {
    "dataset_name": "Dataset999_Test", "plans_name": "nnUNetPlans", "original_median_spacing_after_transp": [2, 1, 1],
    "original_median_shape_after_transp": [8, 80, 96], "image_reader_writer": "SimpleITKIO",
    "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2], "experiment_planner_used": "ExperimentPlanner",
    "label_manager": "LabelManager",
    "foreground_intensity_properties_per_channel": {"0": {"max": 200.0, "mean": 100.0, "median": 100.0, "min": -10.0,
                                                          "percentile_00_5": 0.0, "percentile_99_5": 180.0,
                                                          "std": 30.0}},
    "configurations": {"2d": {
        "data_identifier": "nnUNetPlans_2d", "preprocessor_name": "DefaultPreprocessor", "batch_size": 2,
        "patch_size": [32, 48], "median_image_size_in_voxels": [80, 96], "spacing": [1.7, 1.7],
        "normalization_schemes": ["CTNormalization"], "use_mask_for_norm": [False],
        "resampling_fn_data": "resample_data_or_seg_to_shape", "resampling_fn_seg": "resample_data_or_seg_to_shape",
        "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
        "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, **KWARGS},
        "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, **KWARGS},
        "resampling_fn_probabilities_kwargs": {"is_seg": False, "order": 1, **KWARGS},
        "architecture": {
            "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
            "arch_kwargs": {"n_stages": 3, "features_per_stage": [8, 16, 32], "conv_op": "torch.nn.modules.conv.Conv2d",
                            "kernel_sizes": [[3, 3]] * 3, "strides": [[1, 1], [2, 2], [2, 2]],
                            "n_conv_per_stage": [2, 2, 2], "n_conv_per_stage_decoder": [2, 2], "conv_bias": True,
                            "norm_op": "torch.nn.modules.instancenorm.InstanceNorm2d",
                            "norm_op_kwargs": {"eps": 1e-05, "affine": True}, "dropout_op": None,
                            "dropout_op_kwargs": None, "nonlin": "torch.nn.LeakyReLU",
                            "nonlin_kwargs": {"inplace": True}},
            "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"]},
        "batch_dice": True}},
}
DATASET_JSON = {"channel_names": {"0": "CT"}, "labels": {"background": 0, "liver": 1, "lesion": 2},
                "numTraining": 1, "file_ending": ".nii.gz"}


def _predictor(tta: bool, plans: dict = PLANS):
    """A predictor set up by nnU-Net's ``manual_initialization`` with a random U-Net built from the plans."""
    from dynamic_network_architectures.architectures.unet import PlainConvUNet
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    plans_manager = PlansManager(copy.deepcopy(plans))
    configuration = plans_manager.get_configuration("2d")
    torch.manual_seed(0)
    network = PlainConvUNet(1, 3, [8, 16, 32], torch.nn.Conv2d, 3, [1, 2, 2], [2, 2, 2], 3, [2, 2], conv_bias=True,
                            norm_op=torch.nn.InstanceNorm2d, norm_op_kwargs={"eps": 1e-5, "affine": True},
                            nonlin=torch.nn.LeakyReLU, nonlin_kwargs={"inplace": True})
    params = [copy.deepcopy(network.state_dict())]
    predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=tta,
                                perform_everything_on_device=False, device=torch.device("cpu"), allow_tqdm=False)
    predictor.manual_initialization(network, plans_manager, configuration, params, DATASET_JSON, "nnUNetTrainer",
                                    (0, 1))
    return predictor


def _model(plans: dict = PLANS) -> CascadeModel:
    predictor = _predictor(False, plans)
    return CascadeModel(Path("unused"), "nnUNetTrainer", [0], predictor, {"background": 0, "liver": 1, "lesion": 2},
                        DATASET_JSON, PredictorSettings(tta=False))


@pytest.mark.parametrize("spacing,separate", [((2.0, 0.8, 0.8), True), ((1.0, 0.75, 0.7), True),
                                              ((0.5, 0.8, 0.8), False), ((0.8, 0.9, 0.8), False),
                                              ((0.8, 0.8, 0.8), False)])
def test_slice_by_slice_resampling_only_where_it_equals_nnunets_3d_resampling(spacing, separate):
    model = _model()
    configuration = model.resampling_configuration(spacing)
    assert (configuration is not model.predictor.configuration_manager) is separate
    if not separate:
        return
    for kind in ("data", "seg", "probabilities"):
        assert configuration.configuration[f"resampling_fn_{kind}_kwargs"]["force_separate_z"] is True
    assert model.predictor.configuration_manager.configuration["resampling_fn_data_kwargs"]["force_separate_z"] is None
    rng = np.random.default_rng(2)
    # like nnU-Net's CT normalisation (clipped to two percentiles): every slice holds both clip limits,
    # so skimage clipping each resized image to its input's range clips a slice as it clips the slab
    slab = np.clip(rng.normal(size=(1, 6, 40, 50)) * 1.5, -2.0, 2.0)
    target = [spacing[0], 1.7, 1.7]
    shape = [6, 19, 24]
    down = configuration.resampling_fn_data(slab, shape, list(spacing), target)
    down_3d = model.predictor.configuration_manager.resampling_fn_data(slab, shape, list(spacing), target)
    np.testing.assert_allclose(down, down_3d, atol=1e-5)
    logits = rng.normal(size=(3, 6, 19, 24)).astype(np.float32)
    up = configuration.resampling_fn_probabilities(logits, [6, 40, 50], target, list(spacing))
    up_3d = model.predictor.configuration_manager.resampling_fn_probabilities(logits, [6, 40, 50], target,
                                                                              list(spacing))
    np.testing.assert_allclose(up, up_3d, atol=1e-5)


def test_no_slice_by_slice_resampling_when_the_way_back_has_another_low_resolution_axis():
    """Planned in-plane spacing [1.7, 1.2] with 1 mm slices: back to the input grid nnU-Net would resample
    from [1.0, 1.7, 1.2], whose coarsest axis alone is y, so forcing separate-z would resample along y."""
    plans = copy.deepcopy(PLANS)
    plans["configurations"]["2d"]["spacing"] = [1.7, 1.2]
    model = _model(plans)
    assert model.resampling_configuration((1.0, 0.75, 0.7)) is model.predictor.configuration_manager
    assert model.resampling_configuration((2.0, 0.75, 0.7)) is not model.predictor.configuration_manager


def test_plans_that_decide_separate_z_themselves_are_left_alone():
    plans = copy.deepcopy(PLANS)
    plans["configurations"]["2d"]["resampling_fn_data_kwargs"]["force_separate_z"] = False
    model = _model(plans)
    assert model.resampling_configuration((2.0, 0.8, 0.8)) is model.predictor.configuration_manager


def test_stage_timer_adds_up_stages_of_the_same_name_and_reports_per_slice():
    timer = StageTimer()
    for _ in range(3):
        with timer("stage 1: network"):
            time.sleep(0.01)
    with timer("crop"):
        pass
    assert [name for name, _, _ in timer.rows] == ["stage 1: network", "crop"]
    assert timer.rows[0][1] >= 0.03 and timer.rows[0][2] > 0
    report = timer.report("title", slices=10)
    assert "stage 1: network" in report and "per slice, 10 slices" in report


# ----------------------------------------------------------------------------- tiles in batches


def test_tiles_per_batch_fills_the_voxel_budget():
    from nnunet_joint.inference.tile_batches import tiles_per_batch

    assert tiles_per_batch((64, 64)) == 16
    assert tiles_per_batch((128, 128)) == 4
    assert tiles_per_batch((256, 256)) == 1
    assert tiles_per_batch((128, 128, 128)) == 1  # a 3-D model's tiles one at a time, as in nnU-Net


@pytest.mark.parametrize("tta", [False, True])
def test_tile_batches_give_nnunets_own_sliding_window_logits(tta):
    """Our predictor (tiles 42 at a time for 32 x 48 tiles) against nnU-Net's own predictor (one tile at a
    time) on the same random U-Net and image: the same logits up to float rounding, mirroring off and on."""
    from nnunet_joint.inference.tile_batches import nnUNetPredictorTileBatches, tiles_per_batch

    reference = _predictor(tta)
    ours = nnUNetPredictorTileBatches(tile_step_size=0.5, use_gaussian=True, use_mirroring=tta,
                                      perform_everything_on_device=False, device=torch.device("cpu"),
                                      allow_tqdm=False)
    ours.manual_initialization(reference.network, reference.plans_manager, reference.configuration_manager,
                               reference.list_of_parameters, DATASET_JSON, "nnUNetTrainer", (0, 1))
    assert tiles_per_batch(ours.configuration_manager.patch_size) == 42
    data = torch.from_numpy(np.random.default_rng(3).normal(size=(1, 4, 70, 100)).astype(np.float32))
    expected = reference.predict_sliding_window_return_logits(data).float()
    got = ours.predict_sliding_window_return_logits(data).float()
    assert got.shape == expected.shape == (3, 4, 70, 100)
    assert len(ours._internal_get_sliding_window_slicers((4, 70, 100))) > 42  # more than one batch
    np.testing.assert_allclose(got.numpy(), expected.numpy(), atol=2e-3, rtol=2e-3)
    assert float((got.argmax(0) == expected.argmax(0)).float().mean()) > 0.999


# ----------------------------------------------------------------------------- stage 1 on sampled slices


def test_sampled_slices_keep_neighbours_at_most_the_gap_apart_and_the_last_slice():
    from nnunet_joint.inference.cascade import sampled_slices

    assert sampled_slices(10, 1.0, 3.0).tolist() == [0, 3, 6, 9]
    assert sampled_slices(11, 1.0, 3.0).tolist() == [0, 3, 6, 9, 10]
    assert sampled_slices(9, 0.75, 3.0).tolist() == [0, 4, 8]
    assert sampled_slices(5, 2.5, 3.0).tolist() == [0, 1, 2, 3, 4]  # slices already that coarse: every one
    assert sampled_slices(5, 1.0, None).tolist() == sampled_slices(5, 1.0, 0).tolist() == [0, 1, 2, 3, 4]
    assert sampled_slices(1, 1.0, 3.0).tolist() == [0]
    assert sampled_slices(6, 1.0, float("inf")).tolist() == [0, 5]
    assert sampled_slices(5, 1.0, -1.0).tolist() == [0, 1, 2, 3, 4]


def test_stage_1_samples_only_a_softmax_model_slicing_along_the_first_axis():
    from nnunet_joint.inference.cascade import stage1_slices

    assert stage1_slices(_model(), 7, 1.0, 3.0).tolist() == [0, 3, 6]
    transposed = copy.deepcopy(PLANS)  # nnU-Net slices along the second array axis
    transposed["transpose_forward"] = transposed["transpose_backward"] = [1, 0, 2]
    assert stage1_slices(_model(transposed), 7, 1.0, 3.0).tolist() == list(range(7))
    regions = _model()
    regions.predictor.label_manager = type(regions.predictor.label_manager)(
        {"background": 0, "liver": (1, 2), "lesion": 2}, regions_class_order=[1, 2])  # sigmoids, no background
    assert stage1_slices(regions, 7, 1.0, 3.0).tolist() == list(range(7))


def test_liver_between_sampled_slices_is_the_linear_interpolation_of_the_margin():
    from nnunet_joint.inference.cascade import liver_from_sampled_slices

    rng = np.random.default_rng(5)
    indices = np.array([0, 3, 6, 7])
    margins = rng.normal(size=(4, 5, 6)).astype(np.float32)
    got = liver_from_sampled_slices(margins, indices, 8)
    expected = np.zeros((8, 5, 6), dtype=bool)
    for y in range(5):
        for x in range(6):
            expected[:, y, x] = np.interp(np.arange(8), indices, margins[:, y, x]) > 0
    np.testing.assert_array_equal(got, expected)


def test_stage_1_on_sampled_slices_equals_every_slice_there_and_interpolates_between():
    """The sampled slices' foreground is exactly what predicting every slice gives there; between them it is
    the interpolated margin of the every-slice prediction's own probabilities (computed here independently)."""
    from nnunet_joint.inference.cascade import liver_foreground, stage1_slices

    model = _model()
    rng = np.random.default_rng(4)
    image = rng.normal(100, 40, size=(7, 80, 96)).astype(np.float32)
    spacing = (1.0, 0.75, 0.7)
    every = liver_foreground(model, image, spacing, stage1_slices(model, 7, spacing[0], None))
    sampled = liver_foreground(model, image, spacing, stage1_slices(model, 7, spacing[0], 3.0))  # slices 0, 3, 6
    assert 0.05 < every.mean() < 0.95  # a real mixture of foreground and background
    for z in (0, 3, 6):
        assert float(np.mean(sampled[z] == every[z])) > 0.999
    probs = model.predict(image, spacing, probabilities=True).probabilities
    margin = probs[1:].max(axis=0) - probs[0]
    for z, (a, b) in zip((1, 2, 4, 5), ((0, 3), (0, 3), (3, 6), (3, 6))):
        w = (z - a) / (b - a)
        expected = (1 - w) * margin[a] + w * margin[b] > 0
        assert float(np.mean(sampled[z] == expected)) > 0.999
