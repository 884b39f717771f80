"""Metrics every labelling task can use, through scikit-learn (the classification task is one user).

A plugin whose task predicts one class per image (or per anything) gets accuracy, macro
precision/recall/F1, top-k accuracy, per-class F1 and the confusion matrix by feeding
:class:`ClassificationMetrics` logits (or scores) and integer targets; :mod:`loradex.core.plots`
draws them.
"""

from __future__ import annotations

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
