"""Networks: SE-ResNet encoder (timm-compatible weights), U-Net / Y-Net / classifier, heads, ImageNet loading."""

import sys

from torch import nn
from torch.nn.parallel import DistributedDataParallel

from nnunet_joint.network.heads import ClassificationHead
from nnunet_joint.network.seresnet import ENCODER_DEPTHS, PARAM_GROUPS, SEResNetEncoder
from nnunet_joint.network.unet import SEResNetUNet

__all__ = ["ClassificationHead", "ENCODER_DEPTHS", "PARAM_GROUPS", "SEResNetEncoder", "SEResNetUNet", "unwrap_network"]


def unwrap_network(network: nn.Module) -> nn.Module:
    """The network itself, without the wrappers nnU-Net may add (DistributedDataParallel around
    ``torch.compile``): hooks, heads and freezing must reach the real modules."""
    if isinstance(network, DistributedDataParallel):
        network = network.module
    # a compiled module exists only once torch._dynamo is imported; importing it here would cost seconds
    dynamo = sys.modules.get("torch._dynamo")
    return network._orig_mod if dynamo is not None and isinstance(network, dynamo.OptimizedModule) else network
