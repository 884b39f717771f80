"""Turning head outputs into scored boxes: heat map peaks (the dense head, no NMS needed), or the
per-level head's cells scored by class x centre-ness and thinned by class-wise NMS."""

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
    if "heatmap" not in outputs:
        return level_detections(outputs, max_detections=max_detections, min_score=min_score)
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


CANDIDATES = 1000
"""Best cells kept per image before NMS (FCOS's pre_nms_top_n)."""
NMS_IOU = 0.6
"""Class-wise NMS threshold (FCOS's)."""
MIN_CANDIDATE_SCORE = 0.01
"""Cells scoring below this never reach NMS, whatever ``min_score`` asks."""


def level_detections(outputs: Mapping[str, torch.Tensor], *, max_detections: int = 100, min_score: float = 0.0
                     ) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """Per image ``(boxes, scores, labels)`` of the per-level head: score sqrt(class x centre-ness),
    the best :data:`CANDIDATES` cells, class-wise NMS at :data:`NMS_IOU`, then the ``max_detections`` best."""
    from torchvision.ops import batched_nms

    scores = (outputs["logits"].detach().float().sigmoid()
              * outputs["centerness"].detach().float().sigmoid()[..., None]).sqrt()  # (B, N, C)
    boxes = outputs["boxes"].detach().float().clamp(0, 1)
    num_labels = scores.shape[-1]
    results = []
    for b in range(scores.shape[0]):
        flat = scores[b].flatten()
        best, index = flat.topk(min(CANDIDATES, flat.numel()))
        keep = best > max(min_score, MIN_CANDIDATE_SCORE)
        best, index = best[keep], index[keep]
        cell, label = index // num_labels, index % num_labels
        picked = batched_nms(boxes[b, cell], best, label, NMS_IOU)[:max_detections]
        results.append((boxes[b, cell[picked]].cpu(), best[picked].cpu(), label[picked].cpu()))
    return results
