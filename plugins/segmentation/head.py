"""Segmentation head: the patch grid → per-pixel class logits (torch only: `export --merged` ships it).

The grid (B, h, w, D) is normalised, projected to ``channels``, upsampled by ``upsample`` 2x stages
(bilinear, then a 3x3 convolution) and turned into one logit map per class at (2^upsample · h, 2^upsample · w);
the loss and the prediction resize those maps to the mask or image size.
"""

from __future__ import annotations

import torch
from torch import nn


class SegmentationHead(nn.Module):
    """Per-pixel classifier over the backbone's patch grid; ``forward`` returns (B, C, H, W) logits."""

    def __init__(self, hidden_size: int, num_classes: int, *, channels: int = 64, upsample: int = 2) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(hidden_size)
        self.project = nn.Conv2d(hidden_size, channels, kernel_size=1)
        stages: list[nn.Module] = []
        for _ in range(upsample):
            stages += [nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                       nn.Conv2d(channels, channels, kernel_size=3, padding=1, bias=False),
                       nn.GroupNorm(8 if channels % 8 == 0 else 1, channels), nn.GELU()]
        self.decode = nn.Sequential(*stages)
        self.out = nn.Conv2d(channels, num_classes, kernel_size=1)

    def forward(self, features) -> torch.Tensor:
        """``features.patches`` (B, h, w, D) → class logits (B, num_classes, H, W)."""
        grid = self.norm(features.patches).permute(0, 3, 1, 2)
        return self.out(self.decode(self.project(grid)))
