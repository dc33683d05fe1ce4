"""SE-ResNet encoder (2-D) that speaks dynamic-network-architectures' encoder interface.

A ResNet (He et al.) with a squeeze-and-excitation module in every residual block (Hu et al.,
"Squeeze-and-Excitation Networks"). Parameter names equal timm's ``seresnet18/34/50`` key for key
(without timm's ``fc.*`` classifier), so ImageNet checkpoints load without renaming; the
conversion lives in :mod:`nnunet_joint.network.imagenet`.

Two details follow timm rather than the original paper, because the weights must fit:
the SE bottleneck width is ``make_divisible(channels / 16, 8)`` (64 -> 8, not 4), and the
bottleneck block strides in its 3x3 conv (ResNet v1.5).

The encoder has five resolution levels, so that ``UNetDecoder`` gets a skip at each:

====== ==================================== ======================
level  modules                              stride
====== ==================================== ======================
0      conv1 (7x7) + bn1 + relu             ``strides[0]``
1      maxpool (3x3) + layer1               ``strides[1]`` (pool)
2..4   layer2..layer4                       ``strides[2..4]`` (first block)
====== ==================================== ======================

The default strides are timm's (2, 2, 2, 2, 2: total stride 32), so pretrained filters see the
image at the scale they were trained on. Strides do not change any weight shape, so weights load
whatever the strides; :class:`~nnunet_joint.network.unet.SEResNetUNet` gets its full-resolution
output from a separate full-resolution level, not from a stride-1 stem.
"""

from __future__ import annotations

import re
from typing import Sequence

import numpy as np
import torch
from torch import nn

#: Encoder names accepted by :class:`~nnunet_joint.network.unet.SEResNetUNet`, with their depth.
ENCODER_DEPTHS: dict[str, int] = {"seresnet18": 18, "seresnet34": 34, "seresnet50": 50}

#: Parameter groups, shallow to deep, as regular expressions over encoder parameter names
#: (timm's ``group_matcher`` idea). Freezing schedules count groups from the first one.
PARAM_GROUPS: dict[str, str] = {
    "stem": r"^conv1\.|^bn1\.",
    "stage1": r"^layer1\.",
    "stage2": r"^layer2\.",
    "stage3": r"^layer3\.",
    "stage4": r"^layer4\.",
}

STAGE_WIDTHS = (64, 128, 256, 512)
SE_REDUCTION = 16

StrideLike = int | Sequence[int]


def se_reduced_channels(channels: int, reduction: int = SE_REDUCTION, divisor: int = 8) -> int:
    """Width of the SE bottleneck, rounded as timm's ``make_divisible(channels / reduction, 8)``."""
    value = channels / reduction
    return max(divisor, int(value + divisor / 2) // divisor * divisor)


class SEModule(nn.Module):
    """Squeeze (global average) and excite (two 1x1 convs with bias, sigmoid gate) a feature map."""

    def __init__(self, channels: int, reduction: int = SE_REDUCTION):
        super().__init__()
        hidden = se_reduced_channels(channels, reduction)
        self.fc1 = nn.Conv2d(channels, hidden, kernel_size=1, bias=True)
        self.act = nn.ReLU(inplace=True)
        self.fc2 = nn.Conv2d(hidden, channels, kernel_size=1, bias=True)
        self.gate = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = x.mean(dim=(2, 3), keepdim=True)
        return x * self.gate(self.fc2(self.act(self.fc1(s))))


def _downsample(in_channels: int, out_channels: int, stride: tuple[int, int]) -> nn.Sequential | None:
    """The 1x1 projection shortcut (``downsample.0`` conv, ``downsample.1`` norm), when needed."""
    if tuple(stride) == (1, 1) and in_channels == out_channels:
        return None
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=1, stride=stride, bias=False),
        nn.BatchNorm2d(out_channels),
    )


