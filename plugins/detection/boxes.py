"""Box operations on torch tensors (the dense head's; the per-level head uses torchvision.ops too).

Boxes are ``(x0, y0, x1, y1)`` rows; conversions to and from centre format reuse
``transformers.image_transforms``.
"""

from __future__ import annotations

import torch


def box_area(boxes: torch.Tensor) -> torch.Tensor:
    """Areas of (..., 4) xyxy boxes (zero for empty boxes)."""
    return (boxes[..., 2] - boxes[..., 0]).clamp(min=0) * (boxes[..., 3] - boxes[..., 1]).clamp(min=0)


def generalized_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """Element-wise generalised IoU of two (..., 4) xyxy box tensors of the same shape."""
    top_left = torch.maximum(a[..., :2], b[..., :2])
    bottom_right = torch.minimum(a[..., 2:], b[..., 2:])
    inter = (bottom_right - top_left).clamp(min=0).prod(-1)
    union = box_area(a) + box_area(b) - inter
    iou = inter / union.clamp(min=1e-9)
    hull = (torch.maximum(a[..., 2:], b[..., 2:]) - torch.minimum(a[..., :2], b[..., :2])).clamp(min=0).prod(-1)
    return iou - (hull - union) / hull.clamp(min=1e-9)


def scale_boxes(boxes: torch.Tensor, width: float, height: float) -> torch.Tensor:
    """Normalised (0..1) xyxy boxes → pixel boxes of a ``width`` x ``height`` image."""
    return boxes * boxes.new_tensor([width, height, width, height])


def xywh_to_xyxy(boxes: torch.Tensor) -> torch.Tensor:
    """COCO ``(x, y, w, h)`` boxes → ``(x0, y0, x1, y1)``."""
    return torch.cat([boxes[..., :2], boxes[..., :2] + boxes[..., 2:]], dim=-1)


def xyxy_to_xywh(boxes: torch.Tensor) -> torch.Tensor:
    """``(x0, y0, x1, y1)`` boxes → COCO ``(x, y, w, h)``."""
    return torch.cat([boxes[..., :2], boxes[..., 2:] - boxes[..., :2]], dim=-1)


def yolo_to_xyxy(boxes: torch.Tensor) -> torch.Tensor:
    """YOLO ``(cx, cy, w, h)`` boxes → ``(x0, y0, x1, y1)`` (``center_to_corners_format``)."""
    from transformers.image_transforms import center_to_corners_format

    return center_to_corners_format(boxes)
