"""Every pretrained variant of our trainers: ``<Framework>_<Init>`` and ``<Framework>_<Init>_<Schedule>``.

Generated from the naming table by :mod:`nnunet_joint.training.variants`; do not edit. Regenerate with::

    python -m nnunet_joint.training.variants > trainers/nnUNetTrainerVariants.py
"""

from nnunet_joint.names import FREEZE_ENCODER, HIERARCHICAL_FREEZING, HIERARCHICAL_UNFREEZING, NO_FREEZING
from nnunet_joint.trainers.nnUNetTrainerJoint import nnUNetTrainerJoint
from nnunet_joint.trainers.nnUNetTrainerSEResNetCls import nnUNetTrainerSEResNetCls
from nnunet_joint.trainers.nnUNetTrainerSEResNetSeg import nnUNetTrainerSEResNetSeg
from nnunet_joint.trainers.nnUNetTrainerYNet import nnUNetTrainerYNet


class nnUNetTrainerSEResNetCls_ImageNet(nnUNetTrainerSEResNetCls):
    """nnUNetTrainerSEResNetCls initialised from ImageNet weights, fine-tuning schedule NoFreeze."""

    init = "ImageNet"
    schedule = NO_FREEZING


class nnUNetTrainerSEResNetCls_ImageNet_FreezeEnc(nnUNetTrainerSEResNetCls):
    """nnUNetTrainerSEResNetCls initialised from ImageNet weights, fine-tuning schedule FreezeEnc."""

    init = "ImageNet"
    schedule = FREEZE_ENCODER


class nnUNetTrainerSEResNetCls_ImageNet_HierFreeze(nnUNetTrainerSEResNetCls):
    """nnUNetTrainerSEResNetCls initialised from ImageNet weights, fine-tuning schedule HierFreeze."""

    init = "ImageNet"
    schedule = HIERARCHICAL_FREEZING


class nnUNetTrainerSEResNetCls_ImageNet_HierUnfreeze(nnUNetTrainerSEResNetCls):
    """nnUNetTrainerSEResNetCls initialised from ImageNet weights, fine-tuning schedule HierUnfreeze."""

    init = "ImageNet"
    schedule = HIERARCHICAL_UNFREEZING


class nnUNetTrainerSEResNetCls_LiTS(nnUNetTrainerSEResNetCls):
    """nnUNetTrainerSEResNetCls initialised from LiTS weights, fine-tuning schedule NoFreeze."""

    init = "LiTS"
    schedule = NO_FREEZING


class nnUNetTrainerSEResNetCls_LiTS_FreezeEnc(nnUNetTrainerSEResNetCls):
    """nnUNetTrainerSEResNetCls initialised from LiTS weights, fine-tuning schedule FreezeEnc."""

    init = "LiTS"
    schedule = FREEZE_ENCODER


class nnUNetTrainerSEResNetCls_LiTS_HierFreeze(nnUNetTrainerSEResNetCls):
    """nnUNetTrainerSEResNetCls initialised from LiTS weights, fine-tuning schedule HierFreeze."""

    init = "LiTS"
    schedule = HIERARCHICAL_FREEZING


class nnUNetTrainerSEResNetCls_LiTS_HierUnfreeze(nnUNetTrainerSEResNetCls):
    """nnUNetTrainerSEResNetCls initialised from LiTS weights, fine-tuning schedule HierUnfreeze."""

    init = "LiTS"
    schedule = HIERARCHICAL_UNFREEZING


class nnUNetTrainerSEResNetSeg_ImageNet(nnUNetTrainerSEResNetSeg):
    """nnUNetTrainerSEResNetSeg initialised from ImageNet weights, fine-tuning schedule NoFreeze."""

    init = "ImageNet"
    schedule = NO_FREEZING


class nnUNetTrainerSEResNetSeg_ImageNet_FreezeEnc(nnUNetTrainerSEResNetSeg):
    """nnUNetTrainerSEResNetSeg initialised from ImageNet weights, fine-tuning schedule FreezeEnc."""

    init = "ImageNet"
    schedule = FREEZE_ENCODER


class nnUNetTrainerSEResNetSeg_ImageNet_HierFreeze(nnUNetTrainerSEResNetSeg):
    """nnUNetTrainerSEResNetSeg initialised from ImageNet weights, fine-tuning schedule HierFreeze."""

    init = "ImageNet"
    schedule = HIERARCHICAL_FREEZING


class nnUNetTrainerSEResNetSeg_ImageNet_HierUnfreeze(nnUNetTrainerSEResNetSeg):
    """nnUNetTrainerSEResNetSeg initialised from ImageNet weights, fine-tuning schedule HierUnfreeze."""

    init = "ImageNet"
    schedule = HIERARCHICAL_UNFREEZING


class nnUNetTrainerSEResNetSeg_LiTS(nnUNetTrainerSEResNetSeg):
    """nnUNetTrainerSEResNetSeg initialised from LiTS weights, fine-tuning schedule NoFreeze."""

    init = "LiTS"
    schedule = NO_FREEZING


class nnUNetTrainerSEResNetSeg_LiTS_FreezeEnc(nnUNetTrainerSEResNetSeg):
    """nnUNetTrainerSEResNetSeg initialised from LiTS weights, fine-tuning schedule FreezeEnc."""

    init = "LiTS"
    schedule = FREEZE_ENCODER


