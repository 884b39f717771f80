"""Classification head: pooled encoder tokens → class logits."""

from __future__ import annotations

import torch
from torch import nn

from loradex.core.backbone import EncoderOutput

POOLINGS = ("cls", "mean", "cls+mean", "conv")


class ClassificationHead(nn.Module):
    """LayerNorm and a linear layer on the CLS token, the mean patch token, or both."""

    def __init__(self, hidden_size: int, num_labels: int, *, pooling: str = "cls+mean", dropout: float = 0.0) -> None:
        super().__init__()
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {POOLINGS}, got {pooling!r}")
        self.pooling = pooling
        width = hidden_size * (2 if pooling == "cls+mean" else 1)
        if pooling == "conv":
            self.conv = nn.Sequential(
                nn.Conv2d(hidden_size, 32, 1), nn.GELU(),
                nn.Conv2d(32, 32, 3, padding=1), nn.GELU(),
                nn.Conv2d(32, 32, 3, padding=1), nn.GELU(),
            )
            width = 64
        self.norm = nn.LayerNorm(width)
        self.dropout = nn.Dropout(dropout)
        self.classifier = nn.Linear(width, num_labels)

    def forward(self, features: EncoderOutput) -> torch.Tensor:
        """Logits of shape (B, num_labels)."""
        if self.pooling == "conv":
            grid = self.conv(features.patches.permute(0, 3, 1, 2))
            pooled = torch.cat([grid.mean(dim=(2, 3)), grid.amax(dim=(2, 3))], dim=-1)
            return self.classifier(self.dropout(self.norm(pooled)))
        mean = features.patches.flatten(1, 2).mean(dim=1)
        if self.pooling == "cls":
            pooled = features.cls
        elif self.pooling == "mean":
            pooled = mean
        else:
            pooled = torch.cat([features.cls, mean], dim=-1)
        return self.classifier(self.dropout(self.norm(pooled)))
