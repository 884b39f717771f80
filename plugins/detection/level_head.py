"""Detection head per pyramid level, FCOS-style (``head: {kind: fcos}``).

The base's maps become one map per output stride (8, 16 and 32 by default): a stride the base
offers is read (a CNN's stage outputs, its last map); a stride it lacks is made from the last map
as ViTDet's simple pyramid does (transposed convolutions up, max pooling down), so a ViT with
one map gets a pyramid too. The levels are fused coarse to fine (FPN's top-down path), then ONE
conv tower, shared by every level, predicts per cell: a score per class, four distances to the
box sides (in cells of that level, times a learnt per-level scale) and a centre-ness.

The outputs are flat over every cell of every level, so the loss (level_loss.py) and the decoder
(NMS over all levels) see one list of candidate points.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

if TYPE_CHECKING:  # this file imports torch only: `adapters export --merged` ships it beside the heads
    from loradex.core.backbone import EncoderOutput

PRIOR = 0.01
"""Initial class probability of every cell (RetinaNet/FCOS), so the focal loss starts small."""
START_CELLS = 2.0
"""Initial box distance, in cells of the level (softplus is inverted for the bias)."""
DEFAULT_STRIDES = (8, 16, 32)


def _conv_block(width: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(width, width, 3, padding=1), nn.GroupNorm(8, width), nn.GELU())


def unreachable_stride(strides: Sequence[int], *, stride: int, read: Collection[int]) -> int | None:
    """The first of ``strides`` neither read (``read``: the strides of the base's maps) nor made from
    the stride-``stride`` last map by the simple pyramid (2 or 4 times up or down); None if none."""
    return next((s for s in strides if s not in read and stride / s not in (1, 4, 2, 0.5, 0.25)), None)


def _resample(width: int, factor: float) -> nn.Module:
    """ViTDet's simple-pyramid step: ``factor`` 2 or 4 up (transposed convs), 1/2 or 1/4 down (max pool)."""
    if factor == 1:
        return nn.Identity()
    if factor < 1:
        return nn.MaxPool2d(round(1 / factor))
    steps: list[nn.Module] = []
    for index in range(round(math.log2(factor))):
        if index:
            steps += [nn.GroupNorm(8, width), nn.GELU()]
        steps.append(nn.ConvTranspose2d(width, width, 2, stride=2))
    return nn.Sequential(*steps)


class LevelDetectionHead(nn.Module):
    """Feature pyramid (read or made), FPN fusion, a shared tower and per-level outputs.

    ``stride``: the base's stride of ``patches``; ``levels``: ``[[stride, channels], ...]`` of the
    finer maps read from ``EncoderOutput.levels``; ``strides``: the output levels.

    ``forward`` returns flat tensors over the N cells of all levels, finest level first:
    ``logits`` (B, N, C), ``boxes`` (B, N, 4) normalised xyxy, ``centerness`` (B, N) logits,
    ``points`` (N, 2) normalised cell centres, ``cells`` (N, 2) normalised cell sizes and
    ``level`` (N,) the level index of each cell (0 = finest).
    """

    def __init__(self, hidden_size: int, num_labels: int, *, stride: int, width: int = 64, depth: int = 2,
                 levels: Sequence[Sequence[int]] = (), strides: Sequence[int] = DEFAULT_STRIDES) -> None:
        super().__init__()
        read = {int(s): int(c) for s, c in levels}
        self.strides = sorted(int(s) for s in strides)
        if not self.strides:
            raise ValueError("strides must name at least one output stride")
        if (unmade := unreachable_stride(self.strides, stride=stride, read=read)) is not None:
            raise ValueError(f"output stride {unmade} cannot be made from the base's stride-{stride} map "
                             "(a factor of 2 or 4 up or down)")
        self.read = sorted(s for s in self.strides if s in read)
        # the last map normalised and projected once (when a level comes from it); a made level resamples
        # the projection (cheap at ``width`` channels)
        uses_last = any(s not in read for s in self.strides)
        self.norm = nn.LayerNorm(hidden_size) if uses_last else None
        self.proj = nn.Sequential(nn.Conv2d(hidden_size, width, 1), nn.GroupNorm(8, width)) if uses_last else None
        self.inlets = nn.ModuleDict()
        for s in self.strides:
            if s in read:
                self.inlets[str(s)] = nn.Sequential(nn.Conv2d(read[s], width, 1), nn.GroupNorm(8, width))
            else:
                self.inlets[str(s)] = _resample(width, stride / s)
        self.smooth = nn.ModuleDict({str(s): _conv_block(width) for s in self.strides})
        self.tower = nn.Sequential(*[_conv_block(width) for _ in range(depth)])
        self.classes = nn.Conv2d(width, num_labels, 3, padding=1)
        self.distances = nn.Conv2d(width, 4, 3, padding=1)
        self.centerness = nn.Conv2d(width, 1, 3, padding=1)
        self.scales = nn.Parameter(torch.ones(len(self.strides)))
        nn.init.constant_(self.classes.bias, -math.log((1 - PRIOR) / PRIOR))
        nn.init.constant_(self.distances.bias, math.log(math.expm1(START_CELLS)))

    def pyramid(self, features: EncoderOutput) -> list[torch.Tensor]:
        """(B, width, H, W) maps, one per output stride, finest first, fused coarse to fine."""
        last = None if self.proj is None else self.proj(self.norm(features.patches).permute(0, 3, 1, 2))
        maps = {}
        for s in self.strides:
            inlet = self.inlets[str(s)]
            maps[s] = inlet(features.levels[s].permute(0, 3, 1, 2)) if s in self.read else inlet(last)
        fused: dict[int, torch.Tensor] = {}
        coarser = None
        for s in reversed(self.strides):
            x = maps[s] if coarser is None else maps[s] + F.interpolate(coarser, size=maps[s].shape[-2:], mode="nearest")
            fused[s] = coarser = self.smooth[str(s)](x)
        return [fused[s] for s in self.strides]

    def forward(self, features: EncoderOutput) -> dict[str, torch.Tensor]:
        """Class logits, boxes, centre-ness and the cell layout, flat over every level."""
        logits, boxes, centerness, points, cells, level = [], [], [], [], [], []
        for index, x in enumerate(self.pyramid(features)):
            x = self.tower(x)
            batch, _, height, width = x.shape
            # the cell layout in float32 whatever the autocast dtype: bf16 would move centres by part of a cell
            size = torch.tensor([1 / width, 1 / height], device=x.device)
            ys = (torch.arange(height, device=x.device, dtype=torch.float32) + 0.5) / height
            xs = (torch.arange(width, device=x.device, dtype=torch.float32) + 0.5) / width
            grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
            centre = torch.stack([grid_x, grid_y], dim=-1).reshape(-1, 2)
            d = F.softplus(self.distances(x).float() * self.scales[index]).flatten(2).transpose(1, 2)  # (B, HW, 4) cells
            d = d * size.repeat(2)
            boxes.append(torch.cat([centre - d[..., :2], centre + d[..., 2:]], dim=-1))
            logits.append(self.classes(x).flatten(2).transpose(1, 2))
            centerness.append(self.centerness(x).flatten(1))
            points.append(centre)
            cells.append(size.expand(height * width, 2))
            level.append(torch.full((height * width,), index, device=x.device, dtype=torch.long))
        return {"logits": torch.cat(logits, 1), "boxes": torch.cat(boxes, 1), "centerness": torch.cat(centerness, 1),
                "points": torch.cat(points), "cells": torch.cat(cells), "level": torch.cat(level)}
