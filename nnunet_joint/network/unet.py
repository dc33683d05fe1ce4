"""U-Net with a standard SE-ResNet encoder, optionally with a classification head (Y-Net) or head only.

One class covers the four frameworks of the study:

=========================== ================= ===================
framework                   ``segmentation``  ``num_cls_classes``
=========================== ================= ===================
segmentation baseline/joint True              0
Y-Net                       True              3
classification baseline     False             3
=========================== ================= ===================

Architecture decisions (the shape of the papers' U-Net/SE-ResNet, in nnU-Net's building blocks):

* **The encoder downsamples as it did on ImageNet**: 7x7 stem at stride 2, max-pool at stride 2,
  stages 1/2/2/2 (total stride 32). Pretrained filters (ImageNet or our LiTS model) therefore see
  the image at the scale they were trained on, and the head reads the 1/32 feature.
* **A light full-resolution level in front of the encoder** (two 3x3 conv/BN/ReLU blocks with
  ``decoder_channels[0]`` channels on the image) gives the decoder a skip at the input resolution,
  so the logits are at full resolution, as nnU-Net's loss and predictor expect. It is ours, not
  part of the ImageNet key contract (``encoder.*`` keys are timm's).
* **Light decoder widths** (default 16, 32, 64, 128, 256 from full resolution to 1/16, the widths
  of the papers' era, e.g. segmentation_models_pytorch's U-Net): each encoder skip is first
  projected by a 1x1 conv/BN/ReLU to the width of its decoder level (for SE-ResNet-50 1024 -> 256,
  512 -> 128, 256 -> 64, 64 -> 32), so no decoder conv runs on 1024/2048 channels. The projected
  skips feed dynamic-network-architectures' ``UNetDecoder`` unchanged (transposed conv, concat,
  two conv blocks and a 1x1 seg layer per level), so deep supervision,
  ``set_deep_supervision_enabled`` and nnU-Net's predictor behave as for nnU-Net's own networks.
  The deepest feature (512 or 2048 channels, 1/32) enters the decoder's first transposed conv
  directly.

``strides`` has six entries, one per resolution level of the U-Net: the full-resolution level
(always 1) and the encoder's five (stem, pool, stages 2-4). This is the list nnU-Net reads from the
plans (``arch_kwargs['strides']``) to derive its deep-supervision scales. Inputs must be divisible
per axis by the product of the strides (:attr:`SEResNetUNet.input_divisor`, 32), as the planned
patch sizes are.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import numpy as np
import torch
from dynamic_network_architectures.building_blocks.simple_conv_blocks import ConvDropoutNormReLU, StackedConvBlocks
from dynamic_network_architectures.building_blocks.unet_decoder import UNetDecoder
from dynamic_network_architectures.initialization.weight_init import InitWeights_He
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm

from nnunet_joint.labels import FIRST_LESION_LABEL
from nnunet_joint.network.heads import ClassificationHead
from nnunet_joint.network.seresnet import ENCODER_DEPTHS, SEResNetEncoder, StrideLike, normalize_strides

#: The standard per-level strides: full-resolution level, stem, pool, stage2, stage3, stage4.
STANDARD_STRIDES: tuple[tuple[int, int], ...] = ((1, 1), (2, 2), (2, 2), (2, 2), (2, 2), (2, 2))
#: Decoder widths from full resolution to 1/16 (the papers' era: 16/32/64/128/256).
DEFAULT_DECODER_CHANNELS: tuple[int, ...] = (16, 32, 64, 128, 256)
N_LEVELS = len(STANDARD_STRIDES)


@dataclass
class DecoderSkips:
    """What ``UNetDecoder`` reads from "an encoder": the widths and strides of the skips it receives.

    Here the skips are the full-resolution level and the projected encoder features, so the
    decoder's widths are ours, not the encoder's. A plain object (not a module), so the decoder
    does not register anything twice.
    """

    output_channels: list[int]
    strides: list[list[int]]
    conv_op: type = nn.Conv2d
    kernel_sizes: list[list[int]] = field(default_factory=lambda: [[3, 3]] * N_LEVELS)
    conv_bias: bool = False
    norm_op: type = nn.BatchNorm2d
    norm_op_kwargs: dict = field(default_factory=lambda: {"eps": 1e-5, "affine": True})
    dropout_op: type | None = None
    dropout_op_kwargs: dict | None = None
    nonlin: type = nn.ReLU
    nonlin_kwargs: dict = field(default_factory=lambda: {"inplace": True})

    def block_kwargs(self) -> dict:
        return {"conv_bias": self.conv_bias, "norm_op": self.norm_op, "norm_op_kwargs": self.norm_op_kwargs,
                "dropout_op": self.dropout_op, "dropout_op_kwargs": self.dropout_op_kwargs,
                "nonlin": self.nonlin, "nonlin_kwargs": self.nonlin_kwargs}


def init_encoder_like_timm(encoder: nn.Module) -> None:
    """timm's ResNet initialisation (He normal, fan-out, for convs; BatchNorm 1 / 0) for scratch rows."""
    for module in encoder.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)


