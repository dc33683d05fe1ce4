"""Networks: SE-ResNet encoder (timm-compatible weights), U-Net / Y-Net / classifier, heads, ImageNet loading."""

from nnunet_joint.network.heads import ClassificationHead
from nnunet_joint.network.seresnet import ENCODER_DEPTHS, PARAM_GROUPS, SEResNetEncoder
from nnunet_joint.network.unet import SEResNetUNet

__all__ = ["ClassificationHead", "ENCODER_DEPTHS", "PARAM_GROUPS", "SEResNetEncoder", "SEResNetUNet"]
