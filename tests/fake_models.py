"""A trained-looking nnU-Net results folder, written by tests (plans, dataset.json, a checkpoint)."""

from __future__ import annotations

import json
from pathlib import Path

#: What nnU-Net 2.8's default planner writes for a small 2-D dataset.
PLAIN_ARCHITECTURE = {
    "network_class_name": "dynamic_network_architectures.architectures.unet.PlainConvUNet",
    "arch_kwargs": {"n_stages": 3, "features_per_stage": [8, 16, 32], "conv_op": "torch.nn.modules.conv.Conv2d",
                    "kernel_sizes": [[3, 3]] * 3, "strides": [[1, 1], [2, 2], [2, 2]], "n_conv_per_stage": [2, 2, 2],
                    "n_conv_per_stage_decoder": [2, 2], "conv_bias": True,
                    "norm_op": "torch.nn.modules.instancenorm.InstanceNorm2d",
                    "norm_op_kwargs": {"eps": 1e-05, "affine": True}, "dropout_op": None, "dropout_op_kwargs": None,
                    "nonlin": "torch.nn.LeakyReLU", "nonlin_kwargs": {"inplace": True}},
    "_kw_requires_import": ["conv_op", "norm_op", "dropout_op", "nonlin"],
}


def plans(architecture: dict) -> dict:
    return {"dataset_name": "Dataset501_LiTSLiver", "plans_name": "nnUNetPlans",
            "original_median_spacing_after_transp": [1.0, 1.0, 1.0], "original_median_shape_after_transp": [1, 16, 16],
            "image_reader_writer": "SimpleITKIO", "transpose_forward": [0, 1, 2], "transpose_backward": [0, 1, 2],
            "configurations": {"2d": {"data_identifier": "nnUNetPlans_2d", "preprocessor_name": "DefaultPreprocessor",
                                      "batch_size": 2, "patch_size": [16, 16], "median_image_size_in_voxels": [16, 16],
                                      "spacing": [1.0, 1.0], "normalization_schemes": ["CTNormalization"],
                                      "use_mask_for_norm": [False], "architecture": architecture, "batch_dice": True}},
            "experiment_planner_used": "ExperimentPlanner", "label_manager": "LabelManager",
            "foreground_intensity_properties_per_channel": {"0": {"mean": 0, "std": 1, "percentile_00_5": -1,
                                                                  "percentile_99_5": 1}}}


def write_model_folder(root: Path, architecture: dict | None = None, checkpoint: bytes | None = None) -> Path:
    """``root/Dataset501_LiTSLiver/nnUNetTrainer__nnUNetPlans__2d`` with ``fold_0/checkpoint_final.pth``
    holding ``checkpoint`` (bytes as given) when it is not None."""
    folder = root / "Dataset501_LiTSLiver" / "nnUNetTrainer__nnUNetPlans__2d"
    folder.mkdir(parents=True)
    (folder / "plans.json").write_text(json.dumps(plans(architecture or PLAIN_ARCHITECTURE)))
    (folder / "dataset.json").write_text(json.dumps({"channel_names": {"0": "CT"},
                                                     "labels": {"background": 0, "liver": 1},
                                                     "numTraining": 1, "file_ending": ".nii.gz"}))
    if checkpoint is not None:
        (folder / "fold_0").mkdir()
        (folder / "fold_0" / "checkpoint_final.pth").write_bytes(checkpoint)
    return folder
