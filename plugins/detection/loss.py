"""Training targets and loss of the dense head (TTFNet-style).

Targets per image: ``{"boxes": (N, 4) normalised xyxy, "labels": (N,) long, "size": (2,)}``.
Each object puts an elliptical Gaussian, peaking at 1 in the cell holding its centre, on the
heat map of its class. Heat maps are learnt with CenterNet's penalty-reduced focal loss; the
box distances with a GIoU loss on every cell inside an object's Gaussian, weighted by it
(so cells near the centre count most, and several cells per object give gradient).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F

from .boxes import generalized_iou

SIGMA_FACTOR = 0.54 / 6
"""Gaussian sigma as a fraction of the box side (TTFNet's alpha = 0.54)."""
MIN_SIGMA = 0.5
"""Smallest sigma, in cells, so that small objects still spread over their neighbours."""
REGRESSION_CUTOFF = 0.05
"""Cells whose Gaussian value is below this do not regress the object's box."""
BOX_WEIGHT = 2.0


def cell_centres(height: int, width: int, device: torch.device) -> torch.Tensor:
    """(H, W, 2) normalised (x, y) centres of the cells of an H x W grid."""
    ys = (torch.arange(height, device=device, dtype=torch.float32) + 0.5) / height
    xs = (torch.arange(width, device=device, dtype=torch.float32) + 0.5) / width
    grid_y, grid_x = torch.meshgrid(ys, xs, indexing="ij")
    return torch.stack([grid_x, grid_y], dim=-1)


def decode_boxes(distances: torch.Tensor) -> torch.Tensor:
    """(B, 4, H, W) left/top/right/bottom distances → (B, H, W, 4) normalised xyxy boxes."""
    _, _, height, width = distances.shape
    centres = cell_centres(height, width, distances.device)
    d = distances.float().permute(0, 2, 3, 1)
    return torch.cat([centres - d[..., :2], centres + d[..., 2:]], dim=-1)


def image_targets(boxes: torch.Tensor, labels: torch.Tensor, num_labels: int, height: int, width: int
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Heat map (C, H, W), box target (H, W, 4) and regression weight (H, W) of one image."""
    device = boxes.device
    if boxes.numel() == 0:
        heat = torch.zeros(num_labels, height, width, device=device)
        return heat, torch.zeros(height, width, 4, device=device), torch.zeros(height, width, device=device)
    boxes = boxes.float()
    size = boxes.new_tensor([width, height])
    centre = (boxes[:, :2] + boxes[:, 2:]) / 2 * size  # in cells
    cell = centre.floor().clamp(min=0).minimum(size - 1)
    peak = cell + 0.5
    sigma = ((boxes[:, 2:] - boxes[:, :2]) * size * SIGMA_FACTOR).clamp(min=MIN_SIGMA)
    ys = torch.arange(height, device=device, dtype=torch.float32) + 0.5
    xs = torch.arange(width, device=device, dtype=torch.float32) + 0.5
    gx = ((xs[None, :] - peak[:, :1]) / sigma[:, :1]) ** 2  # (N, W)
    gy = ((ys[None, :] - peak[:, 1:]) / sigma[:, 1:]) ** 2  # (N, H)
    gauss = torch.exp(-(gy[:, :, None] + gx[:, None, :]) / 2)  # (N, H, W)
    one_hot = F.one_hot(labels.long(), num_labels).to(gauss.dtype)  # (N, C)
    heat = (one_hot[:, :, None, None] * gauss[:, None]).amax(dim=0)  # (C, H, W)
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    inside = gauss >= REGRESSION_CUTOFF
    key = torch.where(inside, areas[:, None, None], torch.full_like(gauss, float("inf")))
    owner = key.argmin(dim=0)  # the smallest object claims a shared cell
    weight = torch.gather(gauss, 0, owner[None]).squeeze(0) * inside.any(dim=0)
    return heat, boxes[owner], weight


def focal_loss(logits: torch.Tensor, heat: torch.Tensor, num_objects: float) -> torch.Tensor:
    """CenterNet's penalty-reduced focal loss, normalised by the number of objects."""
    logits = logits.float()
    prob = logits.sigmoid()
    positive = heat.eq(1).float()
    pos = -F.logsigmoid(logits) * (1 - prob) ** 2 * positive
    neg = -F.logsigmoid(-logits) * prob**2 * (1 - heat) ** 4 * (1 - positive)
    return (pos.sum() + neg.sum()) / max(num_objects, 1.0)


def detection_loss(outputs: Mapping[str, torch.Tensor], targets: Sequence[Mapping[str, torch.Tensor]]) -> torch.Tensor:
    """Focal heat map loss plus weighted GIoU box loss of one batch."""
    logits = outputs["heatmap"]
    _, num_labels, height, width = logits.shape
    heats, box_targets, weights = zip(*(
        image_targets(t["boxes"], t["labels"], num_labels, height, width) for t in targets
    ))
    heat = torch.stack(heats)
    box_target = torch.stack(box_targets)
    weight = torch.stack(weights)
    num_objects = float(sum(len(t["labels"]) for t in targets))
    loss = focal_loss(logits, heat, num_objects)
    if weight.sum() > 0:
        predicted = decode_boxes(outputs["boxes"])
        giou = generalized_iou(predicted, box_target)
        loss = loss + BOX_WEIGHT * ((1 - giou) * weight).sum() / weight.sum()
    return loss
