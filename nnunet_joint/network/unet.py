"""U-Net with an SE-ResNet encoder, optionally with a classification head (Y-Net) or head only.

One class covers the four frameworks of the study:

=========================== ================= ===================
framework                   ``segmentation``  ``num_cls_classes``
=========================== ================= ===================
segmentation baseline/joint True              0
Y-Net                       True              3
classification baseline     False             3
=========================== ================= ===================

The decoder is dynamic-network-architectures' ``UNetDecoder`` (transposed conv + two conv/BN/ReLU
blocks per level, 1x1 seg layers), so deep supervision, ``set_deep_supervision_enabled`` and the
predictor behave as for nnU-Net's own networks.

Decision: the decoder upsamples back to the resolution of encoder level 0 (conv1's output).
With ``strides[0] == 1`` (what the trainer uses) that is the full input resolution, at the cost
of running conv1 at full resolution; with timm's default 2 the logits would be at half
resolution, which nnU-Net's loss does not expect. Inputs must be divisible per axis by the
product of the strides (:attr:`SEResNetUNet.input_divisor`), as nnU-Net's patch sizes are.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from dynamic_network_architectures.building_blocks.unet_decoder import UNetDecoder
from dynamic_network_architectures.initialization.weight_init import InitWeights_He
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from nnunet_joint.network.heads import ClassificationHead
from nnunet_joint.network.seresnet import ENCODER_DEPTHS, SEResNetEncoder, StrideLike


class SEResNetUNet(nn.Module):
    """SE-ResNet encoder + U-Net decoder (+ classification head on the deepest encoder feature).

    Args:
        input_channels: image channels.
        num_classes: segmentation output channels (ignored when ``segmentation`` is False).
        encoder_name: a key of :data:`~nnunet_joint.network.seresnet.ENCODER_DEPTHS`.
        strides: per-level encoder strides, see :class:`SEResNetEncoder`.
        deep_supervision: return one logit map per decoder level (highest resolution first).
        num_cls_classes: size of the classification head; 0 for no head.
        segmentation: build the decoder; False gives the classification baseline.
        n_conv_per_stage_decoder: conv blocks per decoder level.
    """

    #: prefix of encoder keys in this network's state dict (ImageNet weights load there)
    encoder_key_prefix: str = "encoder."
    #: task-specific keys, re-initialised rather than transferred from another task
    head_prefixes: tuple[str, ...] = ("decoder.seg_layers.", "cls_head.")

    def __init__(
        self,
        input_channels: int,
        num_classes: int,
        encoder_name: str = "seresnet18",
        strides: Sequence[StrideLike] = (1, 2, 2, 2, 2),
        deep_supervision: bool = False,
        num_cls_classes: int = 0,
        segmentation: bool = True,
        n_conv_per_stage_decoder: int = 2,
    ):
        super().__init__()
        if encoder_name not in ENCODER_DEPTHS:
            raise ValueError(f"unknown encoder {encoder_name!r}; choose one of {sorted(ENCODER_DEPTHS)}")
        if not segmentation and num_cls_classes <= 0:
            raise ValueError("a network without segmentation needs a classification head (num_cls_classes > 0)")
        self.encoder_name = encoder_name
        self.encoder = SEResNetEncoder(input_channels, ENCODER_DEPTHS[encoder_name], strides, return_skips=True)
        #: encoder groups kept frozen (see nnunet_joint.freezing); re-applied by train()
        self.frozen_encoder_groups = 0

        self.decoder: UNetDecoder | None = None
        if segmentation:
            self.decoder = UNetDecoder(self.encoder, num_classes, n_conv_per_stage_decoder, deep_supervision)
            # UNetDecoder registers the encoder as its submodule, which would put every encoder
            # weight in the state dict twice (``decoder.encoder.*``). Keep a plain reference instead:
            # the decoder only reads the encoder's attributes.
            del self.decoder.encoder
            self.decoder.__dict__["encoder"] = self.encoder
            self.decoder.apply(InitWeights_He(1e-2))

        self.cls_head: ClassificationHead | None = None
        self.last_cls_logits: torch.Tensor | None = None
        if num_cls_classes > 0:
            self.cls_head = ClassificationHead(self.encoder.output_channels[-1], num_cls_classes)

    @property
    def input_divisor(self) -> list[int]:
        """Per-axis number every input size must be divisible by (product of the strides)."""
        return [int(v) for v in np.prod(np.array(self.encoder.strides), axis=0)]

    def forward(self, x: torch.Tensor, return_cls: bool = False):
        """Segmentation logits; ``(seg, cls_logits)`` with ``return_cls``; cls logits for a head-only net.

        ``network(x)`` returns the segmentation only, which is what nnU-Net's training loop,
        validation and predictor need, also for the Y-Net. The head's logits of the last forward
        stay in :attr:`last_cls_logits`, which is how the Y-Net loss reaches them without
        changing nnU-Net's ``train_step`` (the forward still runs through DDP's wrapper).
        """
        skips = self.encoder(x)
        cls_logits = self.cls_head(skips[-1]) if self.cls_head is not None else None
        self.last_cls_logits = cls_logits
        if self.decoder is None:
            return cls_logits
        seg = self.decoder(skips)
        if not return_cls:
            return seg
        if cls_logits is None:
            raise ValueError("return_cls=True but this network has no classification head")
        return seg, cls_logits

    def classify(self, x: torch.Tensor) -> torch.Tensor:
        """Class logits of the head alone (no decoder pass)."""
        if self.cls_head is None:
            raise ValueError("this network has no classification head")
        return self.cls_head(self.encoder(x)[-1])

    def deep_supervision_scales(self) -> list[list[float]]:
        """Downsampling factor of each decoder output, highest resolution first.

        nnU-Net computes this from the plans' pool kernels, which do not describe our 5-level
        encoder; the trainer overrides ``_get_deep_supervision_scales`` with this.
        """
        scales = 1 / np.cumprod(np.vstack(self.encoder.strides), axis=0)
        return [[float(v) for v in row] for row in scales][:-1]

    def train(self, mode: bool = True) -> "SEResNetUNet":
        """Like ``nn.Module.train`` but keeps the norms of frozen encoder groups in eval mode.

        Frozen stages must not update their BatchNorm running statistics either
        (segmentation_models_pytorch's ``freeze_encoder`` semantics); nnU-Net calls
        ``network.train()`` every epoch, which would otherwise undo that.
        """
        super().train(mode)
        if mode and self.frozen_encoder_groups:
            for module in self.encoder.group_modules(self.frozen_encoder_groups):
                if isinstance(module, _BatchNorm):
                    module.eval()
        return self

    def compute_conv_feature_map_size(self, input_size: Sequence[int]) -> np.int64:
        """Rough feature-map element count (encoder + decoder), for memory estimates."""
        total = self.encoder.compute_conv_feature_map_size(input_size)
        if self.decoder is not None:
            total += self.decoder.compute_conv_feature_map_size(input_size)
        return total