class nnUNetTrainerSEResNetSeg_LiTS_HierFreeze(nnUNetTrainerSEResNetSeg):
    """nnUNetTrainerSEResNetSeg initialised from LiTS weights, fine-tuning schedule HierFreeze."""

    init = "LiTS"
    schedule = HIERARCHICAL_FREEZING


class nnUNetTrainerSEResNetSeg_LiTS_HierUnfreeze(nnUNetTrainerSEResNetSeg):
    """nnUNetTrainerSEResNetSeg initialised from LiTS weights, fine-tuning schedule HierUnfreeze."""

    init = "LiTS"
    schedule = HIERARCHICAL_UNFREEZING


class nnUNetTrainerYNet_ImageNet(nnUNetTrainerYNet):
    """nnUNetTrainerYNet initialised from ImageNet weights, fine-tuning schedule NoFreeze."""

    init = "ImageNet"
    schedule = NO_FREEZING


class nnUNetTrainerYNet_ImageNet_FreezeEnc(nnUNetTrainerYNet):
    """nnUNetTrainerYNet initialised from ImageNet weights, fine-tuning schedule FreezeEnc."""

    init = "ImageNet"
    schedule = FREEZE_ENCODER


class nnUNetTrainerYNet_ImageNet_HierFreeze(nnUNetTrainerYNet):
    """nnUNetTrainerYNet initialised from ImageNet weights, fine-tuning schedule HierFreeze."""

    init = "ImageNet"
    schedule = HIERARCHICAL_FREEZING


class nnUNetTrainerYNet_ImageNet_HierUnfreeze(nnUNetTrainerYNet):
    """nnUNetTrainerYNet initialised from ImageNet weights, fine-tuning schedule HierUnfreeze."""

    init = "ImageNet"
    schedule = HIERARCHICAL_UNFREEZING


class nnUNetTrainerYNet_LiTS(nnUNetTrainerYNet):
    """nnUNetTrainerYNet initialised from LiTS weights, fine-tuning schedule NoFreeze."""

    init = "LiTS"
    schedule = NO_FREEZING


class nnUNetTrainerYNet_LiTS_FreezeEnc(nnUNetTrainerYNet):
    """nnUNetTrainerYNet initialised from LiTS weights, fine-tuning schedule FreezeEnc."""

    init = "LiTS"
    schedule = FREEZE_ENCODER


class nnUNetTrainerYNet_LiTS_HierFreeze(nnUNetTrainerYNet):
    """nnUNetTrainerYNet initialised from LiTS weights, fine-tuning schedule HierFreeze."""

    init = "LiTS"
    schedule = HIERARCHICAL_FREEZING


class nnUNetTrainerYNet_LiTS_HierUnfreeze(nnUNetTrainerYNet):
    """nnUNetTrainerYNet initialised from LiTS weights, fine-tuning schedule HierUnfreeze."""

    init = "LiTS"
    schedule = HIERARCHICAL_UNFREEZING


class nnUNetTrainerJoint_ImageNet(nnUNetTrainerJoint):
    """nnUNetTrainerJoint initialised from ImageNet weights, fine-tuning schedule NoFreeze."""

    init = "ImageNet"
    schedule = NO_FREEZING


class nnUNetTrainerJoint_ImageNet_FreezeEnc(nnUNetTrainerJoint):
    """nnUNetTrainerJoint initialised from ImageNet weights, fine-tuning schedule FreezeEnc."""

    init = "ImageNet"
    schedule = FREEZE_ENCODER


class nnUNetTrainerJoint_ImageNet_HierFreeze(nnUNetTrainerJoint):
    """nnUNetTrainerJoint initialised from ImageNet weights, fine-tuning schedule HierFreeze."""

    init = "ImageNet"
    schedule = HIERARCHICAL_FREEZING


class nnUNetTrainerJoint_ImageNet_HierUnfreeze(nnUNetTrainerJoint):
    """nnUNetTrainerJoint initialised from ImageNet weights, fine-tuning schedule HierUnfreeze."""

    init = "ImageNet"
    schedule = HIERARCHICAL_UNFREEZING


class nnUNetTrainerJoint_LiTS(nnUNetTrainerJoint):
    """nnUNetTrainerJoint initialised from LiTS weights, fine-tuning schedule NoFreeze."""

    init = "LiTS"
    schedule = NO_FREEZING


class nnUNetTrainerJoint_LiTS_FreezeEnc(nnUNetTrainerJoint):
    """nnUNetTrainerJoint initialised from LiTS weights, fine-tuning schedule FreezeEnc."""

    init = "LiTS"
    schedule = FREEZE_ENCODER


class nnUNetTrainerJoint_LiTS_HierFreeze(nnUNetTrainerJoint):
    """nnUNetTrainerJoint initialised from LiTS weights, fine-tuning schedule HierFreeze."""

    init = "LiTS"
    schedule = HIERARCHICAL_FREEZING


class nnUNetTrainerJoint_LiTS_HierUnfreeze(nnUNetTrainerJoint):
    """nnUNetTrainerJoint initialised from LiTS weights, fine-tuning schedule HierUnfreeze."""

    init = "LiTS"
    schedule = HIERARCHICAL_UNFREEZING
