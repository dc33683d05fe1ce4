"""Task heads that sit on encoder features (segmentation_models_pytorch's head idea)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

#: How a classification head pools its feature map: over the whole map, or inside the lesion mask.
POOLINGS = ("global", "lesion")


def lesion_pool(features: torch.Tensor, lesion_mask: torch.Tensor) -> torch.Tensor:
    """Average of ``features`` ``(B, C, h, w)`` inside ``lesion_mask`` ``(B, 1, H, W)``: ``(B, C)``.

    The mask (at the image's resolution, any multiple of the map's) is reduced to the share of each
    feature cell that is lesion, and each cell's feature counts by that share: a lesion of 60 pixels
    inside one 32 x 32 cell of a 1/32 map gives exactly that cell's feature, where a global average
    over a 4 x 4 map would give it 1/16 of the weight. A sample whose mask is empty falls back to the
    global average, so the head always answers.
    """
    weights = F.adaptive_avg_pool2d(lesion_mask.to(features.dtype), features.shape[-2:])  # (B, 1, h, w)
    total = weights.sum(dim=(2, 3))  # (B, 1)
    inside = (features * weights).sum(dim=(2, 3)) / total.clamp_min(torch.finfo(features.dtype).tiny)
    return torch.where(total > 0, inside, features.mean(dim=(2, 3)))


class ClassificationHead(nn.Module):
    """Pooling, optional dropout, one linear layer: image-level logits from a feature map.

    A Y-Net is a U-Net with this head on the deepest encoder feature; the classification
    baseline is the encoder with this head alone.

    Args:
        in_channels: channels of the feature map it reads.
        num_classes: number of logits (lesion types).
        dropout: dropout probability before the linear layer (0 disables it).
        pooling: ``"global"`` (average over the whole map) or ``"lesion"`` (:func:`lesion_pool`
            when a mask is given, the global average without one).
    """

    def __init__(self, in_channels: int, num_classes: int, dropout: float = 0.0, pooling: str = "global"):
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"unknown pooling {pooling!r}; choose one of {POOLINGS}")
        self.pooling = pooling
        self.dropout = nn.Dropout(dropout) if dropout > 0 else nn.Identity()
        self.fc = nn.Linear(in_channels, num_classes)

    def forward(self, features: torch.Tensor, lesion_mask: torch.Tensor | None = None) -> torch.Tensor:
        if self.pooling == "lesion" and lesion_mask is not None:
            pooled = lesion_pool(features, lesion_mask)
        else:
            pooled = features.mean(dim=(2, 3))
        return self.fc(self.dropout(pooled))
