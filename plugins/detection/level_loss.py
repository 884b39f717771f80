"""Assignment and loss of the per-level head (level_head.py), as FCOS does it.

A cell is a positive of an object when it lies inside the box AND within ``CENTRE_RADIUS`` cells
of the box centre (centre sampling), and the object's size suits the cell's level: the largest
distance from the cell to a side of the box is ``LEVEL_RANGE`` cells of the level (the finest level takes anything
smaller, the coarsest anything larger). A cell claimed by several objects takes the smallest.
Losses: sigmoid focal loss on the class scores of every cell, GIoU on the boxes of the positives
(weighted by their centre-ness target), binary cross-entropy on the centre-ness of the positives.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torchvision.ops import generalized_box_iou_loss, sigmoid_focal_loss

CENTRE_RADIUS = 1.5
"""FCOS's centre-sampling radius, in cells of the level."""
LEVEL_RANGE = (4.0, 8.0)
"""The largest cell-to-side distance, in cells, that a level (not the finest/coarsest) takes (FCOS's m_i)."""


def assign(points: torch.Tensor, cells: torch.Tensor, level: torch.Tensor, boxes: torch.Tensor
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """The object each cell regresses (-1: background) and the (N, 4) box it regresses, for one image."""
    count = points.shape[0]
    if boxes.numel() == 0:
        return torch.full((count,), -1, dtype=torch.long, device=points.device), points.new_zeros(count, 4)
    boxes = boxes.to(points)
    p = points[:, None, :]  # (N, 1, 2)
    sides = torch.cat([p - boxes[None, :, :2], boxes[None, :, 2:] - p], dim=-1)  # (N, M, 4) l, t, r, b
    in_cells = sides / cells.repeat(1, 2)[:, None, :]
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2
    near = ((p - centre[None]).abs() / cells[:, None, :] <= CENTRE_RADIUS).all(-1)
    inside = sides.min(-1).values > 0
    reach = in_cells.max(-1).values
    finest, coarsest = level == 0, level == level.max()
    low = torch.where(finest, torch.zeros_like(reach[:, 0]), torch.full_like(reach[:, 0], LEVEL_RANGE[0]))
    high = torch.where(coarsest, torch.full_like(reach[:, 0], float("inf")), torch.full_like(reach[:, 0], LEVEL_RANGE[1]))
    fits = (reach >= low[:, None]) & (reach <= high[:, None])
    candidate = near & inside & fits
    area = ((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1]))[None].expand(count, -1)
    area = torch.where(candidate, area, torch.full_like(area, float("inf")))
    smallest, owner = area.min(-1)
    owner = torch.where(torch.isfinite(smallest), owner, torch.full_like(owner, -1))
    return owner, boxes[owner.clamp(min=0)]


def centerness_target(points: torch.Tensor, boxes: torch.Tensor) -> torch.Tensor:
    """FCOS's centre-ness of each point in its box: sqrt(min(l, r)/max(l, r) * min(t, b)/max(t, b))."""
    l, t = (points - boxes[:, :2]).unbind(-1)
    r, b = (boxes[:, 2:] - points).unbind(-1)
    lr = torch.minimum(l, r) / torch.maximum(l, r).clamp(min=1e-9)
    tb = torch.minimum(t, b) / torch.maximum(t, b).clamp(min=1e-9)
    return (lr.clamp(min=0) * tb.clamp(min=0)).sqrt()


def level_loss(outputs: Mapping[str, torch.Tensor], targets: Sequence[Mapping[str, torch.Tensor]]) -> torch.Tensor:
    """Focal class loss, centre-ness-weighted GIoU box loss and centre-ness BCE of one batch."""
    logits = outputs["logits"].float()
    points, cells, level = outputs["points"].float(), outputs["cells"].float(), outputs["level"]
    owners, regress = zip(*(assign(points, cells, level, t["boxes"].float()) for t in targets))
    owner, regress = torch.stack(owners), torch.stack(regress)  # (B, N), (B, N, 4)
    positive = owner >= 0
    labels = torch.stack([t["labels"].long().to(owner.device)[o.clamp(min=0)] if len(t["labels"]) else
                          torch.zeros_like(o) for t, o in zip(targets, owners)])
    classes = torch.zeros_like(logits)
    classes[positive] = F.one_hot(labels[positive], logits.shape[-1]).to(logits.dtype)
    num_positive = max(float(positive.sum()), 1.0)
    loss = sigmoid_focal_loss(logits, classes, reduction="sum") / num_positive
    if positive.any():
        target_centre = centerness_target(points.expand_as(regress[..., :2])[positive], regress[positive])
        weight = target_centre.clamp(min=1e-6)
        giou = generalized_box_iou_loss(outputs["boxes"].float()[positive], regress[positive], reduction="none")
        loss = loss + (giou * weight).sum() / weight.sum()
        loss = loss + F.binary_cross_entropy_with_logits(outputs["centerness"].float()[positive], target_centre)
    return loss
