"""Keypoint head: patch tokens → heatmaps (ViTPose "simple decoder" style) → coordinates.

The patch grid (B, h, w, D) is normalised, projected to a few channels, upsampled by 2x
transposed convolutions (two by default) and refined by a 3x3 convolution into one heatmap
per keypoint at (4h, 4w). On a CNN base the finer stage maps it was built for (``levels``) are
fused first, coarse to fine (upsample, add the level's 1x1 projection, smooth), so the heatmaps
start from the stride-8 map. Coordinates come out of the heatmaps by a soft-argmax (the expectation of the
spatial softmax), which is differentiable and gives sub-cell precision.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # this file imports torch only: `adapters export --merged` ships it beside the heads
    from loradex.core.backbone import EncoderOutput


def soft_argmax(heatmaps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(B, K, H, W) logits → (coords (B, K, 2) as x, y in 0..1 of the image, scores (B, K) in 0..1).

    Cell (i, j) stands for the point ((j + 0.5) / W, (i + 0.5) / H). The score is the softmax
    mass within one cell of the expected position: high when the heatmap has one sharp peak.
    """
    b, k, h, w = heatmaps.shape
    probs = heatmaps.float().flatten(2).softmax(-1).view(b, k, h, w)
    xs = (torch.arange(w, device=heatmaps.device, dtype=probs.dtype) + 0.5) / w
    ys = (torch.arange(h, device=heatmaps.device, dtype=probs.dtype) + 0.5) / h
    x = (probs.sum(2) * xs).sum(-1)
    y = (probs.sum(3) * ys).sum(-1)
    coords = torch.stack([x, y], dim=-1)
    near_x = ((xs.view(1, 1, 1, w) - x[..., None, None]).abs() <= 1.5 / w)
    near_y = ((ys.view(1, 1, h, 1) - y[..., None, None]).abs() <= 1.5 / h)
    scores = (probs * (near_x & near_y)).sum((2, 3)).clamp(0, 1)
    return coords, scores


class KeypointHead(nn.Module):
    """Heatmap decoder over the patch grid; ``forward`` returns heatmaps, coordinates and scores.

    ``channels`` is the decoder width and ``upsample`` the number of 2x transposed-convolution
    stages (2: heatmaps at 4x the patch grid).
    """

    def __init__(self, hidden_size: int, num_keypoints: int, *, channels: int = 64, upsample: int = 2,
                 levels: Sequence[Sequence[int]] = ()) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(hidden_size)
        self.project = nn.Conv2d(hidden_size, channels, kernel_size=1)
        order = sorted(((int(s), int(c)) for s, c in levels), reverse=True)  # [stride, channels], coarse first
        self.strides = [s for s, _ in order]
        self.lateral = nn.ModuleList(nn.Sequential(nn.Conv2d(c, channels, 1, bias=False), nn.BatchNorm2d(channels))
                                     for _, c in order)
        self.smooth = nn.ModuleList(nn.Sequential(nn.Conv2d(channels, channels, 3, padding=1, bias=False),
                                                  nn.BatchNorm2d(channels), nn.GELU()) for _ in order)
        stages: list[nn.Module] = []
        for _ in range(upsample):
            stages += [nn.ConvTranspose2d(channels, channels, kernel_size=4, stride=2, padding=1, bias=False),
                       nn.BatchNorm2d(channels), nn.GELU()]
        self.upsample = nn.Sequential(*stages)
        self.refine = nn.Sequential(nn.Conv2d(channels, channels, kernel_size=3, padding=1, bias=False),
                                    nn.BatchNorm2d(channels), nn.GELU())
        self.out = nn.Conv2d(channels, num_keypoints, kernel_size=1)

    def forward(self, features: EncoderOutput) -> dict[str, torch.Tensor]:
        """``{"heatmaps": (B, K, H, W) logits, "coords": (B, K, 2) in 0..1, "scores": (B, K)}``."""
        x = self.project(self.norm(features.patches).permute(0, 3, 1, 2))
        for stride, lateral, smooth in zip(self.strides, self.lateral, self.smooth):
            finer = lateral(features.levels[stride].permute(0, 3, 1, 2))
            x = smooth(F.interpolate(x, size=finer.shape[-2:], mode="bilinear", align_corners=False) + finer)
        heatmaps = self.out(self.refine(self.upsample(x)))
        coords, scores = soft_argmax(heatmaps)
        return {"heatmaps": heatmaps, "coords": coords, "scores": scores}
