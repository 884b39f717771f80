"""Classification loss: cross-entropy on the logits."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def classification_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of (B, C) logits against (B,) class indices, computed in float32."""
    return F.cross_entropy(logits.float(), targets)
