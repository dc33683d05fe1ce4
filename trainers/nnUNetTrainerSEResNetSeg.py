"""Segmentation baseline: SE-ResNet U-Net, background / liver / lesion (MIDL framework 2)."""

from nnunet_joint.training.base import nnUNetTrainerSEResNetBase


class nnUNetTrainerSEResNetSeg(nnUNetTrainerSEResNetBase):
    """U-Net with an SE-ResNet encoder; loss: nnU-Net's Dice + inverse-frequency weighted CE."""

    framework = "seg"