class SEResNetUNet(nn.Module):
    """Standard SE-ResNet encoder + light U-Net decoder (+ classification head on the deepest feature).

    Args:
        input_channels: image channels.
        num_classes: segmentation output channels (ignored when ``segmentation`` is False).
        encoder_name: a key of :data:`~nnunet_joint.network.seresnet.ENCODER_DEPTHS`.
        strides: six per-level strides (module docstring); the first must be 1.
        decoder_channels: five decoder widths, full resolution to 1/16.
        n_conv_per_stage_decoder: conv blocks per decoder level.
        deep_supervision: return one logit map per decoder level (highest resolution first).
        num_cls_classes: size of the classification head; 0 for no head.
        segmentation: build the decoder; False gives the classification baseline (encoder + head).
        cls_pooling: how the head pools the deepest feature: ``"global"`` or ``"lesion"`` (inside a
            lesion mask: :meth:`pooling_inside` gives it, the reference lesion in training; without
            one a network with a decoder pools inside the lesion it segments itself, a head-only
            network globally). Parameter-free: the weights are the same either way.
    """

    #: prefix of encoder keys in this network's state dict (ImageNet weights load there)
    encoder_key_prefix: str = "encoder."
    #: prefix of the classification head's keys (its own learning rate: nnunet_joint.training.recipes)
    cls_head_prefix: str = "cls_head."
    #: task-specific keys, re-initialised rather than transferred from another task
    head_prefixes: tuple[str, ...] = ("decoder.seg_layers.", cls_head_prefix)

    def __init__(
        self,
        input_channels: int,
        num_classes: int,
        encoder_name: str = "seresnet18",
        strides: Sequence[StrideLike] = STANDARD_STRIDES,
        decoder_channels: Sequence[int] = DEFAULT_DECODER_CHANNELS,
        n_conv_per_stage_decoder: int = 2,
        deep_supervision: bool = False,
        num_cls_classes: int = 0,
        segmentation: bool = True,
        cls_pooling: str = "global",
    ):
        super().__init__()
        if encoder_name not in ENCODER_DEPTHS:
            raise ValueError(f"unknown encoder {encoder_name!r}; choose one of {sorted(ENCODER_DEPTHS)}")
        if not segmentation and num_cls_classes <= 0:
            raise ValueError("a network without segmentation needs a classification head (num_cls_classes > 0)")
        strides = normalize_strides(strides, N_LEVELS)
        if strides[0] != [1, 1]:
            raise ValueError(f"the first (full-resolution) level must have stride 1, got {strides[0]}")
        if len(decoder_channels) != N_LEVELS - 1 or min(decoder_channels) < 1:
            raise ValueError(f"decoder_channels needs {N_LEVELS - 1} positive widths (full resolution to 1/16), "
                             f"got {list(decoder_channels)}")
        self.encoder_name = encoder_name
        self.strides = strides
        self.encoder = SEResNetEncoder(input_channels, ENCODER_DEPTHS[encoder_name], strides[1:], return_skips=True)
        init_encoder_like_timm(self.encoder)
        #: encoder groups kept frozen (see nnunet_joint.freezing); re-applied by train()
        self.frozen_encoder_groups = 0

        self.full_res: StackedConvBlocks | None = None
        self.lateral: nn.ModuleList | None = None
        self.decoder: UNetDecoder | None = None
        if segmentation:
            skips = DecoderSkips([*decoder_channels, self.encoder.output_channels[-1]], strides)
            block = skips.block_kwargs()
            self.full_res = StackedConvBlocks(2, nn.Conv2d, input_channels, decoder_channels[0], 3, 1, **block)
            self.lateral = nn.ModuleList(
                ConvDropoutNormReLU(nn.Conv2d, c_in, c_out, 1, 1, **block)
                for c_in, c_out in zip(self.encoder.output_channels[:-1], decoder_channels[1:]))
            self.decoder = UNetDecoder(skips, num_classes, n_conv_per_stage_decoder, deep_supervision)
            for module in (self.full_res, self.lateral, self.decoder):
                module.apply(InitWeights_He(1e-2))

        self.cls_head: ClassificationHead | None = None
        self.last_cls_logits: torch.Tensor | None = None
        #: the lesion mask the head pools inside during the current forward (:meth:`pooling_inside`)
        self.cls_pool_mask: torch.Tensor | None = None
        if num_cls_classes > 0:
            self.cls_head = ClassificationHead(self.encoder.output_channels[-1], num_cls_classes,
                                               pooling=cls_pooling)

    @property
    def input_divisor(self) -> list[int]:
        """Per-axis number every input size must be divisible by (product of the strides)."""
        return [int(v) for v in np.prod(np.array(self.strides), axis=0)]

    def skips(self, x: torch.Tensor, encoder_features: list[torch.Tensor]) -> list[torch.Tensor]:
        """The decoder's inputs: full-resolution level, projected encoder skips, deepest feature."""
        assert self.full_res is not None and self.lateral is not None
        projected = [lateral(f) for lateral, f in zip(self.lateral, encoder_features[:-1])]
        return [self.full_res(x), *projected, encoder_features[-1]]

    @property
    def pools_inside_lesion(self) -> bool:
        return self.cls_head is not None and self.cls_head.pooling == "lesion"

    @contextlib.contextmanager
    def pooling_inside(self, lesion_mask: torch.Tensor | None) -> Iterator[None]:
        """The head pools inside ``lesion_mask`` ``(B, 1, Y, X)`` (the input's size) for the forwards
        in this block: how a trainer hands the reference lesion to the head through nnU-Net's
        ``train_step``, which calls ``network(data)`` and nothing else."""
        previous, self.cls_pool_mask = self.cls_pool_mask, lesion_mask
        try:
            yield
        finally:
            self.cls_pool_mask = previous

    def head_mask(self, seg) -> torch.Tensor | None:
        """The mask the head pools inside: the one given (:meth:`pooling_inside`), else the lesion this
        network segments (labels >= 2 of its full-resolution argmax, no gradient), else none."""
        if not self.pools_inside_lesion:
            return None
        if self.cls_pool_mask is not None:
            return self.cls_pool_mask
        if seg is None:
            return None
        full_resolution = seg[0] if isinstance(seg, (list, tuple)) else seg
        return (full_resolution.detach().argmax(1, keepdim=True) >= FIRST_LESION_LABEL)

    def forward(self, x: torch.Tensor, return_cls: bool = False):
        """Segmentation logits; ``(seg, cls_logits)`` with ``return_cls``; cls logits for a head-only net.

        ``network(x)`` returns the segmentation only, which is what nnU-Net's training loop,
        validation and predictor need, also for the Y-Net. The head's logits of the last forward
        stay in :attr:`last_cls_logits`, which is how the Y-Net loss reaches them without
        changing nnU-Net's ``train_step`` (the forward still runs through DDP's wrapper).
        """
        features = self.encoder(x)
        seg = self.decoder(self.skips(x, features)) if self.decoder is not None else None
        cls_logits = self.cls_head(features[-1], self.head_mask(seg)) if self.cls_head is not None else None
        self.last_cls_logits = cls_logits
        if seg is None:
            return cls_logits
        if not return_cls:
            return seg
        if cls_logits is None:
            raise ValueError("return_cls=True but this network has no classification head")
        return seg, cls_logits

    def classify(self, x: torch.Tensor, lesion_mask: torch.Tensor | None = None) -> torch.Tensor:
        """Class logits of the head. A head that pools inside the lesion reads ``lesion_mask`` when
        given, else (with a decoder) the lesion this network segments in the same pass; otherwise
        the head alone runs, without a decoder pass."""
        if self.cls_head is None:
            raise ValueError("this network has no classification head")
        if self.pools_inside_lesion and lesion_mask is None and self.decoder is not None:
            return self.forward(x, return_cls=True)[1]
        return self.cls_head(self.encoder(x)[-1], lesion_mask)

    def slice_type_probabilities(self, slices: torch.Tensor, batch_size: int = 16,
                                 lesion_masks: torch.Tensor | None = None) -> torch.Tensor:
        """The head's softmax for whole slices ``(S, C, Y, X)`` of any size: ``(S, classes)``, float32.

        The whole-slice classification of the Y-Net and the classifier, in training's validation and
        in prediction alike. Slices are zero-padded at the end (zero is the mean after nnU-Net's CT
        normalisation) to a multiple of :attr:`input_divisor` and classified ``batch_size`` at a time.
        ``lesion_masks`` ``(S, 1, Y, X)``: where a lesion-pooling head looks (padded with "no lesion");
        without them a Y-Net's head pools inside the lesion it segments (:meth:`classify`).
        """
        pad = [(-s) % int(d) for s, d in zip(slices.shape[2:], self.input_divisor[-2:])]
        slices = torch.nn.functional.pad(slices.float(), (0, pad[1], 0, pad[0]))
        if lesion_masks is not None:
            lesion_masks = torch.nn.functional.pad(lesion_masks.float(), (0, pad[1], 0, pad[0]))
        return torch.cat([
            torch.softmax(self.classify(slices[start:start + batch_size],
                                        None if lesion_masks is None else lesion_masks[start:start + batch_size]
                                        ).float(), dim=1)
            for start in range(0, slices.shape[0], batch_size)])

    def deep_supervision_scales(self) -> list[list[float]]:
        """Downsampling factor of each decoder output, highest resolution first.

        The same list nnU-Net derives from the plans' ``strides`` (``pool_op_kernel_sizes``).
        """
        scales = 1 / np.cumprod(np.vstack(self.strides), axis=0)
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
        """Feature-map elements in dynamic-network-architectures' convention (nnU-Net's memory model)."""
        total = self.encoder.compute_conv_feature_map_size(input_size)
        if self.decoder is not None:
            assert self.full_res is not None and self.lateral is not None
            total += self.full_res.compute_conv_feature_map_size(list(input_size))
            size = list(input_size)
            for level, lateral in enumerate(self.lateral, start=1):
                size = [s // st for s, st in zip(size, self.strides[level])]
                total += lateral.compute_conv_feature_map_size(size)
            total += self.decoder.compute_conv_feature_map_size(input_size)
        return total