class SEBasicBlock(nn.Module):
    """Two 3x3 convs, SE on the residual branch before the addition (SE-ResNet-18/34)."""

    expansion = 1

    def __init__(self, in_channels: int, planes: int, stride: tuple[int, int] = (1, 1)):
        super().__init__()
        out_channels = planes * self.expansion
        self.conv1 = nn.Conv2d(in_channels, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.act1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, out_channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.se = SEModule(out_channels)
        self.act2 = nn.ReLU(inplace=True)
        self.downsample = _downsample(in_channels, out_channels, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        y = self.act1(self.bn1(self.conv1(x)))
        y = self.se(self.bn2(self.conv2(y)))
        return self.act2(y + shortcut)


class SEBottleneck(nn.Module):
    """1x1 - 3x3 (strided) - 1x1 convs, SE before the addition (SE-ResNet-50)."""

    expansion = 4

    def __init__(self, in_channels: int, planes: int, stride: tuple[int, int] = (1, 1)):
        super().__init__()
        out_channels = planes * self.expansion
        self.conv1 = nn.Conv2d(in_channels, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.act1 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.act2 = nn.ReLU(inplace=True)
        self.conv3 = nn.Conv2d(planes, out_channels, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(out_channels)
        self.se = SEModule(out_channels)
        self.act3 = nn.ReLU(inplace=True)
        self.downsample = _downsample(in_channels, out_channels, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        y = self.act1(self.bn1(self.conv1(x)))
        y = self.act2(self.bn2(self.conv2(y)))
        y = self.se(self.bn3(self.conv3(y)))
        return self.act3(y + shortcut)


#: depth -> (block class, number of blocks per stage); the standard ResNet layouts.
ARCHITECTURES: dict[int, tuple[type[nn.Module], tuple[int, int, int, int]]] = {
    18: (SEBasicBlock, (2, 2, 2, 2)),
    34: (SEBasicBlock, (3, 4, 6, 3)),
    50: (SEBottleneck, (3, 4, 6, 3)),
}


def normalize_strides(strides: Sequence[StrideLike], n_levels: int = 5) -> list[list[int]]:
    """Turn ``(2, (2, 1), ...)`` into ``[[2, 2], [2, 1], ...]``, checking there is one per level."""
    if len(strides) != n_levels:
        raise ValueError(f"expected {n_levels} strides (one per encoder level), got {len(strides)}: {strides}")
    out: list[list[int]] = []
    for s in strides:
        pair = [int(s), int(s)] if np.isscalar(s) else [int(v) for v in s]
        if len(pair) != 2 or min(pair) < 1:
            raise ValueError(f"each stride must be a positive int or a pair of them (2-D), got {s!r}")
        out.append(pair)
    return out


class SEResNetEncoder(nn.Module):
    """SE-ResNet-18/34/50 feature extractor returning the five level outputs (the U-Net skips).

    Its modules are timm-compatible; ``output_channels`` and ``strides`` describe the levels
    (the U-Net's decoder reads its own description, :class:`~nnunet_joint.network.unet.DecoderSkips`).

    Args:
        input_channels: image channels (1 for CT).
        depth: 18, 34 or 50.
        strides: one stride per level (int or per-axis pair); see the module docstring.
        return_skips: return all five level outputs (True) or only the deepest one.
    """

    param_groups: dict[str, str] = PARAM_GROUPS

    def __init__(
        self,
        input_channels: int,
        depth: int = 18,
        strides: Sequence[StrideLike] = (2, 2, 2, 2, 2),
        return_skips: bool = True,
    ):
        super().__init__()
        if depth not in ARCHITECTURES:
            raise ValueError(f"SE-ResNet depth must be one of {sorted(ARCHITECTURES)}, got {depth}")
        block, blocks_per_stage = ARCHITECTURES[depth]
        self.depth = depth
        self.input_channels = input_channels
        self.strides = normalize_strides(strides)
        self.return_skips = return_skips

        self.conv1 = nn.Conv2d(input_channels, 64, 7, stride=tuple(self.strides[0]), padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=tuple(self.strides[1]), padding=1)
        in_channels = 64
        for i, (planes, n_blocks) in enumerate(zip(STAGE_WIDTHS, blocks_per_stage)):
            first_stride = (1, 1) if i == 0 else tuple(self.strides[i + 1])  # layer1's stride is the pool's
            blocks = [block(in_channels, planes, first_stride)]
            in_channels = planes * block.expansion
            blocks += [block(in_channels, planes) for _ in range(n_blocks - 1)]
            setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
        self.output_channels = [64] + [w * block.expansion for w in STAGE_WIDTHS]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor] | torch.Tensor:
        skips = [self.relu(self.bn1(self.conv1(x)))]
        skips.append(self.layer1(self.maxpool(skips[-1])))
        for layer in (self.layer2, self.layer3, self.layer4):
            skips.append(layer(skips[-1]))
        return skips if self.return_skips else skips[-1]

    def group_index(self, param_name: str) -> int:
        """Index (0 = stem ... 4 = stage4) of the group an encoder parameter/buffer name belongs to."""
        for i, pattern in enumerate(self.param_groups.values()):
            if re.match(pattern, param_name):
                return i
        raise KeyError(f"{param_name} is in no encoder parameter group")

    def group_modules(self, n_groups: int) -> list[nn.Module]:
        """Modules (with parameters) belonging to the first ``n_groups`` groups, e.g. to put their norms in eval mode."""
        patterns = list(self.param_groups.values())[:n_groups]
        return [m for name, m in self.named_modules()
                if name and any(re.match(p, name + ".") for p in patterns)]

    def compute_conv_feature_map_size(self, input_size: Sequence[int]) -> np.int64:
        """Feature-map elements in dynamic-network-architectures' convention (nnU-Net's memory model).

        One unit per conv/norm/nonlinearity output element and one per residual sum, as its
        ``BasicBlockD``/``BottleneckD`` count them; the SE gates (one value per channel) are left out.
        """
        size = [s // st for s, st in zip(input_size, self.strides[0])]
        total = np.prod([64, *size], dtype=np.int64)  # stem
        size = [s // st for s, st in zip(size, self.strides[1])]  # max-pool: no conv
        for level in range(1, 5):
            for block in getattr(self, f"layer{level}"):
                stride = block.conv2.stride if isinstance(block, SEBottleneck) else block.conv1.stride
                out = [s // st for s, st in zip(size, stride)]
                if isinstance(block, SEBottleneck):
                    total += np.prod([block.conv1.out_channels, *size], dtype=np.int64)
                    total += np.prod([block.conv2.out_channels, *out], dtype=np.int64)
                    total += np.prod([block.conv3.out_channels, *out], dtype=np.int64)
                    out_channels = block.conv3.out_channels
                else:
                    total += 2 * np.prod([block.conv1.out_channels, *out], dtype=np.int64)
                    out_channels = block.conv2.out_channels
                n_outputs = 2 if block.downsample is not None else 1  # projection shortcut, residual sum
                total += n_outputs * np.prod([out_channels, *out], dtype=np.int64)
                size = out
        return total
