"""Detection metrics: the head's peaks decoded to boxes, scored by the core's pycocotools COCOeval."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from loradex.core.metrics import coco_evaluate
from loradex.core.task import EvalResult, MetricAccumulator

from .boxes import scale_boxes
from .decode import detections


class DetectionMetrics(MetricAccumulator):
    """Collects decoded detections and targets batch by batch; COCO metrics at the end."""

    def __init__(self, labels: Sequence[str], *, max_detections: int = 100) -> None:
        self.labels = list(labels)
        self.max_detections = max_detections
        self._truth: list[tuple[np.ndarray, np.ndarray, tuple[float, float]]] = []
        self._predicted: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []

    def update(self, outputs: Mapping[str, torch.Tensor], targets: Sequence[Mapping[str, Any]]) -> None:
        """Add head outputs of a batch and its targets (boxes are scaled to original pixels)."""
        for (boxes, scores, labels), target in zip(detections(outputs, max_detections=self.max_detections), targets):
            width, height = (float(v) for v in target["size"].cpu())
            self._truth.append((scale_boxes(target["boxes"].cpu().float(), width, height).numpy(),
                                target["labels"].cpu().numpy(), (width, height)))
            self._predicted.append((scale_boxes(boxes, width, height).numpy(), scores.numpy(), labels.numpy()))

    def compute(self) -> EvalResult:
        """COCO metrics over every image added."""
        return coco_evaluate(self.labels, self._truth, self._predicted)


