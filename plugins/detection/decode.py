"""Turning head outputs into scored boxes: heat map peaks, no NMS needed."""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F

from .loss import decode_boxes


def detections(outputs: Mapping[str, torch.Tensor], *, max_detections: int = 100, min_score: float = 0.0
               ) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Per image ``(boxes (K, 4) normalised xyxy, scores (K,), labels (K,))``, best first.

    A detection is a cell whose class probability is the maximum of its 3x3 neighbourhood
    (CenterNet's peak picking, which replaces NMS); the ``max_detections`` best above
    ``min_score`` are kept.
    """
    heat = outputs["heatmap"].detach().float().sigmoid()
    batch, num_labels, height, width = heat.shape
    peaks = heat * (F.max_pool2d(heat, 3, stride=1, padding=1) == heat)
    boxes = decode_boxes(outputs["boxes"].detach()).reshape(batch, height * width, 4).clamp(0, 1)
    k = min(max_detections, num_labels * height * width)
    scores, index = peaks.reshape(batch, -1).topk(k, dim=1)
    labels = index // (height * width)
    cells = index % (height * width)
    results = []
    for b in range(batch):
        keep = scores[b] > min_score
        results.append((boxes[b, cells[b][keep]].cpu(), scores[b][keep].cpu(), labels[b][keep].cpu()))
    return results
