"""Pose loss: L1 on soft-argmax coordinates plus heatmap cross-entropy to a Gaussian."""

from __future__ import annotations

import torch

COORD_WEIGHT = 10.0
"""Scale of the L1 coordinate term (coordinates are in 0..1 of the image)."""


def gaussian_targets(points: torch.Tensor, height: int, width: int, sigma: float) -> torch.Tensor:
    """(B, K, 2) points in 0..1 → (B, K, H, W) Gaussians of ``sigma`` cells, each summing to 1."""
    xs = (torch.arange(width, device=points.device, dtype=points.dtype) + 0.5) / width
    ys = (torch.arange(height, device=points.device, dtype=points.dtype) + 0.5) / height
    dx = (xs.view(1, 1, 1, width) - points[..., 0, None, None]) * width
    dy = (ys.view(1, 1, height, 1) - points[..., 1, None, None]) * height
    g = torch.exp(-(dx**2 + dy**2) / (2 * sigma**2))
    return g / g.flatten(2).sum(-1).clamp_min(1e-12)[..., None, None]


def keypoint_loss(outputs: dict[str, torch.Tensor], targets: dict[str, torch.Tensor], *,
                  heatmap_weight: float = 1.0, sigma: float = 1.0) -> torch.Tensor:
    """L1 on soft-argmax coordinates plus cross-entropy of the heatmap softmax against a Gaussian.

    Only labelled keypoints (``targets["visible"] > 0``) count.
    """
    coords = outputs["coords"].float()
    points = targets["keypoints"].to(coords)
    weight = (targets["visible"] > 0).to(coords)
    denom = weight.sum().clamp_min(1.0)
    loss = COORD_WEIGHT * ((coords - points).abs().sum(-1) * weight).sum() / denom
    if heatmap_weight:
        heatmaps = outputs["heatmaps"].float()
        b, k, h, w = heatmaps.shape
        target = gaussian_targets(points, h, w, sigma)
        log_probs = heatmaps.flatten(2).log_softmax(-1).view(b, k, h, w)
        ce = -(target * log_probs).sum((2, 3))
        loss = loss + heatmap_weight * (ce * weight).sum() / denom
    return loss
