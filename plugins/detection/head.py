"""Detection head: a small conv net on the patch grid, CenterNet/TTFNet style.

Every cell of the (optionally upsampled) patch grid predicts a heat map value per class
(is there an object centre of that class here?) and four distances from the cell centre to
the box sides, as fractions of the image size. No anchors, no NMS: peaks of the heat map
are the detections.

On a CNN base the head also reads the finer stage maps it was built for (``levels``, e.g. the
stride-16 and stride-8 maps), fused coarse to fine as a feature pyramid does (TTFNet's design:
one output map at a fine stride rather than a head per level), so small objects get cells of
their own size instead of a stride-32 grid.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # this file imports torch only: `adapters export --merged` ships it beside the heads
    from loradex.core.backbone import EncoderOutput

PRIOR = 0.05
"""Initial object probability of every cell, so the heat map loss starts small."""
BOX_SCALE = 0.1
"""Box distances are ``softplus(x) * BOX_SCALE`` of the image size (about 0.07 at start)."""


def _conv_block(width: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(width, width, 3, padding=1), nn.GroupNorm(8, width), nn.GELU())


class DetectionHead(nn.Module):
    """LayerNorm, a 1x1 projection, ``depth`` 3x3 conv blocks, ``upsample`` x resize, then the two outputs.

    ``forward`` returns ``{"heatmap": (B, C, H, W) logits, "boxes": (B, 4, H, W)}`` where the
    boxes are (left, top, right, bottom) distances from each cell centre, in image fractions.
    """

    def __init__(self, hidden_size: int, num_labels: int, *, width: int = 64, depth: int = 2, upsample: int = 2,
                 levels: Sequence[Sequence[int]] = ()) -> None:
        super().__init__()
        if upsample not in (1, 2, 4):
            raise ValueError(f"upsample must be 1, 2 or 4, got {upsample!r}")
        self.upsample = upsample
        self.norm = nn.LayerNorm(hidden_size)
        self.proj = nn.Sequential(nn.Conv2d(hidden_size, width, 1), nn.GELU())
        # [stride, channels] of the finer maps read, fused coarse to fine (largest stride first)
        order = sorted(((int(s), int(c)) for s, c in levels), reverse=True)
        self.strides = [s for s, _ in order]
        self.lateral = nn.ModuleList(nn.Sequential(nn.Conv2d(c, width, 1), nn.GroupNorm(8, width)) for _, c in order)
        self.smooth = nn.ModuleList(_conv_block(width) for _ in order)
        self.body = nn.Sequential(*[_conv_block(width) for _ in range(depth)])
        self.refine = _conv_block(width) if upsample > 1 else nn.Identity()
        self.heatmap = nn.Conv2d(width, num_labels, 1)
        self.boxes = nn.Conv2d(width, 4, 1)
        nn.init.constant_(self.heatmap.bias, -math.log((1 - PRIOR) / PRIOR))

    def forward(self, features: EncoderOutput) -> dict[str, torch.Tensor]:
        """Heat map logits and box distances on the output grid."""
        x = self.proj(self.norm(features.patches).permute(0, 3, 1, 2))
        for stride, lateral, smooth in zip(self.strides, self.lateral, self.smooth):
            finer = lateral(features.levels[stride].permute(0, 3, 1, 2))
            x = smooth(F.interpolate(x, size=finer.shape[-2:], mode="bilinear", align_corners=False) + finer)
        x = self.body(x)
        if self.upsample > 1:
            x = self.refine(F.interpolate(x, scale_factor=self.upsample, mode="bilinear", align_corners=False))
        return {"heatmap": self.heatmap(x), "boxes": F.softplus(self.boxes(x)) * BOX_SCALE}
