"""Metrics every task can use: labels through scikit-learn, boxes through pycocotools.

Boxes: :func:`coco_evaluate` scores any task that predicts boxes (detection, detection-as-text)
with COCO's own mAP, so their figures compare.

Labels:

A plugin whose task predicts one class per image (or per anything) gets accuracy, macro
precision/recall/F1, top-k accuracy, per-class F1 and the confusion matrix by feeding
:class:`ClassificationMetrics` logits (or scores) and integer targets; :mod:`loradex.core.plots`
draws them.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence

import numpy as np
import torch

from .task import EvalResult, MetricAccumulator


def top_k_values(num_labels: int) -> tuple[int, ...]:
    """The k of the top-k accuracies reported for ``num_labels`` classes."""
    return tuple(k for k in (3, 5) if k < num_labels)


class ClassificationMetrics(MetricAccumulator):
    """Accuracy, macro precision/recall/F1, top-k, per-class F1 and the confusion matrix."""

    def __init__(self, labels: Sequence[str]) -> None:
        self.labels = list(labels)
        self._scores: list[np.ndarray] = []
        self._targets: list[np.ndarray] = []

    def update(self, outputs: torch.Tensor, targets: torch.Tensor) -> None:
        """Add logits (B, C) and integer targets (B,)."""
        self._scores.append(outputs.detach().float().softmax(-1).cpu().numpy())
        self._targets.append(targets.detach().cpu().numpy())

    def compute(self) -> EvalResult:
        """Metrics over all batches added."""
        from sklearn.metrics import (
            accuracy_score,
            confusion_matrix,
            precision_recall_fscore_support,
            top_k_accuracy_score,
        )

        n = len(self.labels)
        if not self._scores:
            return EvalResult(metrics={})
        scores = np.concatenate(self._scores)
        targets = np.concatenate(self._targets)
        preds = scores.argmax(axis=1)
        label_ids = list(range(n))
        precision, recall, f1, _ = precision_recall_fscore_support(
            targets, preds, labels=label_ids, average="macro", zero_division=0
        )
        _, _, per_class_f1, support = precision_recall_fscore_support(
            targets, preds, labels=label_ids, average=None, zero_division=0
        )
        metrics = {
            "accuracy": float(accuracy_score(targets, preds)),
            "precision_macro": float(precision),
            "recall_macro": float(recall),
            "f1_macro": float(f1),
        }
        for k in top_k_values(n):
            metrics[f"top{k}_accuracy"] = float(top_k_accuracy_score(targets, scores, k=k, labels=label_ids))
        return EvalResult(
            metrics=metrics,
            details={
                "labels": self.labels,
                "confusion_matrix": confusion_matrix(targets, preds, labels=label_ids).tolist(),
                "per_class_f1": {label: float(v) for label, v in zip(self.labels, per_class_f1)},
                "support": {label: int(v) for label, v in zip(self.labels, support)},
            },
        )


def _coco_records(ground_truth: Sequence[tuple[np.ndarray, np.ndarray, tuple[float, float]]],
                  predictions: Sequence[tuple[np.ndarray, np.ndarray, np.ndarray]]
                  ) -> tuple[list[dict], list[dict], list[dict]]:
    """(images, annotations, detections) in COCO's JSON form; category ids are label index + 1."""
    images, annotations, detections = [], [], []
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
            detections.append({"image_id": image_id, "category_id": int(label) + 1, "score": float(score),
                               "bbox": [float(box[0]), float(box[1]), float(box[2] - box[0]), float(box[3] - box[1])]})
    return images, annotations, detections


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

    images, annotations, detections_ = _coco_records(ground_truth, predictions)
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
