"""Detection metrics through pycocotools' COCOeval, on ground truth and detections held in memory."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from loradex.core.task import EvalResult, MetricAccumulator

from .boxes import scale_boxes
from .decode import detections


def coco_evaluate(
    labels: Sequence[str],
    ground_truth: Sequence[tuple[np.ndarray, np.ndarray, tuple[float, float]]],
    predictions: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]],
) -> EvalResult:
    """COCO metrics of per-image pixel boxes.

    ``ground_truth[i]`` is ``(boxes (N, 4) xyxy, labels (N,), (width, height))`` and
    ``predictions[i]`` is ``(boxes (K, 4) xyxy, scores (K,), labels (K,))`` for the same image.
    Reports ``map`` (IoU .50:.95), ``map50``, ``map75``, ``mar100`` and ``ap50_<class>`` /
    ``ap_<class>`` for classes with ground truth; ``details`` holds the PR curves at IoU .5
    and .75 per class for plots.
    """
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    images, annotations, detections_ = [], [], []
    for image_id, ((boxes, gt_labels, (width, height)), (dt_boxes, scores, dt_labels)) in enumerate(
        zip(ground_truth, predictions), start=1
    ):
        images.append({"id": image_id, "width": float(width), "height": float(height)})
        for box, label in zip(np.asarray(boxes, dtype=float).reshape(-1, 4), gt_labels):
            w, h = box[2] - box[0], box[3] - box[1]
            annotations.append({"id": len(annotations) + 1, "image_id": image_id, "category_id": int(label) + 1,
                                "bbox": [float(box[0]), float(box[1]), float(w), float(h)], "area": float(w * h),
                                "iscrowd": 0})
        for box, score, label in zip(np.asarray(dt_boxes, dtype=float).reshape(-1, 4), scores, dt_labels):
            detections_.append({"image_id": image_id, "category_id": int(label) + 1, "score": float(score),
                                "bbox": [float(box[0]), float(box[1]), float(box[2] - box[0]), float(box[3] - box[1])]})
    categories = [{"id": i + 1, "name": name} for i, name in enumerate(labels)]
    empty = {"labels": list(labels), "recall": np.linspace(0, 1, 101).tolist(), "pr50": {}, "pr75": {}, "ap50": {}, "ap": {}}
    if not annotations:
        return EvalResult(metrics={}, details=empty)
    if not detections_:
        metrics = {"map": 0.0, "map50": 0.0, "map75": 0.0, "mar100": 0.0}
        present = sorted({a["category_id"] - 1 for a in annotations})
        for k in present:
            metrics[f"ap50_{labels[k]}"] = 0.0
            metrics[f"ap_{labels[k]}"] = 0.0
        return EvalResult(metrics=metrics, details=empty)
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO()
        gt.dataset = {"images": images, "annotations": annotations, "categories": categories}
        gt.createIndex()
        dt = gt.loadRes(detections_)
        evaluator = COCOeval(gt, dt, iouType="bbox")
        evaluator.evaluate()
        evaluator.accumulate()
        evaluator.summarize()
    stats = evaluator.stats
    metrics = {"map": float(stats[0]), "map50": float(stats[1]), "map75": float(stats[2]), "mar100": float(stats[8])}
    precision = evaluator.eval["precision"]  # (iou thresholds, recall points, classes, areas, max dets)
    details = dict(empty)
    for k, name in enumerate(labels):
        curve50, curve75 = precision[0, :, k, 0, -1], precision[5, :, k, 0, -1]
        if (curve50 < 0).all():  # no ground truth of this class
            continue
        every = precision[:, :, k, 0, -1]
        ap50 = float(curve50[curve50 > -1].mean())
        ap = float(every[every > -1].mean())
        metrics[f"ap50_{name}"], metrics[f"ap_{name}"] = ap50, ap
        details["ap50"][name], details["ap"][name] = ap50, ap
        details["pr50"][name] = np.clip(curve50, 0, None).tolist()
        details["pr75"][name] = np.clip(curve75, 0, None).tolist()
    return EvalResult(metrics=metrics, details=details)


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


