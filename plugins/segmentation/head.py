"""Segmentation head: features → per-pixel class logits (torch only: `export --merged` ships it).

The grid (B, h, w, D) is normalised and projected to ``channels``. On a base with finer maps
(a CNN's stride-16 and stride-8 stages, ``features.levels``) the head reads the ``levels`` it was
built for, coarse to fine as a feature pyramid does: upsample, add the level's 1x1 projection,
smooth with a 3x3 convolution. Then ``upsample`` 2x stages (bilinear, a 3x3 convolution) and one
logit map per class; the loss and the prediction resize those maps to the mask or image size.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn


def _conv_norm(inputs: int, channels: int, kernel: int) -> list[nn.Module]:
    return [nn.Conv2d(inputs, channels, kernel_size=kernel, padding=kernel // 2, bias=False),
            nn.GroupNorm(8 if channels % 8 == 0 else 1, channels)]


class SegmentationHead(nn.Module):
    """Per-pixel classifier over the backbone's grid (and finer levels); ``forward`` returns (B, C, H, W) logits."""

    def __init__(self, hidden_size: int, num_classes: int, *, channels: int = 64, upsample: int = 2,
                 levels: Sequence[Sequence[int]] = ()) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(hidden_size)
        self.project = nn.Conv2d(hidden_size, channels, kernel_size=1)
        # [stride, width] pairs, fused coarse to fine (the largest stride first)
        self.strides = [int(stride) for stride, _ in sorted(levels, reverse=True)]
        self.lateral = nn.ModuleList(nn.Sequential(*_conv_norm(int(width), channels, 1))
                                     for _, width in sorted(levels, reverse=True))
        self.smooth = nn.ModuleList(nn.Sequential(*_conv_norm(channels, channels, 3), nn.GELU()) for _ in self.strides)
        stages: list[nn.Module] = []
        for _ in range(upsample):
            stages += [nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False),
                       *_conv_norm(channels, channels, 3), nn.GELU()]
        self.decode = nn.Sequential(*stages)
        self.out = nn.Conv2d(channels, num_classes, kernel_size=1)

    def forward(self, features) -> torch.Tensor:
        """``features.patches`` (B, h, w, D), and ``features.levels`` it reads → class logits (B, num_classes, H, W)."""
        x = self.project(self.norm(features.patches).permute(0, 3, 1, 2))
        for stride, lateral, smooth in zip(self.strides, self.lateral, self.smooth):
            finer = lateral(features.levels[stride].permute(0, 3, 1, 2))
            x = smooth(F.interpolate(x, size=finer.shape[-2:], mode="bilinear", align_corners=False) + finer)
        return self.out(self.decode(x))
