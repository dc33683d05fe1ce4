"""Task heads that sit on encoder features (segmentation_models_pytorch's head idea)."""

from __future__ import annotations

import torch
from torch import nn


class ClassificationHead(nn.Module):
    """Global average pool, optional dropout, one linear layer: image-level logits from a feature map.

    A Y-Net is a U-Net with this head on the deepest encoder feature; the classification
    baseline is the encoder with this head alone.

    Args:
        in_channels: channels of the feature map it reads.
        num_classes: number of logits (lesion types).
        dropout: dropout probability before the linear layer (0 disables it).
    """

    def __init__(self, in_channels: int, num_classes: int, dropout: float = 0.0):
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc = nn.Linear(in_channels, num_classes)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.fc(self.dropout(torch.flatten(self.pool(features), 1)))
